/* SPDX-License-Identifier: MIT */
/* p11jwt keys, p11jwt jwks: what the agent offers. */
#include "cli/cli.h"
#include "cli/exchange.h"
#include "cli/preset.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jwk.h"

#include <stdlib.h>
#include <string.h>
#include <openssl/pem.h>

static const char *str(const json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s ? s : "-";
}

int cmd_keys(cli_ctx *ctx, int argc, char **argv)
{
	json_t *resp = NULL, *keys, *k;
	const char *name = NULL;
	bool as_json = false;
	size_t i;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "keys", argc, argv, &name, &st)) == CLI_OPT_NEXT)
		if (strcmp(name, "json") == 0)
			as_json = true;
	if (r == CLI_OPT_EXIT)
		return st;
	if (optind != argc)
		return cli_usage_error("keys", "unexpected argument '%s'", argv[optind]);
	if ((r = cli_call(ctx, json_pack("{s:s}", "op", "keys"), &resp)) != 0)
		return r;
	keys = json_object_get(resp, "keys");
	if (!json_is_array(keys)) {
		r = cli_fail(err_set(P11J_E_PROTOCOL, "the agent's answer has no key list"));
		goto out;
	}
	if (as_json) {
		r = cli_print_json(keys);
		goto out;
	}
	printf("%-16s %-6s %-43s %-3s %-9s %s\n", "NAME", "ALG", "KID", "KTY", "SIZE/CRV",
	       "CERT");
	json_array_foreach(keys, i, k) {
		const json_t *bits = json_object_get(k, "bits");
		char size[32];

		if (json_is_integer(bits))
			snprintf(size, sizeof(size), "%lld", (long long)json_integer_value(bits));
		else
			snprintf(size, sizeof(size), "%s", str(k, "crv"));
		printf("%-16s %-6s %-43s %-3s %-9s %s\n", str(k, "name"), str(k, "alg"),
		       str(k, "kid"), str(k, "kty"), size,
		       json_is_true(json_object_get(k, "has_cert")) ? "yes" : "no");
	}
	r = 0;
out:
	json_decref(resp);
	return r;
}

/* --kid id|label: replace each JWK's kid (the thumbprint) with the key's
 * CKA_ID in hex or its label, from the agent's key list. */
static int kid_rewrite(cli_ctx *ctx, const char *mode, json_t *keys)
{
	const char *member = strcmp(mode, "id") == 0 ? "id_hex" : "name";
	json_t *resp = NULL, *list, *jwk, *k;
	size_t i, j;
	int r;

	if ((r = cli_call(ctx, json_pack("{s:s}", "op", "keys"), &resp)) != 0)
		return r;
	list = json_object_get(resp, "keys");
	if (!json_is_array(list)) {
		r = cli_fail(err_set(P11J_E_PROTOCOL, "the agent's answer has no key list"));
		goto out;
	}
	json_array_foreach(keys, i, jwk) {
		const char *kid = json_string_value(json_object_get(jwk, "kid")), *v = NULL;

		json_array_foreach(list, j, k) {
			if (kid != NULL && strcmp(str(k, "kid"), kid) == 0) {
				v = json_string_value(json_object_get(k, member));
				break;
			}
		}
		if (v == NULL || v[0] == '\0') {
			r = cli_fail(err_set(P11J_E_NOT_FOUND,
					     "the agent gives no %s for the key with kid '%s'%s",
					     strcmp(mode, "id") == 0 ? "CKA_ID" : "label",
					     kid ? kid : "-",
					     strcmp(mode, "id") == 0 ? " (an older agent, or no CKA_ID)"
								     : ""));
			goto out;
		}
		if (json_object_set_new(jwk, "kid", json_string(v)) < 0) {
			r = cli_fail(err_nomem());
			goto out;
		}
	}
	r = 0;
out:
	json_decref(resp);
	return r;
}

/* --preset NAME: the alg that `p11jwt token --preset NAME --key KEY` signs
 * with (the first of the preset's algs the key signs), so that the JWKS
 * registered at the provider matches the assertions. *ret_alg is NULL when
 * the preset takes any alg (the key's default, which jwks gives anyway).
 * Returns 0 or an exit status. */
static int preset_alg(cli_ctx *ctx, const preset *p, const char *key, char **ret_alg)
{
	json_t *resp = NULL;
	char who[96], owner[96], *reason = NULL;
	int r;

	*ret_alg = NULL;
	if (p->algs == NULL)
		return 0;
	if ((r = cli_call(ctx, json_pack("{s:s}", "op", "keys"), &resp)) != 0)
		return r;
	snprintf(who, sizeof(who), "preset '%s'", p->name);
	snprintf(owner, sizeof(owner), "%s's", p->name);
	r = xch_pick_alg(p->algs, who, owner, key, json_object_get(resp, "keys"), ret_alg,
			 &reason);
	json_decref(resp);
	if (r < 0) {
		cli_fail(r);
		return CLI_EXIT_USAGE;
	}
	if (reason)
		fprintf(stderr, "p11jwt: note: %s\n", reason);
	free(reason);
	return 0;
}

int cmd_jwks(cli_ctx *ctx, int argc, char **argv)
{
	json_t *req = NULL, *resp = NULL, *jwks = NULL, *keys, *jwk;
	const char *name = NULL, *key = NULL, *alg = NULL, *kid = "thumbprint", *pname = NULL;
	char *palg = NULL;
	bool pem = false;
	size_t i;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "jwks", argc, argv, &name, &st)) == CLI_OPT_NEXT) {
		if (strcmp(name, "key") == 0)
			key = optarg;
		else if (strcmp(name, "alg") == 0)
			alg = optarg;
		else if (strcmp(name, "pem") == 0)
			pem = true;
		else if (strcmp(name, "kid") == 0)
			kid = optarg;
		else if (strcmp(name, "preset") == 0)
			pname = optarg;
	}
	if (r == CLI_OPT_EXIT)
		return st;
	if (strcmp(kid, "thumbprint") != 0 && strcmp(kid, "id") != 0 && strcmp(kid, "label") != 0)
		return cli_usage_error("jwks", "--kid takes thumbprint, id or label, not '%s'", kid);
	if (optind != argc)
		return cli_usage_error("jwks", "unexpected argument '%s'", argv[optind]);
	if (pname) {
		const preset *p = preset_find(pname);

		if (p == NULL) {
			size_t n = 0, o = 0;
			const preset *all = preset_all(&n);
			char names[256] = "";

			for (size_t j = 0; j < n && o < sizeof(names); j++)
				o += (size_t)snprintf(names + o, sizeof(names) - o, "%s%s",
						      j ? ", " : "", all[j].name);
			return cli_usage_error("jwks", "unknown preset '%s' (%s)", pname, names);
		}
		if (key == NULL)
			return cli_usage_error("jwks", "--preset needs --key NAME: the alg depends "
						       "on the key");
		if (alg && p->algs && !util_word_in(p->algs, alg))
			fprintf(stderr,
				"p11jwt: warning: preset %s: the provider takes %s; %s will likely "
				"be rejected\n",
				p->name, p->algs, alg);
		if (alg == NULL && (st = preset_alg(ctx, p, key, &palg)) != 0)
			return st;
		if (palg)
			alg = palg;
	}
	req = json_pack("{s:s}", "op", "jwks");
	if (req == NULL) {
		free(palg);
		return cli_fail(err_nomem());
	}
	if ((key && json_object_set_new(req, "key", json_string(key)) < 0) ||
	    (alg && json_object_set_new(req, "alg", json_string(alg)) < 0)) {
		json_decref(req);
		free(palg);
		return cli_fail(err_set(P11J_E_BAD_REQUEST, "--key or --alg is not valid UTF-8"));
	}
	free(palg);
	alg = palg = NULL;
	if ((r = cli_call(ctx, req, &resp)) != 0)
		return r;
	keys = json_object_get(resp, "keys");
	if (!json_is_array(keys)) {
		r = cli_fail(err_set(P11J_E_PROTOCOL, "the agent's answer has no key list"));
		goto out;
	}
	if (pem) {
		json_array_foreach(keys, i, jwk) {
			EVP_PKEY *pk = NULL;

			if ((r = jwk_to_pkey(jwk, &pk)) < 0) {
				r = cli_fail(r);
				goto out;
			}
			r = PEM_write_PUBKEY(stdout, pk) == 1 ? 0 : cli_fail(err_set_ossl(
									 P11J_E_CRYPTO, "PEM_write_PUBKEY"));
			EVP_PKEY_free(pk);
			if (r != 0)
				goto out;
		}
		r = 0;
		goto out;
	}
	if (strcmp(kid, "thumbprint") != 0 && (r = kid_rewrite(ctx, kid, keys)) != 0)
		goto out;
	jwks = json_pack("{s:O}", "keys", keys);
	r = jwks ? cli_print_json(jwks) : cli_fail(err_nomem());
out:
	json_decref(jwks);
	json_decref(resp);
	return r;
}
