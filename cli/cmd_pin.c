/* SPDX-License-Identifier: MIT */
/* p11jwt login, p11jwt lock: the agent's PIN lifecycle (docs/protocol.md). */
#include "cli/cli.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>

#define PIN_MAX 256

/* One line from fd, without echo when it is a terminal (the prompt comes
 * once echo is off, so nothing typed after it is shown). Returns the length,
 * 0 for an empty line (a PIN pad), or a negative error. */
static int pin_read(int fd, bool tty, const char *prompt, char *buf, size_t cap)
{
	struct termios old, noecho;
	size_t n = 0;
	bool restore = false, nl = false;
	int r = 0;

	if (tty && tcgetattr(fd, &old) == 0) {
		noecho = old;
		noecho.c_lflag &= ~(tcflag_t)ECHO;
		noecho.c_lflag |= ECHONL;
		restore = tcsetattr(fd, TCSAFLUSH, &noecho) == 0;
	}
	if (tty) {
		fputs(prompt, stderr);
		fflush(stderr);
	}
	while (n < cap) {
		char c;
		ssize_t k = read(fd, &c, 1);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = err_set(P11J_E_SYSTEM, "cannot read the PIN: %s", strerror(errno));
			break;
		}
		if (k == 0 || c == '\n') {
			nl = k == 1;
			break;
		}
		buf[n++] = c;
	}
	if (restore)
		tcsetattr(fd, TCSAFLUSH, &old);
	if (r == 0 && n == cap && !nl)
		r = err_set(P11J_E_BAD_REQUEST, "the PIN is longer than %d bytes", PIN_MAX);
	if (r < 0) {
		util_wipe(buf, cap);
		return r;
	}
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	return (int)n;
}

static bool parse_token_opt(cli_ctx *ctx, const char *cmd, int argc, char **argv,
			    const char **ret_token, int *ret_exit)
{
	const char *name = NULL;
	int r;

	*ret_exit = 0;
	while ((r = cli_next_opt(ctx, cmd, argc, argv, &name, ret_exit)) == CLI_OPT_NEXT)
		if (strcmp(name, "token") == 0)
			*ret_token = optarg;
	if (r == CLI_OPT_EXIT)
		return false;
	if (optind != argc) {
		*ret_exit = cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
		return false;
	}
	return true;
}

static void print_state(const json_t *resp)
{
	const char *tok = json_string_value(json_object_get(resp, "token"));
	const char *st = json_string_value(json_object_get(resp, "state"));

	fprintf(stderr, "p11jwt: token '%s' is %s\n", tok ? tok : "?", st ? st : "?");
}

int cmd_login(cli_ctx *ctx, int argc, char **argv)
{
	char pin[PIN_MAX + 1];
	const char *token = NULL;
	json_t *req = NULL, *resp = NULL;
	int fd = 0, n, st = 0;
	bool tty;

	if (!parse_token_opt(ctx, "login", argc, argv, &token, &st))
		return st;
	/* A terminal: prompt, no echo. Otherwise one line of standard input,
	 * so that scripts can pipe the PIN in. */
	tty = isatty(fd);
	n = pin_read(fd, tty, "PIN (empty: use the reader's PIN pad): ", pin, PIN_MAX);
	if (n < 0)
		return cli_fail(n);
	req = json_pack("{s:s}", "op", "login");
	if (req != NULL && n > 0 && json_object_set_new(req, "pin", json_stringn(pin, (size_t)n)) < 0) {
		json_decref(req);
		req = NULL;
	}
	util_wipe(pin, sizeof(pin));
	if (req != NULL && token != NULL && json_object_set_new(req, "token", json_string(token)) < 0) {
		json_decref(req);
		req = NULL;
	}
	/* the request's strings are wiped when freed (main.c's allocator) */
	if ((st = cli_call(ctx, req, &resp)) != 0)
		return st;
	print_state(resp);
	json_decref(resp);
	return 0;
}

int cmd_lock(cli_ctx *ctx, int argc, char **argv)
{
	const char *token = NULL;
	json_t *req, *resp = NULL;
	int st = 0;

	if (!parse_token_opt(ctx, "lock", argc, argv, &token, &st))
		return st;
	req = json_pack("{s:s}", "op", "lock");
	if (req != NULL && token != NULL && json_object_set_new(req, "token", json_string(token)) < 0) {
		json_decref(req);
		req = NULL;
	}
	if ((st = cli_call(ctx, req, &resp)) != 0)
		return st;
	print_state(resp);
	json_decref(resp);
	return 0;
}
