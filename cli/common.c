/* SPDX-License-Identifier: MIT */
/* Printing, exit status and input helpers shared by the p11jwt commands. */
#include "cli/cli.h"
#include "cli/agc.h"
#include "common/err.h"
#include "common/sockdir.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

/* A JWT is bounded at 64 KiB by jws_parse(); read a little more so that an
 * oversize one is reported as such rather than cut. */
#define CLI_JWT_READ_MAX (64 * 1024 + 16)

static void print_err(int code)
{
	fprintf(stderr, "p11jwt: %s: %s\n", err_code_name(code), err_msg());
}

/* The exit status of each error code a command may fail with locally;
 * anything else is CLI_EXIT_OTHER. The agent's refusals are
 * CLI_EXIT_REFUSED whatever their code (cli_call). */
static const struct {
	int code, exit;
} exit_table[] = {
	{ P11J_E_BAD_REQUEST, CLI_EXIT_USAGE },
	{ P11J_E_REQUEST_TOO_LARGE, CLI_EXIT_USAGE },
	{ P11J_E_NOT_FOUND, CLI_EXIT_USAGE },
	{ P11J_E_INSECURE, CLI_EXIT_USAGE },
	{ P11J_E_BAD_JWT, CLI_EXIT_USAGE },
	{ P11J_E_AGENT_UNAVAILABLE, CLI_EXIT_AGENT },
	{ P11J_E_OAUTH, CLI_EXIT_OAUTH },
	{ P11J_E_CONNECT, CLI_EXIT_CONNECT },
	{ P11J_E_TIMEOUT, CLI_EXIT_TIMEOUT },
	{ P11J_E_TLS, CLI_EXIT_TLS },
	{ P11J_E_BAD_RESPONSE, CLI_EXIT_BAD_RESPONSE },
	{ P11J_E_HTTP_STATUS, CLI_EXIT_HTTP_STATUS },
};

int cli_fail(int code)
{
	print_err(code);
	for (size_t i = 0; i < sizeof(exit_table) / sizeof(exit_table[0]); i++)
		if (exit_table[i].code == code)
			return exit_table[i].exit;
	return CLI_EXIT_OTHER;
}

int cli_call(const cli_ctx *ctx, json_t *req, json_t **ret_resp)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	uid_t trusted[SOCKDIR_MAX_UIDS];
	size_t ntrusted = 0;
	agc_origin origin = AGC_LOCAL;
	int r;

	if (req == NULL) {
		r = cli_fail(err_nomem());
		goto out;
	}
	if ((r = agc_socket_path(ctx->socket, path, sizeof(path))) < 0) {
		r = cli_fail(r);
		goto out;
	}
	if ((r = agc_trusted_uids(ctx->agent_uid, trusted, &ntrusted)) < 0) {
		r = cli_fail(r);
		goto out;
	}
	if ((r = agc_call(path, trusted, ntrusted, req, AGC_TIMEOUT_MS, ret_resp, &origin)) < 0) {
		if (origin == AGC_AGENT) {
			print_err(r);
			r = CLI_EXIT_REFUSED;
		} else if (origin == AGC_TRANSPORT && r == P11J_E_PROTOCOL) {
			r = (print_err(r), CLI_EXIT_OTHER);
		} else {
			r = cli_fail(r);
		}
	}
out:
	json_decref(req);
	return r;
}

int cli_print_json(const json_t *v)
{
	char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);

	if (s == NULL)
		return cli_fail(err_nomem());
	puts(s);
	free(s);
	return 0;
}

int cli_read_jwt(const char *arg, char **ret_jwt)
{
	char *buf = NULL, *s, *e;
	size_t len = 0;

	if (strcmp(arg, "-") != 0) {
		s = strdup(arg);
		if (s == NULL)
			return err_nomem();
		*ret_jwt = s;
		return 0;
	}
	buf = malloc(CLI_JWT_READ_MAX + 1);
	if (buf == NULL)
		return err_nomem();
	while (len < CLI_JWT_READ_MAX) {
		size_t n = fread(buf + len, 1, CLI_JWT_READ_MAX - len, stdin);

		if (n == 0)
			break;
		len += n;
	}
	if (ferror(stdin)) {
		free(buf);
		return err_set(P11J_E_BAD_REQUEST, "reading standard input: %s", strerror(errno));
	}
	if (len == CLI_JWT_READ_MAX) {
		free(buf);
		return err_set(P11J_E_REQUEST_TOO_LARGE,
			       "standard input holds more than a JWT (over %d bytes)", 64 * 1024);
	}
	if (memchr(buf, '\0', len) != NULL) {
		free(buf);
		return err_set(P11J_E_BAD_JWT, "standard input holds a NUL byte, not a JWT");
	}
	buf[len] = '\0';
	for (s = buf; isspace((unsigned char)*s); s++)
		;
	for (e = s + strlen(s); e > s && isspace((unsigned char)e[-1]); e--)
		;
	*e = '\0';
	if (*s == '\0') {
		free(buf);
		return err_set(P11J_E_BAD_REQUEST, "no JWT on standard input");
	}
	memmove(buf, s, (size_t)(e - s) + 1);
	*ret_jwt = buf;
	return 0;
}

int cli_parse_int(const char *opt, const char *s, long long min, long long max, long long *ret)
{
	char *end = NULL;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || isspace((unsigned char)*s) || v < min ||
	    v > max)
		return err_set(P11J_E_BAD_REQUEST, "%s takes a whole number from %lld to %lld, not '%s'",
			       opt, min, max, s);
	*ret = v;
	return 0;
}
