/* SPDX-License-Identifier: MIT */
/* Shared by the p11jwt program's files (main.c, help.c, cmd_*.c); not part
 * of cli_core. Only these files print and choose exit codes. */
#ifndef P11J_CLI_H
#define P11J_CLI_H

#include <stdbool.h>
#include <stdio.h>
#include <unistd.h> /* optind, optarg */
#include <jansson.h>

/* Exit status, documented in `p11jwt --help`. */
enum {
	CLI_EXIT_OK = 0,
	CLI_EXIT_VERIFY = 1,  /* verify: signature, exp or nbf do not hold */
	CLI_EXIT_USAGE = 2,   /* bad option, bad k=v pair, bad file or JWT input */
	CLI_EXIT_AGENT = 3,   /* agent unreachable */
	CLI_EXIT_REFUSED = 4, /* the agent refused the request */
	CLI_EXIT_OTHER = 5,
	/* token and call */
	CLI_EXIT_OAUTH = 6,        /* the token endpoint answered an OAuth error */
	CLI_EXIT_CONNECT = 7,      /* cannot connect (DNS, refused) */
	CLI_EXIT_TIMEOUT = 8,      /* a server did not answer in time */
	CLI_EXIT_TLS = 9,          /* TLS handshake or certificate check */
	CLI_EXIT_BAD_RESPONSE = 10, /* a server's answer is unusable */
	CLI_EXIT_HTTP_STATUS = 11, /* call: the API answered a non-2xx status */
};

typedef struct {
	const char *socket;    /* --socket, or NULL for the default */
	const char *agent_uid; /* --agent-uid, or NULL ($P11JWT_AGENT_UID) */
} cli_ctx;

/* p11jwt-cmds.so (cmds.c): the commands that need libcrypto, which p11jwt
 * loads with dlopen() when one of them runs (main.c). Its two symbols: the
 * version string, which must be the program's, and the entry point, which
 * runs argv[0]'s command and returns the exit status. */
#define P11JWT_CMDS_MODULE "p11jwt-cmds.so"
typedef int (*p11jwt_cmds_run_fn)(const cli_ctx *ctx, int argc, char **argv);

/* help.c: the option table and everything printed or parsed from it. */
void cli_usage(FILE *f, const char *cmd);
void cli_usage_all(FILE *f);
/* "p11jwt: usage: ... (see 'p11jwt CMD --help')" on stderr; CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True when cmd is a known command. */
bool cli_is_command(const char *cmd);

enum { CLI_OPT_END = 0, CLI_OPT_NEXT = 1, CLI_OPT_EXIT = 2 };
/* The next option of cmd on its command line (getopt_long over the option
 * table, so every documented option is parsed and nothing else):
 * CLI_OPT_NEXT with its long name in *ret_name (and optarg); CLI_OPT_END
 * when only operands are left (from optind); CLI_OPT_EXIT with *ret_exit
 * after printing the help (0) or a usage error (CLI_EXIT_USAGE).
 * "--socket" is handled here (ctx->socket). Reset optind = 0 before the
 * first call. */
int cli_next_opt(cli_ctx *ctx, const char *cmd, int argc, char **argv, const char **ret_name,
		 int *ret_exit);

/* The commands' own option parsers follow one convention:
 *   static bool parse_...(cli_ctx *ctx, ..., int *ret_exit);
 * true: the options are read, go on; false: stop and exit with *ret_exit
 * (0 after --help, CLI_EXIT_USAGE after a usage error, already printed). */

/* common.c */
/* Print "p11jwt: CODE: message" once and return the exit status for a local
 * failure: input problems (bad_request, not_found, ...) are CLI_EXIT_USAGE. */
int cli_fail(int code);
/* Send req (consumed) to the agent; on failure print and return the exit
 * status (3 unreachable, 4 refused, 5 other), else 0 and *ret_resp. */
int cli_call(const cli_ctx *ctx, json_t *req, json_t **ret_resp);
/* Pretty JSON (2 spaces, member order kept) and a newline on stdout. */
int cli_print_json(const json_t *v);
/* The JWT given on the command line, or all of standard input for "-"
 * (bounded, surrounding whitespace dropped). */
int cli_read_jwt(const char *arg, char **ret_jwt);
/* A decimal integer in [min, max], else P11J_E_BAD_REQUEST naming opt. */
int cli_parse_int(const char *opt, const char *s, long long min, long long max,
		  long long *ret);

int cmd_keys(cli_ctx *ctx, int argc, char **argv);
int cmd_jwks(cli_ctx *ctx, int argc, char **argv);
int cmd_sign(cli_ctx *ctx, int argc, char **argv);
int cmd_decode(cli_ctx *ctx, int argc, char **argv);
int cmd_verify(cli_ctx *ctx, int argc, char **argv);
int cmd_token(cli_ctx *ctx, int argc, char **argv);
int cmd_call(cli_ctx *ctx, int argc, char **argv);
int cmd_cache(cli_ctx *ctx, int argc, char **argv);
/* cmd_dpop.c: one DPoP proof (RFC 9449) */
int cmd_dpop(cli_ctx *ctx, int argc, char **argv);
/* cmd_pin.c: the agent's PIN lifecycle */
int cmd_login(cli_ctx *ctx, int argc, char **argv);
int cmd_lock(cli_ctx *ctx, int argc, char **argv);
/* cmd_status.c */
int cmd_status(cli_ctx *ctx, int argc, char **argv);
/* cmd_reload.c: the agent lists its tokens' keys again */
int cmd_reload(cli_ctx *ctx, int argc, char **argv);
/* cmd_admin.c: the next key of a rotation, made on the token */
int cmd_rotate(cli_ctx *ctx, int argc, char **argv);
/* cmd_admin.c: talk to the token directly, not to the agent */
int cmd_keygen(cli_ctx *ctx, int argc, char **argv);
int cmd_csr(cli_ctx *ctx, int argc, char **argv);
int cmd_cert(cli_ctx *ctx, int argc, char **argv);

#endif
