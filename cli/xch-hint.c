/* SPDX-License-Identifier: MIT */
/* Hints for well-known OAuth errors, naming what the assertion carried. */
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

enum hint_kind { H_JTI, H_CONSENT, H_CLOCK, H_AUD, H_ISS, H_KEY, H_SCOPE, H_CLIENT };

/* First match wins; words are matched case-insensitively in the error code
 * and description. */
static const struct {
	const char *error; /* exact error code, or NULL for any */
	const char *words; /* '|'-separated */
	enum hint_kind kind;
} hint_rules[] = {
	{ NULL, "jti|replay|already used|used once|reuse", H_JTI },
	{ "consent_required", NULL, H_CONSENT },
	{ NULL, "consent|approved|not authorized for this|not authorized for any|"
		"unauthorized to retrieve|delegation",
	  H_CONSENT },
	{ NULL, "AADSTS700024|expired|exp|iat|nbf|clock|not yet valid|lifetime|in the future|"
		"too far|timestamp",
	  H_CLOCK },
	{ NULL, "aud|audience", H_AUD },
	{ "issuer_not_found", NULL, H_ISS },
	{ NULL, "issuer|iss", H_ISS },
	{ NULL, "AADSTS700027|no_valid_keys_or_signatures|kid|signature|key|jwks|thumbprint|"
		"certificate",
	  H_KEY },
	{ "invalid_scope", NULL, H_SCOPE },
	{ "invalid_client", NULL, H_CLIENT },
	{ "unauthorized_client", NULL, H_CLIENT },
};

/* w occurs in hay as a word: not inside another word, though a plural 's'
 * may follow ("key" matches "keys", not "monkey" or "keyboard"). */
static bool word_at(const char *hay, const char *w)
{
	size_t n = strlen(w);

	for (const char *h = strcasestr(hay, w); h; h = strcasestr(h + 1, w)) {
		const char *after = h + n;

		if (h > hay && isalnum((unsigned char)h[-1]) && isalnum((unsigned char)w[0]))
			continue;
		if (*after == 's' || *after == 'S')
			after++;
		if (isalnum((unsigned char)*after) && isalnum((unsigned char)w[n - 1]))
			continue;
		return true;
	}
	return false;
}

static bool has_word(const char *hay, const char *words)
{
	char w[64];

	if (hay == NULL)
		return false;
	for (const char *p = words; *p;) {
		const char *e = strchr(p, '|');
		size_t l = e ? (size_t)(e - p) : strlen(p);

		snprintf(w, sizeof(w), "%.*s", (int)l, p);
		if (w[0] && word_at(hay, w))
			return true;
		if (!e)
			break;
		p = e + 1;
	}
	return false;
}

static const char *jstr(const json_t *o, const char *k, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s ? s : dflt;
}

const char *xch_hint(const xch_req *req, const char *error, const char *description,
		     const json_t *header, const json_t *claims, int64_t now, char *buf,
		     size_t len)
{
	const preset *p = req->preset;
	int kind = -1;

	for (size_t i = 0; i < ARRAY_SIZE(hint_rules) && kind < 0; i++) {
		if (hint_rules[i].error && (error == NULL || strcmp(error, hint_rules[i].error)))
			continue;
		if (hint_rules[i].words && !has_word(description, hint_rules[i].words))
			continue;
		kind = (int)hint_rules[i].kind;
	}
	switch (kind) {
	case H_JTI:
		snprintf(buf, len,
			 "the assertion's jti '%s' was refused as already used: every assertion "
			 "needs a fresh jti (do not fix it with --claim jti=...)",
			 jstr(claims, "jti", "?"));
		return buf;
	case H_CONSENT:
		return "the user (or an admin) must grant consent to this client first: "
		       "DocuSign's consent URL, Salesforce's pre-approved profiles, Google's "
		       "domain-wide delegation";
	case H_CLOCK: {
		json_int_t iat = json_integer_value(json_object_get(claims, "iat"));
		json_int_t exp = json_integer_value(json_object_get(claims, "exp"));
		int n = snprintf(buf, len,
				 "check this host's clock and the lifetime: the assertion had "
				 "iat=%lld, exp=%lld (%lld s) and this host's time is %lld",
				 (long long)iat, (long long)exp, (long long)(exp - iat),
				 (long long)now);

		if (p && p->max_lifetime && n > 0 && (size_t)n < len)
			snprintf(buf + n, len - (size_t)n, "; %s accepts at most %d s", p->name,
				 p->max_lifetime);
		return buf;
	}
	case H_AUD:
		snprintf(buf, len,
			 "the assertion's aud was '%s'; the server compares it as an exact string "
			 "(scheme, host, path, trailing '/'): set --aud to the value the provider "
			 "documents",
			 jstr(claims, "aud", "(none)"));
		return buf;
	case H_ISS:
		snprintf(buf, len,
			 "iss was '%s': it must be the client id (integration key, consumer key, "
			 "service account) registered at the provider",
			 jstr(claims, "iss", "(none)"));
		return buf;
	case H_KEY:
	case H_CLIENT:
		snprintf(buf, len,
			 "%sthe assertion was signed by key '%s' with %s, kid '%s': register that "
			 "key at the provider ('p11jwt jwks --key %s --alg %s'); also check iss/sub "
			 "'%s' and aud '%s'",
			 kind == H_CLIENT ? "the server could not authenticate the client. " : "",
			 req->key, jstr(header, "alg", "?"), jstr(header, "kid", "(none)"), req->key,
			 jstr(header, "alg", "?"), jstr(claims, "iss", "(none)"),
			 jstr(claims, "aud", "(none)"));
		return buf;
	case H_SCOPE:
		snprintf(buf, len, "the scope '%s' was refused: use one granted to this client",
			 req->scope ? req->scope : "(none)");
		return buf;
	default:
		return NULL;
	}
}
