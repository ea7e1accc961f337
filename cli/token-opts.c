/* SPDX-License-Identifier: MIT */
/* The options of p11jwt token and call, as profile members (xch_check_options). */
#include "cli/exchange.h"
#include "cli/kv.h"
#include "cli/token.h"
#include "common/err.h"
#include "common/util.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

void tkn_opts_clear(topts *o)
{
	json_decref(o->cli);
	json_decref(o->profile);
	free(o->api_headers);
}

static int obj_member(json_t *cli, const char *name, json_t **ret)
{
	json_t *o = json_object_get(cli, name);

	if (o == NULL) {
		o = json_object();
		if (o == NULL || json_object_set_new(cli, name, o) < 0)
			return err_nomem();
	}
	*ret = o;
	return 0;
}

static int add_include(json_t *cli, const char *what)
{
	json_t *a = json_object_get(cli, "include");
	size_t i;
	json_t *v;

	if (a == NULL) {
		a = json_array();
		if (a == NULL || json_object_set_new(cli, "include", a) < 0)
			return err_nomem();
	}
	json_array_foreach(a, i, v)
		if (strcmp(json_string_value(v), what) == 0)
			return 0;
	return json_array_append_new(a, json_string(what)) < 0
		       ? err_nomem()
		       : 0;
}

/* --form NAME=VALUE sets, --form NAME removes. */
static int form_opt(json_t *cli, const char *arg)
{
	const char *eq = strchr(arg, '=');
	json_t *f = NULL;
	char *name;
	int r;

	if ((r = obj_member(cli, "form", &f)) < 0)
		return r;
	if (eq == arg || arg[0] == '\0')
		return err_set(P11J_E_BAD_REQUEST, "--form '%s': empty field name", arg);
	name = eq ? strndup(arg, (size_t)(eq - arg)) : strdup(arg);
	if (name == NULL)
		return err_nomem();
	r = json_object_set_new(f, name, eq ? json_string(eq + 1) : json_null());
	free(name);
	return r < 0 ? err_set(P11J_E_BAD_REQUEST, "--form '%s': not valid UTF-8", arg) : 0;
}

static const struct {
	const char *opt, *member;
} str_opts[] = {
	{ "preset", "preset" },
	{ "key", "key" },
	{ "alg", "alg" },
	{ "client-id", "client_id" },
	{ "token-url", "token_url" },
	{ "aud", "aud" },
	{ "iss", "iss" },
	{ "sub", "sub" },
	{ "scope", "scope" },
	{ "header-file", "header_file" },
	{ "claims-file", "claims_file" },
	{ "assertion-field", "assertion_field" },
	{ "grant", "grant" },
	{ "client-secret-file", "client_secret_file" },
	{ "cacert", "cacert" },
	{ "dpop-key", "dpop_key" },
};

/* Stop parsing with exit status st. */
static bool stop(int *ret_exit, int st)
{
	*ret_exit = st;
	return false;
}

bool tkn_parse(cli_ctx *ctx, const char *cmd, int argc, char **argv, topts *o, int *ret_exit)
{
	const char *name = NULL, *profile = NULL;
	int r;

	*ret_exit = 0;

	o->cli = json_object();
	o->api_headers = calloc((size_t)argc + 1, sizeof(*o->api_headers));
	if (o->cli == NULL || o->api_headers == NULL)
		return stop(ret_exit, cli_fail(err_nomem()));
	while ((r = cli_next_opt(ctx, cmd, argc, argv, &name, ret_exit)) == CLI_OPT_NEXT) {
		int e = 0;
		size_t i;

		for (i = 0; i < ARRAY_SIZE(str_opts); i++)
			if (strcmp(name, str_opts[i].opt) == 0)
				break;
		if (i < ARRAY_SIZE(str_opts)) {
			if (json_object_set_new(o->cli, str_opts[i].member, json_string(optarg)) < 0)
				e = err_set(P11J_E_BAD_REQUEST, "--%s: not valid UTF-8", name);
		} else if (strcmp(name, "profile") == 0) {
			profile = optarg;
		} else if (strcmp(name, "lifetime") == 0 || strcmp(name, "timeout") == 0) {
			long long v;

			e = cli_parse_int(strcmp(name, "lifetime") == 0 ? "--lifetime" : "--timeout",
					  optarg, 1, name[0] == 'l' ? 86400 : 600, &v);
			if (e == 0 && json_object_set_new(o->cli, name, json_integer(v)) < 0)
				e = err_nomem();
		} else if (strcmp(name, "header") == 0 || strcmp(name, "claim") == 0) {
			json_t *obj = NULL;
			char why[512];

			e = obj_member(o->cli, name[0] == 'h' ? "header" : "claims", &obj);
			if (e == 0 && (e = kv_parse(obj, optarg)) < 0) {
				snprintf(why, sizeof(why), "%s", err_msg());
				e = err_set(e, "--%s %s", name, why);
			}
		} else if (strcmp(name, "form") == 0) {
			e = form_opt(o->cli, optarg);
		} else if (strcmp(name, "x5t") == 0 || strcmp(name, "x5c") == 0) {
			e = add_include(o->cli, name);
		} else if (strcmp(name, "x5t-s256") == 0) {
			e = add_include(o->cli, "x5t#S256");
		} else if (strcmp(name, "dpop") == 0 || strcmp(name, "no-dpop") == 0) {
			if (json_object_set_new(o->cli, "dpop", json_boolean(name[0] == 'd')) < 0)
				e = err_nomem();
		} else if (strcmp(name, "json") == 0) {
			o->json = true;
		} else if (strcmp(name, "no-cache") == 0) {
			o->no_cache = true;
		} else if (strcmp(name, "dry-run") == 0) {
			o->dry_run = true;
		} else if (strcmp(name, "request") == 0) {
			o->method = optarg;
		} else if (strcmp(name, "api-header") == 0) {
			if (strchr(optarg, ':') == NULL || optarg[0] == ':' ||
			    strpbrk(optarg, "\r\n") != NULL)
				e = err_set(P11J_E_BAD_REQUEST, "-H '%s': use 'Name: value'", optarg);
			else if (strncasecmp(optarg, "authorization:", 14) == 0)
				e = err_set(P11J_E_BAD_REQUEST,
					    "-H Authorization: p11jwt sets it from the token");
			else
				o->api_headers[o->n_api_headers++] = optarg;
		} else if (strcmp(name, "data") == 0) {
			o->data = optarg;
		}
		if (e < 0)
			return stop(ret_exit, cli_usage_error(cmd, "%s", err_msg()));
	}
	if (r == CLI_OPT_EXIT)
		return false;
	if (strcmp(cmd, "call") == 0) {
		if (optind != argc - 1)
			return stop(ret_exit, cli_usage_error(cmd, optind == argc ? "the URL to call is missing"
								   : "one URL only, after the options"));
		o->url = argv[optind];
	} else if (optind != argc) {
		return stop(ret_exit, cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]));
	}
	o->agent_uid = ctx->agent_uid;
	if (ctx->socket && json_object_set_new(o->cli, "socket", json_string(ctx->socket)) < 0)
		return stop(ret_exit, cli_fail(err_nomem()));
	if ((r = xch_check_options(o->cli, "command line")) < 0)
		return stop(ret_exit, cli_usage_error(cmd, "%s", err_msg()));
	if (profile && (r = xch_load_profile(profile, &o->profile)) < 0)
		return stop(ret_exit, cli_fail(r));
	return true;
}
