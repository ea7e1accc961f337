/* SPDX-License-Identifier: MIT */
/* The token endpoint's answer, parsed. */
#include "cli/xch-internal.h"
#include "cli/http.h"
#include "cli/kv.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jwa.h"

#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/evp.h>

/* Printable start of a body for messages: control characters as '.'. */
static void excerpt(const char *body, size_t len, char *out, size_t outlen)
{
	size_t n = 0;

	for (size_t i = 0; i < len && n + 4 < outlen; i++)
		out[n++] = (unsigned char)body[i] < 0x20 || body[i] == 0x7f ? '.' : body[i];
	if (len > n && n + 4 <= outlen) {
		memcpy(out + n, "...", 3);
		n += 3;
	}
	out[n] = '\0';
}

static int parse_expires(const json_t *e, int64_t *ret)
{
	if (e == NULL || json_is_null(e)) {
		*ret = -1;
		return 0;
	}
	if (json_is_integer(e) && json_integer_value(e) >= 0) {
		*ret = json_integer_value(e);
		return 0;
	}
	if (json_is_real(e) && json_real_value(e) >= 0 && json_real_value(e) < 1e12) {
		*ret = (int64_t)json_real_value(e);
		return 0;
	}
	if (json_is_string(e)) {
		const char *s = json_string_value(e);
		size_t n = strlen(s);

		if (n > 0 && n <= 12 && strspn(s, "0123456789") == n) {
			*ret = strtoll(s, NULL, 10);
			return 0;
		}
	}
	return err_set(P11J_E_BAD_RESPONSE,
		       "the token endpoint's expires_in is not a number of seconds");
}

int xch_parse_token(long status, const char *body, size_t len, xch_token *tok, char **ret_error)
{
	char ex[160];
	json_error_t jerr;
	json_t *j, *at, *err;
	int r;

	memset(tok, 0, sizeof(*tok));
	if (ret_error)
		*ret_error = NULL;
	excerpt(body, len, ex, sizeof(ex));
	j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (j == NULL || !json_is_object(j)) {
		json_decref(j);
		if (len == 0)
			return err_set(P11J_E_BAD_RESPONSE,
				       "the token endpoint answered HTTP %ld with an empty body",
				       status);
		return err_set(P11J_E_BAD_RESPONSE,
			       "the token endpoint answered HTTP %ld with a body that is not a "
			       "JSON object: '%s'",
			       status, ex);
	}
	err = json_object_get(j, "error");
	if (json_is_string(err)) {
		const char *d = json_string_value(json_object_get(j, "error_description"));
		const char *u = json_string_value(json_object_get(j, "error_uri"));
		char code[64];

		excerpt(json_string_value(err), json_string_length(err), code, sizeof(code));
		if (ret_error)
			*ret_error = strdup(json_string_value(err));
		r = err_set(P11J_E_OAUTH, "token endpoint said %s%s%s%s%s", code, d ? ": " : "",
			    d ? d : "", u ? " (see " : "", u ? u : "");
		if (u)
			snprintf(ex, sizeof(ex), "%s)", err_msg()), err_set(r, "%s", ex);
		json_decref(j);
		return r;
	}
	if (status < 200 || status > 299) {
		json_decref(j);
		return err_set(P11J_E_BAD_RESPONSE,
			       "the token endpoint answered HTTP %ld without an OAuth error: '%s'",
			       status, ex);
	}
	at = json_object_get(j, "access_token");
	if (!json_is_string(at) || json_string_length(at) == 0) {
		json_decref(j);
		return err_set(P11J_E_BAD_RESPONSE,
			       "the token endpoint's answer has no access_token (incomplete "
			       "response)");
	}
	if ((r = parse_expires(json_object_get(j, "expires_in"), &tok->expires_in)) < 0) {
		json_decref(j);
		return r;
	}
	tok->access_token = strdup(json_string_value(at));
	if (json_is_string(json_object_get(j, "token_type")))
		tok->token_type = strdup(json_string_value(json_object_get(j, "token_type")));
	if (json_is_string(json_object_get(j, "refresh_token")))
		tok->refresh_token = strdup(json_string_value(json_object_get(j, "refresh_token")));
	tok->json = j;
	if (tok->access_token == NULL) {
		xch_token_clear(tok);
		return err_nomem();
	}
	return 0;
}

void xch_token_clear(xch_token *tok)
{
	freezero_str(tok->access_token);
	free(tok->token_type);
	freezero_str(tok->refresh_token);
	json_decref(tok->json);
	memset(tok, 0, sizeof(*tok));
}
