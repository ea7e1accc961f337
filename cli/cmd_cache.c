/* SPDX-License-Identifier: MIT */
/* p11jwt cache list|clear: the token cache, never showing a token; each
 * entry with its token type and, for DPoP, the key thumbprint it is bound
 * to. */
#include "cli/cache.h"
#include "cli/token.h"
#include "common/util.h"

#include <stdio.h>
#include <string.h>

static void fmt_left(const json_t *e, int64_t now, char *buf, size_t len)
{
	const json_t *x = json_object_get(e, "expires_at");
	long long left;

	if (!json_is_integer(x)) {
		snprintf(buf, len, "unknown");
		return;
	}
	left = (long long)(json_integer_value(x) - now);
	if (left <= 0)
		snprintf(buf, len, "expired");
	else
		snprintf(buf, len, "%lldm%02llds", left / 60, left % 60);
}

int cmd_cache(cli_ctx *ctx, int argc, char **argv)
{
	const char *name = NULL;
	bool as_json = false;
	tcache c;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "cache", argc, argv, &name, &st)) == CLI_OPT_NEXT)
		as_json = true; /* --json is the only option */
	if (r == CLI_OPT_EXIT)
		return st;
	if (optind != argc - 1 ||
	    (strcmp(argv[optind], "list") != 0 && strcmp(argv[optind], "clear") != 0))
		return cli_usage_error("cache", "say 'list' or 'clear'");
	if ((r = cache_open(&c)) < 0)
		return cli_fail(r);
	if (strcmp(argv[optind], "clear") == 0) {
		int n = 0;

		if ((r = cache_clear(&c, &n)) < 0)
			return cli_fail(r);
		printf("removed %d cached token%s from %s\n", n, n == 1 ? "" : "s", c.dir);
		return 0;
	} else {
		json_t *items = NULL, *out, *it;
		int64_t now = util_now();
		int skipped = 0;
		size_t i;

		if ((r = cache_list(&c, &items, &skipped)) < 0)
			return cli_fail(r);
		out = json_array();
		json_array_foreach(items, i, it) {
			const json_t *e = json_object_get(it, "entry");
			const json_t *x = json_object_get(e, "expires_at");
			json_t *row = json_pack(
				"{s:s,s:O?,s:O?,s:O?,s:O?,s:O?,s:O?,s:b}", "id",
				json_string_value(json_object_get(it, "key")), "token_url",
				json_object_get(e, "token_url"), "client_id",
				json_object_get(e, "client_id"), "key", json_object_get(e, "key"),
				"sub", json_object_get(e, "sub"), "scope", json_object_get(e, "scope"),
				"preset", json_object_get(e, "preset"), "refresh_token",
				json_is_string(json_object_get(e, "refresh_token")));

			if (row && json_is_integer(x))
				json_object_set_new(row, "expires_in",
						    json_integer(json_integer_value(x) - now));
			/* entries from before DPoP carry no token_type: Bearer */
			if (row) {
				json_object_set_new(row, "token_type",
						    json_string(cache_entry_is_dpop(e) ? "DPoP"
										   : "Bearer"));
				json_object_set(row, "jkt",
						cache_entry_is_dpop(e) ? json_object_get(e, "jkt")
								       : json_null());
			}
			json_array_append_new(out, row);
		}
		if (as_json) {
			st = cli_print_json(out);
		} else if (json_array_size(out) == 0) {
			printf("no cached tokens in %s\n", c.dir);
		} else {
			printf("%-12s %-16s %-9s %-3s %-16s %-20s %-14s %-18s %s\n", "ID", "PRESET",
			       "LEFT", "RT", "KEY", "CLIENT", "SUB", "TYPE", "TOKEN URL / SCOPE");
			json_array_foreach(items, i, it) {
				const json_t *e = json_object_get(it, "entry");
				char left[32], type[32];

				fmt_left(e, now, left, sizeof(left));
				/* DPoP:JKT (its first 12 characters): the key it is bound to */
				if (cache_entry_is_dpop(e))
					snprintf(type, sizeof(type), "DPoP:%.12s",
						 json_string_value(json_object_get(e, "jkt")));
				else
					snprintf(type, sizeof(type), "Bearer");
				printf("%-12.12s %-16s %-9s %-3s %-16s %-20s %-14s %-18s %s%s%s\n",
				       json_string_value(json_object_get(it, "key")),
				       json_string_value(json_object_get(e, "preset"))
					       ?: "-",
				       left,
				       json_is_string(json_object_get(e, "refresh_token")) ? "yes"
											   : "no",
				       json_string_value(json_object_get(e, "key")) ?: "-",
				       json_string_value(json_object_get(e, "client_id")) ?: "-",
				       json_string_value(json_object_get(e, "sub")) ?: "-", type,
				       json_string_value(json_object_get(e, "token_url")) ?: "-",
				       json_string_value(json_object_get(e, "scope")) ? " " : "",
				       json_string_value(json_object_get(e, "scope")) ?: "");
			}
		}
		if (skipped)
			tkn_note("note: %d cache file%s ignored (not ours, not private, or corrupt)",
			     skipped, skipped == 1 ? "" : "s");
		json_decref(out);
		json_decref(items);
	}
	return st;
}
