/* SPDX-License-Identifier: MIT */
/*
 * p11jwt dpop: one DPoP proof (RFC 9449) from the agent, for curl and other
 * clients. The access token, when there is one, is read from a file or
 * standard input (never from argv), hashed here into ath and wiped: the
 * agent never receives it. In p11jwt-cmds.so, because SHA-256 needs
 * libcrypto.
 */
#include "cli/cli.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/dpop.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* An access token is a bearer credential of a few hundred bytes to a few
 * KiB; anything over this is not one. */
#define DPOP_TOKEN_MAX (64 * 1024)

/* The token from path, or standard input for "-": surrounding whitespace
 * dropped, none inside, not empty. *ret is wiped and freed by the caller. */
static int read_token(const char *path, char **ret, size_t *ret_len)
{
	char *buf = NULL;
	size_t len = 0, s = 0, e;
	int r;

	if (strcmp(path, "-") != 0) {
		if ((r = util_read_file(path, DPOP_TOKEN_MAX, false, &buf, &len)) < 0)
			return err_set(r, "--token-file %s: %s", path, err_msg());
	} else {
		buf = malloc(DPOP_TOKEN_MAX + 2);
		if (buf == NULL)
			return err_nomem();
		while (len <= DPOP_TOKEN_MAX) {
			size_t n = fread(buf + len, 1, DPOP_TOKEN_MAX + 1 - len, stdin);

			if (n == 0)
				break;
			len += n;
		}
		if (ferror(stdin)) {
			freezero_buf(buf, DPOP_TOKEN_MAX + 2);
			return err_set(P11J_E_BAD_REQUEST, "reading the access token from standard "
				       "input: %s", strerror(errno));
		}
		if (len > DPOP_TOKEN_MAX) {
			freezero_buf(buf, DPOP_TOKEN_MAX + 2);
			return err_set(P11J_E_REQUEST_TOO_LARGE, "standard input holds more than %d "
				       "bytes: not an access token", DPOP_TOKEN_MAX);
		}
		buf[len] = '\0';
	}
	while (s < len && isspace((unsigned char)buf[s]))
		s++;
	for (e = len; e > s && isspace((unsigned char)buf[e - 1]); e--)
		;
	for (size_t i = s; i < e; i++)
		if (isspace((unsigned char)buf[i]) || buf[i] == '\0') {
			util_wipe(buf, len);
			free(buf);
			return err_set(P11J_E_BAD_REQUEST, "the access token holds a blank or a NUL "
				       "byte: give the token alone (one line)");
		}
	if (e == s) {
		util_wipe(buf, len);
		free(buf);
		return err_set(P11J_E_BAD_REQUEST, "no access token in %s",
			       strcmp(path, "-") == 0 ? "standard input" : path);
	}
	memmove(buf, buf + s, e - s);
	util_wipe(buf + (e - s), len - (e - s));
	buf[e - s] = '\0';
	*ret = buf;
	*ret_len = e - s;
	return 0;
}

int cmd_dpop(cli_ctx *ctx, int argc, char **argv)
{
	const char *name = NULL, *key = NULL, *alg = NULL, *htm = NULL, *htu = NULL;
	const char *nonce = NULL, *token_file = NULL;
	char ath[DPOP_ATH_LEN + 1];
	char *token = NULL;
	size_t token_len = 0;
	json_t *req = NULL, *resp = NULL, *out;
	const char *jwt;
	bool json = false;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "dpop", argc, argv, &name, &st)) == CLI_OPT_NEXT) {
		if (strcmp(name, "key") == 0)
			key = optarg;
		else if (strcmp(name, "alg") == 0)
			alg = optarg;
		else if (strcmp(name, "htm") == 0)
			htm = optarg;
		else if (strcmp(name, "htu") == 0)
			htu = optarg;
		else if (strcmp(name, "nonce") == 0)
			nonce = optarg;
		else if (strcmp(name, "token-file") == 0)
			token_file = optarg;
		else if (strcmp(name, "json") == 0)
			json = true;
	}
	if (r == CLI_OPT_EXIT)
		return st;
	if (optind != argc)
		return cli_usage_error("dpop", "unexpected argument '%s' (the access token is read "
				       "with --token-file FILE or --token-file -, never from the "
				       "command line)", argv[optind]);
	if (key == NULL || htm == NULL || htu == NULL)
		return cli_usage_error("dpop", "--key, --htm and --htu are required");
	if (token_file != NULL) {
		if ((r = read_token(token_file, &token, &token_len)) < 0)
			return cli_fail(r);
		r = dpop_ath(token, token_len, ath);
		util_wipe(token, token_len);
		free(token);
		if (r < 0)
			return cli_fail(r);
	}
	req = json_pack("{s:s,s:s,s:s,s:s}", "op", "dpop", "key", key, "htm", htm, "htu", htu);
	if (req == NULL ||
	    (alg != NULL && json_object_set_new(req, "alg", json_string(alg)) < 0) ||
	    (nonce != NULL && json_object_set_new(req, "nonce", json_string(nonce)) < 0) ||
	    (token_file != NULL && json_object_set_new(req, "ath", json_string(ath)) < 0)) {
		json_decref(req);
		return cli_fail(err_set(P11J_E_BAD_REQUEST, "the options must be valid UTF-8"));
	}
	r = cli_call(ctx, req, &resp); /* consumes req */
	if (r != 0)
		return r;
	jwt = json_string_value(json_object_get(resp, "jwt"));
	if (jwt == NULL) {
		json_decref(resp);
		return cli_fail(err_set(P11J_E_PROTOCOL, "the agent's answer has no jwt"));
	}
	if (json) {
		out = json_pack("{s:O,s:O?,s:O?,s:O?,s:O?,s:O?}", "jwt", json_object_get(resp, "jwt"),
				"jkt", json_object_get(resp, "jkt"), "alg",
				json_object_get(resp, "alg"), "htu", json_object_get(resp, "htu"),
				"jti", json_object_get(resp, "jti"), "iat",
				json_object_get(resp, "iat"));
		r = out ? cli_print_json(out) : cli_fail(err_nomem());
		json_decref(out);
	} else {
		printf("%s\n", jwt);
		r = 0;
	}
	json_decref(resp);
	return r;
}
