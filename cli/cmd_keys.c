/* SPDX-License-Identifier: MIT */
/* p11jwt keys, p11jwt jwks: what the agent offers. */
#include "cli/cli.h"
#include "cli/exchange.h"
#include "cli/preset.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jwk.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
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
	/* CERT stays the last column; a retiring key's date follows it */
	printf("%-16s %-6s %-43s %-3s %-9s %-8s %s\n", "NAME", "ALG", "KID", "KTY", "SIZE/CRV",
	       "STATE", "CERT");
	json_array_foreach(keys, i, k) {
		const json_t *bits = json_object_get(k, "bits");
		char size[32];

		if (json_is_integer(bits))
			snprintf(size, sizeof(size), "%lld", (long long)json_integer_value(bits));
		else
			snprintf(size, sizeof(size), "%s", str(k, "crv"));
		printf("%-16s %-6s %-43s %-3s %-9s %-8s %s%s%s\n", str(k, "name"), str(k, "alg"),
		       str(k, "kid"), str(k, "kty"), size,
		       /* an older agent says nothing: its keys are all active */
		       json_object_get(k, "state") ? str(k, "state") : "active",
		       json_is_true(json_object_get(k, "has_cert")) ? "yes" : "no",
		       json_object_get(k, "retire_after") ? "  until " : "",
		       json_object_get(k, "retire_after") ? str(k, "retire_after") : "");
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

/* --key @active / @next: the key in that state, from the agent's list.
 * Returns 0 or an exit status. */
static int role_key(cli_ctx *ctx, const char *role, char **ret)
{
	json_t *resp = NULL;
	int r;

	if ((r = cli_call(ctx, json_pack("{s:s}", "op", "keys"), &resp)) != 0)
		return r;
	r = xch_key_role(json_object_get(resp, "keys"), role, ret);
	json_decref(resp);
	if (r < 0)
		return cli_fail(r);
	fprintf(stderr, "p11jwt: note: %s is key '%s'\n", role, *ret);
	return 0;
}

/* --out FILE: written next to FILE and renamed over it (0644: a web server
 * publishes it as a jwks_uri), so a reader never sees half a JWKS. */
static int write_atomic(const char *path, const char *data, size_t len)
{
	char *dir = NULL, *tmp = NULL, *slash;
	int fd = -1, dfd = -1, r = 0;
	size_t off = 0;

	if ((dir = strdup(path)) == NULL)
		return err_nomem();
	slash = strrchr(dir, '/');
	if (slash == NULL)
		strcpy(dir, ".");
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	if (asprintf(&tmp, "%s.tmpXXXXXX", path) < 0) {
		tmp = NULL;
		r = err_nomem();
		goto out;
	}
	if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
		r = err_set(P11J_E_BAD_REQUEST, "cannot write next to '%s': %s", path,
			    strerror(errno));
		free(tmp);
		tmp = NULL;
		goto out;
	}
	if (fchmod(fd, 0644) < 0) {
		r = err_set(P11J_E_SYSTEM, "chmod '%s': %s", tmp, strerror(errno));
		goto out;
	}
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = err_set(P11J_E_SYSTEM, "writing '%s': %s", tmp, strerror(errno));
			goto out;
		}
		off += (size_t)n;
	}
	if (fsync(fd) < 0 || close(fd) < 0) {
		fd = -1;
		r = err_set(P11J_E_SYSTEM, "writing '%s': %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		r = err_set(P11J_E_BAD_REQUEST, "cannot replace '%s': %s", path, strerror(errno));
		goto out;
	}
	free(tmp);
	tmp = NULL;
	/* the rename itself survives a crash once the directory is synced */
	if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		(void)fsync(dfd);
		close(dfd);
	}
out:
	if (fd >= 0)
		close(fd);
	if (tmp != NULL) {
		unlink(tmp);
		free(tmp);
	}
	free(dir);
	return r;
}

#define JWKS_KEYS_MAX 16

/* --key given more than once: one jwks request per key, their keys in one
 * set (a rotation publishes the old key and the new one). */
static int jwks_many(cli_ctx *ctx, const char *const *keyv, size_t n, const char *alg,
		     json_t **ret_resp)
{
	json_t *all = json_array(), *resp = NULL;
	int r;

	if (all == NULL)
		return cli_fail(err_nomem());
	for (size_t i = 0; i < n; i++) {
		json_t *req = json_pack("{s:s,s:s}", "op", "jwks", "key", keyv[i]);

		if (req != NULL && alg && json_object_set_new(req, "alg", json_string(alg)) < 0) {
			json_decref(req);
			req = NULL;
		}
		if (req == NULL) {
			json_decref(all);
			return cli_fail(err_set(P11J_E_BAD_REQUEST, "--key or --alg is not valid UTF-8"));
		}
		if ((r = cli_call(ctx, req, &resp)) != 0) {
			json_decref(all);
			return r;
		}
		json_array_extend(all, json_object_get(resp, "keys"));
		json_decref(resp);
	}
	*ret_resp = json_pack("{s:o}", "keys", all);
	return *ret_resp ? 0 : cli_fail(err_nomem());
}

/* owned: an array holding the names roles resolved to (the caller frees
 * it on every path) */
static int jwks_run(cli_ctx *ctx, int argc, char **argv, json_t *owned)
{
	json_t *req = NULL, *resp = NULL, *jwks = NULL, *keys, *jwk;
	const char *name = NULL, *key = NULL, *alg = NULL, *kid = "thumbprint", *pname = NULL;
	const char *out = NULL, *keyv[JWKS_KEYS_MAX];
	size_t nkey = 0;
	char *palg = NULL;
	bool pem = false;
	size_t i;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "jwks", argc, argv, &name, &st)) == CLI_OPT_NEXT) {
		if (strcmp(name, "key") == 0) {
			if (nkey == JWKS_KEYS_MAX)
				return cli_usage_error("jwks", "--key is given more than %d times",
						       JWKS_KEYS_MAX);
			keyv[nkey++] = key = optarg;
		} else if (strcmp(name, "alg") == 0)
			alg = optarg;
		else if (strcmp(name, "pem") == 0)
			pem = true;
		else if (strcmp(name, "kid") == 0)
			kid = optarg;
		else if (strcmp(name, "preset") == 0)
			pname = optarg;
		else if (strcmp(name, "out") == 0)
			out = optarg;
	}
	if (r == CLI_OPT_EXIT)
		return st;
	if (out != NULL && out[0] == '\0')
		return cli_usage_error("jwks", "--out needs a file name");
	if (strcmp(kid, "thumbprint") != 0 && strcmp(kid, "id") != 0 && strcmp(kid, "label") != 0)
		return cli_usage_error("jwks", "--kid takes thumbprint, id or label, not '%s'", kid);
	if (optind != argc)
		return cli_usage_error("jwks", "unexpected argument '%s'", argv[optind]);
	for (size_t k = 0; k < nkey; k++) {
		char *rk = NULL;

		if (!xch_is_role(keyv[k]))
			continue;
		if ((st = role_key(ctx, keyv[k], &rk)) != 0)
			return st;
		json_array_append_new(owned, json_string(rk));
		free(rk);
		keyv[k] = json_string_value(json_array_get(owned, json_array_size(owned) - 1));
		if (keyv[k] == NULL)
			return cli_fail(err_nomem());
	}
	key = nkey > 0 ? keyv[nkey - 1] : NULL;
	if (nkey > 1 && pname)
		return cli_usage_error("jwks", "--preset takes one --key (the alg depends on the "
					       "key); give --alg for several");
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
	if (nkey > 1) {
		if ((r = jwks_many(ctx, keyv, nkey, alg, &resp)) != 0)
			return r;
		goto got;
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
got:
	keys = json_object_get(resp, "keys");
	if (!json_is_array(keys)) {
		r = cli_fail(err_set(P11J_E_PROTOCOL, "the agent's answer has no key list"));
		goto out;
	}
	if (pem) {
		char *buf = NULL;
		size_t blen = 0;
		FILE *f = out ? open_memstream(&buf, &blen) : stdout;

		if (f == NULL) {
			r = cli_fail(err_nomem());
			goto out;
		}
		r = 0;
		json_array_foreach(keys, i, jwk) {
			EVP_PKEY *pk = NULL;

			if ((r = jwk_to_pkey(jwk, &pk)) < 0) {
				r = cli_fail(r);
				break;
			}
			r = PEM_write_PUBKEY(f, pk) == 1 ? 0 : cli_fail(err_set_ossl(
								    P11J_E_CRYPTO, "PEM_write_PUBKEY"));
			EVP_PKEY_free(pk);
			if (r != 0)
				break;
		}
		if (out != NULL) {
			fclose(f);
			if (r == 0 && (r = write_atomic(out, buf, blen)) < 0)
				r = cli_fail(r);
			free(buf);
		}
		goto out;
	}
	if (strcmp(kid, "thumbprint") != 0 && (r = kid_rewrite(ctx, kid, keys)) != 0)
		goto out;
	jwks = json_pack("{s:O}", "keys", keys);
	if (jwks == NULL) {
		r = cli_fail(err_nomem());
	} else if (out == NULL) {
		r = cli_print_json(jwks);
	} else {
		char *text = json_dumps(jwks, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		char *line = NULL;

		if (text == NULL || asprintf(&line, "%s\n", text) < 0) {
			line = NULL;
			r = cli_fail(err_nomem());
		} else if ((r = write_atomic(out, line, strlen(line))) < 0) {
			r = cli_fail(r);
		} else {
			fprintf(stderr, "p11jwt: wrote %zu key%s to %s\n", json_array_size(keys),
				json_array_size(keys) == 1 ? "" : "s", out);
		}
		free(text);
		free(line);
	}
out:
	json_decref(jwks);
	json_decref(resp);
	return r;
}

int cmd_jwks(cli_ctx *ctx, int argc, char **argv)
{
	json_t *owned = json_array();
	int st = owned ? jwks_run(ctx, argc, argv, owned) : cli_fail(err_nomem());

	json_decref(owned);
	return st;
}
