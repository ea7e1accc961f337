/* SPDX-License-Identifier: MIT */
/* p11jwt sign: build the request from files and pairs, print the JWT. */
#include "cli/cli.h"
#include "cli/kv.h"
#include "common/err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Pairs are applied after both files are read, whatever the order on the
 * command line, so remember them in order. */
typedef struct {
	const char **v;
	size_t n;
} pairs;

static int apply(json_t *obj, const pairs *p, const char *opt)
{
	for (size_t i = 0; i < p->n; i++) {
		char why[512];
		int r = kv_parse(obj, p->v[i]);

		if (r < 0) {
			/* err_msg() is the buffer err_set() writes: copy it first */
			snprintf(why, sizeof(why), "%s", err_msg());
			return err_set(r, "--%s %s", opt, why);
		}
	}
	return 0;
}

int cmd_sign(cli_ctx *ctx, int argc, char **argv)
{
	const char *name = NULL, *key = NULL, *alg = NULL, *hfile = NULL, *cfile = NULL;
	pairs hp = { 0 }, cp = { 0 };
	json_t *header = NULL, *claims = NULL, *include = NULL, *req = NULL, *resp = NULL;
	const char *jwt;
	long long lifetime = 0;
	int r, st = 0;

	hp.v = calloc((size_t)argc + 1, sizeof(*hp.v));
	cp.v = calloc((size_t)argc + 1, sizeof(*cp.v));
	include = json_array();
	if (hp.v == NULL || cp.v == NULL || include == NULL) {
		r = cli_fail(err_nomem());
		goto out;
	}
	while ((r = cli_next_opt(ctx, "sign", argc, argv, &name, &st)) == CLI_OPT_NEXT) {
		if (strcmp(name, "key") == 0) {
			key = optarg;
		} else if (strcmp(name, "alg") == 0) {
			alg = optarg;
		} else if (strcmp(name, "header-file") == 0) {
			hfile = optarg;
		} else if (strcmp(name, "claims-file") == 0) {
			cfile = optarg;
		} else if (strcmp(name, "header") == 0) {
			hp.v[hp.n++] = optarg;
		} else if (strcmp(name, "claim") == 0) {
			cp.v[cp.n++] = optarg;
		} else if (strcmp(name, "lifetime") == 0) {
			if (cli_parse_int("--lifetime", optarg, 1, INT32_MAX, &lifetime) < 0) {
				r = CLI_OPT_EXIT;
				st = cli_usage_error("sign", "%s", err_msg());
				break;
			}
		} else {
			/* x5t, x5t-s256, x5c: the wire names differ only for S256 */
			const char *inc = strcmp(name, "x5t-s256") == 0 ? "x5t#S256" : name;
			bool seen = false;
			size_t i;
			json_t *v;

			json_array_foreach(include, i, v)
				seen = seen || strcmp(json_string_value(v), inc) == 0;
			if (!seen && json_array_append_new(include, json_string(inc)) < 0) {
				r = CLI_OPT_EXIT;
				st = cli_fail(err_nomem());
				break;
			}
		}
	}
	if (r == CLI_OPT_EXIT) {
		r = st;
		goto out;
	}
	if (optind != argc) {
		r = cli_usage_error("sign", "unexpected argument '%s'", argv[optind]);
		goto out;
	}
	if (key == NULL) {
		r = cli_usage_error("sign", "--key NAME is required; 'p11jwt keys' lists them");
		goto out;
	}
	if ((hfile && (r = kv_load_file(hfile, &header)) < 0) ||
	    (cfile && (r = kv_load_file(cfile, &claims)) < 0)) {
		r = cli_fail(r);
		goto out;
	}
	if ((header == NULL && (header = json_object()) == NULL) ||
	    (claims == NULL && (claims = json_object()) == NULL)) {
		r = cli_fail(err_nomem());
		goto out;
	}
	if ((r = apply(header, &hp, "header")) < 0 || (r = apply(claims, &cp, "claim")) < 0) {
		r = cli_fail(r);
		goto out;
	}
	req = json_pack("{s:s,s:s}", "op", "sign", "key", key);
	if (req == NULL || (alg && json_object_set_new(req, "alg", json_string(alg)) < 0)) {
		r = cli_fail(err_set(P11J_E_BAD_REQUEST, "--key and --alg must be valid UTF-8"));
		goto out;
	}
	if ((json_object_size(header) && json_object_set(req, "header", header) < 0) ||
	    (json_object_size(claims) && json_object_set(req, "claims", claims) < 0) ||
	    (lifetime && json_object_set_new(req, "lifetime", json_integer(lifetime)) < 0) ||
	    (json_array_size(include) && json_object_set(req, "include", include) < 0)) {
		r = cli_fail(err_nomem());
		goto out;
	}
	r = cli_call(ctx, req, &resp);
	req = NULL; /* consumed */
	if (r != 0)
		goto out;
	jwt = json_string_value(json_object_get(resp, "jwt"));
	if (jwt == NULL) {
		r = cli_fail(err_set(P11J_E_PROTOCOL, "the agent's answer has no jwt"));
		goto out;
	}
	printf("%s\n", jwt);
	r = 0;
out:
	free(hp.v);
	free(cp.v);
	json_decref(header);
	json_decref(claims);
	json_decref(include);
	json_decref(req);
	json_decref(resp);
	return r;
}
