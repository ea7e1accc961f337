/* SPDX-License-Identifier: MIT */
/* p11jwt token: an access token (from the cache, by refresh or by an
 * exchange with an assertion the agent signs), or the assertion itself. */
#include "cli/exchange.h"
#include "cli/token.h"
#include "common/util.h"

#include <stdio.h>

int cmd_token(cli_ctx *ctx, int argc, char **argv)
{
	topts o = { 0 };
	xch_req req = { 0 };
	got_token g = { 0 };
	int st;

	if (!tkn_parse(ctx, "token", argc, argv, &o, &st))
		goto out;
	if ((st = tkn_prepare(&o, &req)) != 0)
		goto out;
	if (o.dry_run) {
		st = tkn_dry_run(&req);
		goto out;
	}
	if (!req.exchange) {
		char *jwt = NULL;

		if ((st = tkn_sign_assertion(&req, &jwt, NULL)) == 0)
			printf("%s\n", jwt);
		freezero_str(jwt);
		goto out;
	}
	if ((st = tkn_get_token(&req, !o.no_cache, false, &g)) != 0)
		goto out;
	if (o.json)
		st = tkn_print_token_json(&g);
	else
		printf("%s\n", g.access_token);
out:
	tkn_got_clear(&g);
	xch_req_clear(&req);
	tkn_opts_clear(&o);
	return st;
}
