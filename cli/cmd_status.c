/* SPDX-License-Identifier: MIT */
/* p11jwt status: what the agent serves and how it has gone so far. */
#include "cli/cli.h"
#include "common/err.h"

#include <inttypes.h>
#include <string.h>

static long long num(const json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

int cmd_status(cli_ctx *ctx, int argc, char **argv)
{
	json_t *resp = NULL, *toks, *errs, *v;
	const char *name = NULL, *k;
	bool as_json = false, first = true;
	long long up;
	size_t i;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "status", argc, argv, &name, &st)) == CLI_OPT_NEXT)
		if (strcmp(name, "json") == 0)
			as_json = true;
	if (r == CLI_OPT_EXIT)
		return st;
	if (optind != argc)
		return cli_usage_error("status", "unexpected argument '%s'", argv[optind]);
	if ((r = cli_call(ctx, json_pack("{s:s}", "op", "status"), &resp)) != 0)
		return r;
	if (as_json) {
		json_object_del(resp, "id");
		json_object_del(resp, "ok");
		r = cli_print_json(resp);
		goto out;
	}
	up = num(resp, "uptime");
	printf("%-12s p11jwt-agent %s (protocol %lld)\n", "agent",
	       json_string_value(json_object_get(resp, "version")) ?: "?", num(resp, "protocol"));
	printf("%-12s %lld s (%lldd %02lld:%02lld:%02lld)\n", "uptime", up, up / 86400,
	       up / 3600 % 24, up / 60 % 60, up % 60);
	toks = json_object_get(resp, "tokens");
	json_array_foreach(toks, i, v) printf(
	    "%-12s %s: %s%s\n", "token", json_string_value(json_object_get(v, "label")) ?: "?",
	    json_string_value(json_object_get(v, "state")) ?: "?",
	    json_is_true(json_object_get(v, "logged_in")) ? " (logged in)" : "");
	printf("%-12s %lld\n", "keys", num(resp, "keys"));
	printf("%-12s %lld\n", "requests", num(resp, "requests"));
	printf("%-12s", "errors");
	errs = json_object_get(resp, "errors");
	json_object_foreach(errs, k, v)
	{
		printf("%s %s %lld", first ? "" : ",", k, (long long)json_integer_value(v));
		first = false;
	}
	printf("%s\n", first ? " none" : "");
	printf("%-12s %lld open, %lld accepted, %lld refused\n", "connections",
	       num(resp, "connections"), num(resp, "connections_accepted"),
	       num(resp, "connections_refused"));
	r = 0;
out:
	json_decref(resp);
	return r;
}
