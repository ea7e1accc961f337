/* SPDX-License-Identifier: MIT */
/*
 * p11jwt: the command-line companion of p11jwt-agent. Lists keys, exports
 * the JWKS, asks the agent for JWTs, decodes and verifies them. The JWT is
 * printed on stdout only; nothing here logs it.
 */
#include "cli/cli.h"
#include "cli/http.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef P11JWT_ADMIN
/*
 * keygen, csr and cert talk to the token directly, so they need p11-kit and
 * a PKCS#11 module in the process. They live in a second program,
 * p11jwt-admin (libexecdir), which this one runs: the everyday commands and
 * the network-facing ones (token, call) never load PKCS#11 code, and start
 * faster. Found next to this program first (the build tree), then in
 * $P11JWT_LIBEXECDIR (tests of an installed tree), then where it was
 * installed.
 */
static int cmd_admin_exec(cli_ctx *ctx, int argc, char **argv)
{
	char self[PATH_MAX], path[PATH_MAX + 32];
	const char *env = getenv("P11JWT_LIBEXECDIR");
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char **args = calloc((size_t)argc + 4, sizeof(*args));
	size_t k = 0;

	if (args == NULL)
		return cli_fail(err_set(P11J_E_NOMEM, "out of memory"));
	args[k++] = (char *)"p11jwt";
	if (ctx->socket) {
		args[k++] = (char *)"--socket";
		args[k++] = (char *)ctx->socket;
	}
	for (int i = 0; i < argc; i++)
		args[k++] = argv[i];
	args[k] = NULL;
	if (n > 0) {
		self[n] = '\0';
		snprintf(path, sizeof(path), "%s/p11jwt-admin", dirname(self));
		if (access(path, X_OK) == 0)
			execv(path, args);
	}
	if (env && env[0] == '/') {
		snprintf(path, sizeof(path), "%s/p11jwt-admin", env);
		if (access(path, X_OK) == 0)
			execv(path, args);
	}
	snprintf(path, sizeof(path), "%s/p11jwt-admin", P11JWT_LIBEXECDIR);
	execv(path, args);
	free(args);
	return cli_fail(err_set(P11J_E_NOT_FOUND, "cannot run %s: %s", path, strerror(errno)));
}
#define cmd_keygen cmd_admin_exec
#define cmd_csr cmd_admin_exec
#define cmd_cert cmd_admin_exec
#endif

static const struct {
	const char *name;
	int (*fn)(cli_ctx *ctx, int argc, char **argv);
} cmds[] = {
	{ "keys", cmd_keys },	  { "jwks", cmd_jwks },	    { "sign", cmd_sign },
	{ "decode", cmd_decode }, { "verify", cmd_verify }, { "token", cmd_token },
	{ "call", cmd_call },	  { "cache", cmd_cache },	    { "keygen", cmd_keygen },
	{ "csr", cmd_csr },	  { "cert", cmd_cert },	    { "login", cmd_login },
	{ "lock", cmd_lock },	  { "status", cmd_status },
};

int main(int argc, char **argv)
{
	cli_ctx ctx = { 0 };
	int i;

	/* JSON strings hold assertions, access and refresh tokens: wiped when
	 * Jansson frees them. Before any JSON is made. */
	json_set_alloc_funcs(malloc, util_wipe_free);
	/* global options come before the command; stop at the first operand */
	for (i = 1; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
		if (strcmp(argv[i], "--socket") == 0) {
			if (++i == argc)
				return cli_usage_error(NULL, "option '--socket' needs an argument");
			ctx.socket = argv[i];
		} else if (strncmp(argv[i], "--socket=", 9) == 0) {
			ctx.socket = argv[i] + 9;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			cli_usage(stdout, NULL);
			return 0;
		} else if (strcmp(argv[i], "--help-all") == 0) {
			cli_usage_all(stdout);
			return 0;
		} else if (strcmp(argv[i], "--version") == 0) {
			printf("p11jwt %s\n", P11JWT_VERSION);
			return 0;
		} else if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		} else {
			return cli_usage_error(NULL, "unknown option '%s'", argv[i]);
		}
	}
	if (i == argc) {
		cli_usage(stderr, NULL);
		return CLI_EXIT_USAGE;
	}
	for (size_t k = 0; k < sizeof(cmds) / sizeof(cmds[0]); k++) {
		if (strcmp(argv[i], cmds[k].name) == 0) {
			int st;

			optind = 0; /* full getopt reset for the command's own argv */
			if (http_global_init() < 0)
				return 5;
			st = cmds[k].fn(&ctx, argc - i, argv + i);
			http_global_cleanup();
			return st;
		}
	}
	return cli_usage_error(NULL, "unknown command '%s'", argv[i]);
}
