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

#include <dlfcn.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef P11JWT_ADMIN
/*
 * Two helpers of this program live in libexecdir: p11jwt-admin (keygen,
 * csr and cert talk to the token directly, so they need p11-kit and a
 * PKCS#11 module in the process) and p11jwt-cmds.so (the commands that need
 * libcrypto: keys, jwks, decode, verify, token, call, cache, dpop). What remains
 * here, the agent's commands (sign, status, login, lock), loads neither
 * PKCS#11 code nor libcrypto and starts in half the time. A helper is
 * found next to this program first (the build tree), then in
 * $P11JWT_LIBEXECDIR (tests of an installed tree), then where it was
 * installed.
 */
static bool libexec_find(const char *name, int mode, char *path, size_t size)
{
	char self[PATH_MAX];
	const char *env = getenv("P11JWT_LIBEXECDIR");
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n > 0) {
		self[n] = '\0';
		snprintf(path, size, "%s/%s", dirname(self), name);
		if (access(path, mode) == 0)
			return true;
	}
	if (env && env[0] == '/') {
		snprintf(path, size, "%s/%s", env, name);
		if (access(path, mode) == 0)
			return true;
	}
	snprintf(path, size, "%s/%s", P11JWT_LIBEXECDIR, name);
	return access(path, mode) == 0;
}

static int cmd_admin_exec(cli_ctx *ctx, int argc, char **argv)
{
	char path[PATH_MAX + 32];
	char **args = calloc((size_t)argc + 4, sizeof(*args));
	size_t k = 0;

	if (args == NULL)
		return cli_fail(err_nomem());
	args[k++] = (char *)"p11jwt";
	if (ctx->socket) {
		args[k++] = (char *)"--socket";
		args[k++] = (char *)ctx->socket;
	}
	for (int i = 0; i < argc; i++)
		args[k++] = argv[i];
	args[k] = NULL;
	if (libexec_find("p11jwt-admin", X_OK, path, sizeof(path)))
		execv(path, args);
	free(args);
	return cli_fail(err_set(P11J_E_NOT_FOUND, "cannot run %s: %s", path, strerror(errno)));
}

static int cmd_module(cli_ctx *ctx, int argc, char **argv)
{
	char path[PATH_MAX + 32];
	const char *ver;
	p11jwt_cmds_run_fn run;
	void *h;

	if (!libexec_find(P11JWT_CMDS_MODULE, R_OK, path, sizeof(path)))
		return cli_fail(err_set(P11J_E_NOT_FOUND, "cannot load %s: %s", path,
					strerror(errno)));
	h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL)
		return cli_fail(err_set(P11J_E_NOT_FOUND, "cannot load %s", dlerror()));
	ver = dlsym(h, "p11jwt_cmds_version");
	run = (p11jwt_cmds_run_fn)dlsym(h, "p11jwt_cmds_run");
	if (ver == NULL || run == NULL || strcmp(ver, P11JWT_VERSION) != 0)
		return cli_fail(err_set(P11J_E_NOT_FOUND, "%s is not p11jwt %s's command module",
					path, P11JWT_VERSION));
	return run(ctx, argc, argv);
}
#define cmd_keygen cmd_admin_exec
#define cmd_csr cmd_admin_exec
#define cmd_cert cmd_admin_exec
#define cmd_rotate cmd_admin_exec
#define cmd_keys cmd_module
#define cmd_jwks cmd_module
#define cmd_decode cmd_module
#define cmd_verify cmd_module
#define cmd_token cmd_module
#define cmd_call cmd_module
#define cmd_cache cmd_module
#define cmd_dpop cmd_module
#endif

static const struct {
	const char *name;
	int (*fn)(cli_ctx *ctx, int argc, char **argv);
} cmds[] = {
	{ "keys", cmd_keys },	  { "jwks", cmd_jwks },	    { "sign", cmd_sign },
	{ "decode", cmd_decode }, { "verify", cmd_verify }, { "token", cmd_token },
	{ "call", cmd_call },	  { "cache", cmd_cache },	    { "keygen", cmd_keygen },
	{ "csr", cmd_csr },	  { "cert", cmd_cert },	    { "login", cmd_login },
	{ "lock", cmd_lock },	  { "status", cmd_status }, { "dpop", cmd_dpop },
	{ "reload", cmd_reload }, { "rotate", cmd_rotate },
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
		} else if (strcmp(argv[i], "--agent-uid") == 0) {
			if (++i == argc)
				return cli_usage_error(NULL, "option '--agent-uid' needs an argument");
			ctx.agent_uid = argv[i];
		} else if (strncmp(argv[i], "--agent-uid=", 12) == 0) {
			ctx.agent_uid = argv[i] + 12;
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
#ifdef P11JWT_ADMIN
			if (http_global_init() < 0)
				return 5;
#endif
			st = cmds[k].fn(&ctx, argc - i, argv + i);
#ifdef P11JWT_ADMIN
			http_global_cleanup();
#endif
			return st;
		}
	}
	return cli_usage_error(NULL, "unknown command '%s'", argv[i]);
}
