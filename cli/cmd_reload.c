/* SPDX-License-Identifier: MIT */
/* p11jwt reload: the agent lists its tokens' keys again (and re-reads its
 * --config), as on SIGHUP, and says what changed. */
#include "cli/cli.h"
#include "common/err.h"

#include <string.h>

static void print_names(const char *what, const json_t *v)
{
	size_t i;
	json_t *n;

	printf("%-8s", what);
	json_array_foreach(v, i, n)
		printf("%s %s", i ? "," : "", json_string_value(n) ?: "?");
	printf("%s\n", json_array_size(v) == 0 ? " none" : "");
}

int cmd_reload(cli_ctx *ctx, int argc, char **argv)
{
	json_t *resp = NULL;
	const char *name = NULL;
	bool as_json = false;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "reload", argc, argv, &name, &st)) == CLI_OPT_NEXT)
		if (strcmp(name, "json") == 0)
			as_json = true;
	if (r == CLI_OPT_EXIT)
		return st;
	if (optind != argc)
		return cli_usage_error("reload", "unexpected argument '%s'", argv[optind]);
	if ((r = cli_call(ctx, json_pack("{s:s}", "op", "reload"), &resp)) != 0)
		return r;
	if (!json_is_array(json_object_get(resp, "added")) ||
	    !json_is_array(json_object_get(resp, "removed"))) {
		r = cli_fail(err_set(P11J_E_PROTOCOL, "the agent's answer says nothing of its keys"));
		goto out;
	}
	if (as_json) {
		json_object_del(resp, "id");
		json_object_del(resp, "ok");
		r = cli_print_json(resp);
		goto out;
	}
	print_names("added", json_object_get(resp, "added"));
	print_names("removed", json_object_get(resp, "removed"));
	printf("%-8s %lld\n", "keys", (long long)json_integer_value(json_object_get(resp, "keys")));
	if (json_is_string(json_object_get(resp, "config")))
		printf("%-8s %s\n", "config", json_string_value(json_object_get(resp, "config")));
	r = 0;
out:
	json_decref(resp);
	return r;
}
