/* SPDX-License-Identifier: MIT */
/*
 * p11jwt-cmds.so: the commands of p11jwt that need libcrypto (keys, jwks,
 * decode, verify, token, call, cache, dpop: its ath is a SHA-256). p11jwt loads it only to run one of
 * them, so that `p11jwt sign` and the other agent commands do not pay for
 * loading and relocating libcrypto (about 0.6 ms of a 2 ms run; see
 * docs/performance.md). Everything it needs is linked in; only the two
 * symbols below are exported.
 */
#include "cli/cli.h"
#include "cli/http.h"

#include <string.h>

#define EXPORT __attribute__((visibility("default")))

EXPORT const char p11jwt_cmds_version[] = P11JWT_VERSION;

EXPORT int p11jwt_cmds_run(const cli_ctx *gctx, int argc, char **argv);

int p11jwt_cmds_run(const cli_ctx *gctx, int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(cli_ctx *ctx, int argc, char **argv);
	} cmds[] = {
		{ "keys", cmd_keys },	  { "jwks", cmd_jwks },	  { "decode", cmd_decode },
		{ "verify", cmd_verify }, { "token", cmd_token }, { "call", cmd_call },
		{ "cache", cmd_cache },	  { "dpop", cmd_dpop },
	};
	cli_ctx ctx = *gctx;

	for (size_t k = 0; k < sizeof(cmds) / sizeof(cmds[0]); k++) {
		if (argc > 0 && strcmp(argv[0], cmds[k].name) == 0) {
			int st;

			if (http_global_init() < 0)
				return CLI_EXIT_OTHER;
			st = cmds[k].fn(&ctx, argc, argv);
			http_global_cleanup();
			return st;
		}
	}
	return cli_usage_error(NULL, "unknown command '%s'", argc > 0 ? argv[0] : "");
}
