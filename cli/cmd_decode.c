/* SPDX-License-Identifier: MIT */
/* p11jwt decode (no verification) and p11jwt verify. */
#include "cli/cli.h"
#include "cli/kv.h"
#include "cli/timefmt.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jws.h"

#include <stdlib.h>
#include <string.h>

/* Options parsed, exactly one operand: the JWT (or "-"). */
static int one_jwt(const char *cmd, int argc, char **argv, char **ret_jwt)
{
	int r;

	if (optind == argc)
		return cli_usage_error(cmd, "give a JWT, or - to read it from standard input");
	if (optind + 1 != argc)
		return cli_usage_error(cmd, "give one JWT, not %d arguments", argc - optind);
	if ((r = cli_read_jwt(argv[optind], ret_jwt)) < 0)
		return cli_fail(r);
	return 0;
}

int cmd_decode(cli_ctx *ctx, int argc, char **argv)
{
	static const char *const times[] = { "iat", "nbf", "exp" };
	const char *name = NULL;
	jws_parsed p = { 0 };
	char *jwt = NULL;
	bool any = false;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "decode", argc, argv, &name, &st)) == CLI_OPT_NEXT)
		;
	if (r == CLI_OPT_EXIT)
		return st;
	if ((r = one_jwt("decode", argc, argv, &jwt)) != 0)
		return r;
	if ((r = jws_parse(jwt, &p)) < 0) {
		r = cli_fail(r);
		goto out;
	}
	fputs("header:\n", stdout);
	if ((r = cli_print_json(p.header)) != 0)
		goto out;
	fputs("claims:\n", stdout);
	if ((r = cli_print_json(p.claims)) != 0)
		goto out;
	for (size_t i = 0; i < ARRAY_SIZE(times); i++) {
		const json_t *v = json_object_get(p.claims, times[i]);
		char line[160];

		if (v == NULL)
			continue;
		if (!any)
			fputs("times:\n", stdout);
		any = true;
		if (json_is_integer(v)) {
			tfmt_line(times[i], (int64_t)json_integer_value(v), util_now(), line,
				  sizeof(line));
			printf("  %s\n", line);
		} else {
			printf("  %-4s is not a NumericDate (whole seconds since 1970)\n",
			       times[i]);
		}
	}
	r = 0;
out:
	jws_parsed_clear(&p);
	free(jwt);
	return r;
}

/* " (exp 2023-11-14 22:13:20 UTC, 5m ago)": the clock is what usually went
 * wrong, so show the time itself. */
static void print_when(const char *jwt, const char *claim, long long leeway)
{
	jws_parsed p = { 0 };
	const json_t *v;
	char utc[32], rel[64];

	if (jws_parse(jwt, &p) < 0)
		return;
	v = json_object_get(p.claims, claim);
	if (json_is_integer(v)) {
		tfmt_utc((int64_t)json_integer_value(v), utc, sizeof(utc));
		tfmt_relative((int64_t)json_integer_value(v), util_now(), rel, sizeof(rel));
		fprintf(stderr, " (%s %s, %s; leeway %llds)", claim, utc, rel, leeway);
	}
	jws_parsed_clear(&p);
}

int cmd_verify(cli_ctx *ctx, int argc, char **argv)
{
	const char *name = NULL, *jwks_file = NULL, *kid;
	long long leeway = 0;
	json_t *jwks = NULL;
	jws_parsed p = { 0 };
	char *jwt = NULL;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "verify", argc, argv, &name, &st)) == CLI_OPT_NEXT) {
		if (strcmp(name, "jwks") == 0) {
			jwks_file = optarg;
		} else if (strcmp(name, "leeway") == 0 &&
			   cli_parse_int("--leeway", optarg, 0, 86400, &leeway) < 0) {
			return cli_usage_error("verify", "%s", err_msg());
		}
	}
	if (r == CLI_OPT_EXIT)
		return st;
	if (jwks_file == NULL)
		return cli_usage_error("verify", "--jwks FILE is required");
	if ((r = one_jwt("verify", argc, argv, &jwt)) != 0)
		return r;
	if ((r = kv_load_file(jwks_file, &jwks)) < 0) {
		r = cli_fail(r);
		goto out;
	}
	/* a single JWK, as a provider's portal may show it */
	if (json_object_get(jwks, "keys") == NULL && json_object_get(jwks, "kty") != NULL) {
		json_t *one = json_pack("{s:[o]}", "keys", jwks);

		jwks = one;
		if (jwks == NULL) {
			r = cli_fail(err_nomem());
			goto out;
		}
	}
	if (!json_is_array(json_object_get(jwks, "keys"))) {
		r = cli_fail(err_set(P11J_E_BAD_REQUEST,
				     "%s: not a JWKS ({\"keys\": [...]}) nor a JWK", jwks_file));
		goto out;
	}
	r = jws_verify_jwks(jwt, jwks, util_now(), leeway, &p);
	if (r == P11J_E_NOMEM || r == P11J_E_CRYPTO || r == P11J_E_INTERNAL) {
		r = cli_fail(r);
		goto out;
	}
	if (r < 0) {
		fprintf(stderr, "p11jwt: verify: %s: %s", err_code_name(r), err_msg());
		if (r == P11J_E_EXPIRED || r == P11J_E_NOT_YET_VALID)
			print_when(jwt, r == P11J_E_EXPIRED ? "exp" : "nbf", leeway);
		fputc('\n', stderr);
		r = CLI_EXIT_VERIFY;
		goto out;
	}
	kid = json_string_value(json_object_get(p.header, "kid"));
	printf("signature valid (kid %s, alg %s)\n", kid ? kid : "(none)", jwa_name(p.alg));
	r = 0;
out:
	jws_parsed_clear(&p);
	json_decref(jwks);
	free(jwt);
	return r;
}
