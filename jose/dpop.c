/* SPDX-License-Identifier: MIT */
#include "jose/dpop.h"
#include "jose/b64url.h"
#include "jose/jsonfast.h"
#include "common/err.h"
#include "common/util.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

static bool is_alpha(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static bool is_hex(int c)
{
	return is_digit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int upper(int c)
{
	return c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c;
}

static int hexval(int c)
{
	return is_digit(c) ? c - '0' : lower(c) - 'a' + 10;
}

/* RFC 3986 2.3 */
static bool is_unreserved(int c)
{
	return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static bool is_subdelim(int c)
{
	return c != '\0' && strchr("!$&'()*+,;=", c) != NULL;
}

/* Copy the three bytes of a percent-encoding at s (checked) to o: the
 * character itself when it is unreserved (6.2.2.2), else %XX in upper case
 * (6.2.2.1). Returns the bytes written. */
static size_t put_pct(const char *s, char *o)
{
	int c = hexval((unsigned char)s[1]) * 16 + hexval((unsigned char)s[2]);

	if (is_unreserved(c)) {
		o[0] = (char)c;
		return 1;
	}
	o[0] = '%';
	o[1] = (char)upper((unsigned char)s[1]);
	o[2] = (char)upper((unsigned char)s[2]);
	return 3;
}

int dpop_htu_normalise(const char *url, size_t len, char **ret)
{
	const char *p, *end, *auth, *aend, *host, *hend, *port = NULL;
	size_t slen, i;
	bool https;
	unsigned long pn = 0;
	char *out = NULL, *o;

	if (len == 0)
		return err_set(P11J_E_BAD_REQUEST, "htu is empty; give the request's URL");
	if (len > DPOP_MAX_HTU)
		return err_set(P11J_E_BAD_REQUEST, "htu is %zu bytes; at most %d", len, DPOP_MAX_HTU);
	for (i = 0; i < len; i++)
		if ((unsigned char)url[i] < 0x21 || (unsigned char)url[i] > 0x7E)
			return err_set(P11J_E_BAD_REQUEST, "htu holds a %s at byte %zu; a URL is "
				       "printable ASCII (percent-encode the rest)",
				       url[i] == ' ' ? "space" : "control or non-ASCII byte", i);
	end = url + len;
	/* scheme */
	for (p = url; p < end && (is_alpha(*p) || is_digit(*p) || *p == '+' || *p == '-' ||
				   *p == '.'); p++)
		;
	slen = (size_t)(p - url);
	if (p == end || *p != ':' || slen == 0 || !is_alpha(url[0]))
		return err_set(P11J_E_BAD_REQUEST, "htu '%.64s' is not an absolute URL (http:// or "
			       "https://)", url);
	if (slen == 4 && strncasecmp(url, "http", 4) == 0)
		https = false;
	else if (slen == 5 && strncasecmp(url, "https", 5) == 0)
		https = true;
	else
		return err_set(P11J_E_BAD_REQUEST, "htu scheme '%.*s' is not http or https",
			       (int)(slen > 16 ? 16 : slen), url);
	p++;
	if (end - p < 2 || p[0] != '/' || p[1] != '/')
		return err_set(P11J_E_BAD_REQUEST, "htu '%.64s' has no host (expected %s://HOST/...)",
			       url, https ? "https" : "http");
	auth = p + 2;
	for (aend = auth; aend < end && *aend != '/' && *aend != '?' && *aend != '#'; aend++)
		if (*aend == '@')
			return err_set(P11J_E_BAD_REQUEST, "htu has userinfo (user@host); a DPoP "
				       "proof names no credentials");
	/* host: an IP literal in brackets, or a name / IPv4 address */
	host = auth;
	if (host < aend && *host == '[') {
		for (hend = host + 1; hend < aend && *hend != ']'; hend++)
			if (!is_hex(*hend) && *hend != ':' && *hend != '.')
				return err_set(P11J_E_BAD_REQUEST, "htu has a bad IPv6 literal");
		if (hend == aend || hend == host + 1)
			return err_set(P11J_E_BAD_REQUEST, "htu has a bad IPv6 literal");
		hend++;
	} else {
		for (hend = host; hend < aend && *hend != ':'; hend++)
			if (!is_unreserved(*hend) && !is_subdelim(*hend) &&
			    !(*hend == '%' && aend - hend >= 3 && is_hex(hend[1]) && is_hex(hend[2])))
				return err_set(P11J_E_BAD_REQUEST, "htu host has a bad character '%c'",
					       *hend);
	}
	if (hend == host)
		return err_set(P11J_E_BAD_REQUEST, "htu '%.64s' has an empty host", url);
	if (hend < aend) {
		if (*hend != ':')
			return err_set(P11J_E_BAD_REQUEST, "htu has a bad character after the host");
		port = hend + 1;
		if (port == aend) {
			port = NULL; /* "host:" is "host" (RFC 3986 6.2.3) */
		} else {
			for (const char *q = port; q < aend; q++) {
				if (!is_digit(*q))
					return err_set(P11J_E_BAD_REQUEST, "htu port '%.*s' is not a "
						       "number", (int)(aend - port > 8 ? 8 : aend - port),
						       port);
				pn = pn * 10 + (unsigned long)(*q - '0');
				if (pn > 65535)
					return err_set(P11J_E_BAD_REQUEST, "htu port is over 65535");
			}
			if (pn == 0)
				return err_set(P11J_E_BAD_REQUEST, "htu port 0 is not a port");
			if (pn == (https ? 443u : 80u))
				port = NULL;
		}
	}
	/* the result is never longer than the input plus "/" */
	out = malloc(len + 2);
	if (out == NULL)
		return err_nomem();
	o = out;
	memcpy(o, https ? "https://" : "http://", https ? 8 : 7);
	o += https ? 8 : 7;
	for (const char *q = host; q < hend; q++) {
		if (*q == '%') {
			size_t n = put_pct(q, o);

			/* a decoded unreserved letter is lower-cased like the rest */
			if (n == 1)
				o[0] = (char)lower((unsigned char)o[0]);
			o += n;
			q += 2;
			continue;
		}
		*o++ = (char)lower(*q);
	}
	if (port != NULL)
		o += sprintf(o, ":%lu", pn);
	/* path, up to the query or fragment (both dropped) */
	p = aend;
	if (p == end || *p != '/')
		*o++ = '/';
	for (; p < end && *p != '?' && *p != '#'; p++) {
		if (*p == '%') {
			if (end - p < 3 || !is_hex(p[1]) || !is_hex(p[2])) {
				free(out);
				return err_set(P11J_E_BAD_REQUEST, "htu path has a '%%' that is not "
					       "followed by two hex digits");
			}
			o += put_pct(p, o);
			p += 2;
			continue;
		}
		if (!is_unreserved(*p) && !is_subdelim(*p) && *p != ':' && *p != '@' && *p != '/') {
			free(out);
			return err_set(P11J_E_BAD_REQUEST, "htu path has a character that must be "
				       "percent-encoded: '%c'", *p);
		}
		*o++ = *p;
	}
	*o = '\0';
	*ret = out;
	return 0;
}

int dpop_htm_check(const char *m, size_t len)
{
	if (len == 0 || len > DPOP_MAX_HTM)
		return err_set(P11J_E_BAD_REQUEST, "htm must be an HTTP method of 1 to %d characters",
			       DPOP_MAX_HTM);
	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)m[i];

		if (c >= 'a' && c <= 'z')
			return err_set(P11J_E_BAD_REQUEST, "htm '%.32s' has lower-case letters; "
				       "methods are case-sensitive (GET, POST, ...)", m);
		/* RFC 9110 5.6.2 tchar */
		if (!is_alpha(c) && !is_digit(c) && (c == '\0' || !strchr("!#$%&'*+-.^_`|~", c)))
			return err_set(P11J_E_BAD_REQUEST, "htm is not an HTTP method token (a "
				       "character that is not allowed at byte %zu)", i);
	}
	return 0;
}

int dpop_nonce_check(const char *s, size_t len)
{
	if (len == 0 || len > DPOP_MAX_NONCE)
		return err_set(P11J_E_BAD_REQUEST, "nonce must be 1 to %d characters, not %zu",
			       DPOP_MAX_NONCE, len);
	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)s[i];

		/* NQCHAR = %x21 / %x23-5B / %x5D-7E */
		if (c < 0x21 || c > 0x7E || c == '"' || c == '\\')
			return err_set(P11J_E_BAD_REQUEST, "nonce has a character that is not allowed "
				       "at byte %zu (printable ASCII but '\"' and '\\')", i);
	}
	return 0;
}

int dpop_ath_check(const char *s, size_t len)
{
	static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
				    "0123456789-_";
	const char *last;

	if (len != DPOP_ATH_LEN)
		return err_set(P11J_E_BAD_REQUEST, "ath must be the %d-character base64url SHA-256 "
			       "of the access token, not %zu characters", DPOP_ATH_LEN, len);
	/* checked in place (no decoding copy): 43 characters hold 258 bits,
	 * so the last one's two low bits are spare and must be zero, the
	 * rule b64u_decode() applies */
	for (size_t i = 0; i < len; i++)
		if (s[i] == '\0' || strchr(alpha, s[i]) == NULL)
			return err_set(P11J_E_BAD_REQUEST, "ath is not base64url of a SHA-256 hash");
	last = strchr(alpha, s[len - 1]);
	if (((last - alpha) & 3) != 0)
		return err_set(P11J_E_BAD_REQUEST, "ath is not base64url of a SHA-256 hash");
	return 0;
}

int dpop_ath(const char *token, size_t len, char out[DPOP_ATH_LEN + 1])
{
	uint8_t md[32];
	unsigned int mdlen = 0;

	if (EVP_Digest(token, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
		return err_set_ossl(P11J_E_CRYPTO, "SHA-256");
	b64u_encode_to(md, sizeof(md), out);
	return 0;
}

int dpop_jti(char out[DPOP_JTI_LEN + 1])
{
	uint8_t rnd[DPOP_JTI_BYTES];
	int r;

	/* the per-thread pool JWT ids come from: one DRBG call per 256 */
	if ((r = util_random(rnd, sizeof(rnd))) < 0)
		return r;
	b64u_encode_to(rnd, sizeof(rnd), out);
	OPENSSL_cleanse(rnd, sizeof(rnd));
	return 0;
}

json_t *dpop_public_jwk(const json_t *jwk)
{
	static const char *const pub[] = { "kty", "crv", "x", "y", "n", "e", NULL };
	json_t *o = json_object(), *v;
	const char *k;

	if (o == NULL)
		return NULL;
	json_object_foreach((json_t *)jwk, k, v) {
		for (const char *const *m = pub; *m != NULL; m++)
			if (strcmp(*m, k) == 0) {
				if (json_object_set(o, k, v) < 0) {
					json_decref(o);
					return NULL;
				}
				break;
			}
	}
	return o;
}

int dpop_header(jwa_alg alg, const json_t *jwk, char **ret, size_t *ret_len)
{
	json_t *pub = dpop_public_jwk(jwk);
	json_t *h = pub ? json_pack("{s:s,s:s,s:o}", "typ", DPOP_TYP, "alg", jwa_name(alg), "jwk",
				    pub) : NULL;
	int r;

	if (h == NULL)
		return err_nomem();
	r = jsonf_dumps(h, ret, ret_len);
	json_decref(h);
	return r;
}

static int put_member(jsonf_buf *b, const char *name, const char *v)
{
	int r;

	if ((r = jsonf_raw(b, ",\"", 2)) < 0 || (r = jsonf_str(b, name)) < 0 ||
	    (r = jsonf_raw(b, "\":", 2)) < 0)
		return r;
	return jsonf_quote(b, v, strlen(v));
}

int dpop_claims(const dpop_claims_in *in, char **ret, size_t *ret_len)
{
	jsonf_buf b = { 0 };
	char *s;
	int r;

	if (in->jti == NULL || in->htm == NULL || in->htu == NULL)
		return err_set(P11J_E_BAD_REQUEST, "a DPoP proof needs jti, htm and htu");
	if ((r = jsonf_reserve(&b, 256)) < 0 || (r = jsonf_str(&b, "{\"jti\":")) < 0 ||
	    (r = jsonf_quote(&b, in->jti, strlen(in->jti))) < 0 ||
	    (r = put_member(&b, "htm", in->htm)) < 0 || (r = put_member(&b, "htu", in->htu)) < 0 ||
	    (r = jsonf_str(&b, ",\"iat\":")) < 0 || (r = jsonf_int(&b, in->iat)) < 0 ||
	    (in->nonce != NULL && (r = put_member(&b, "nonce", in->nonce)) < 0) ||
	    (in->ath != NULL && (r = put_member(&b, "ath", in->ath)) < 0) ||
	    (r = jsonf_raw(&b, "}", 1)) < 0)
		goto fail;
	if ((s = jsonf_take(&b, ret_len)) == NULL) {
		r = err_nomem();
		goto fail;
	}
	*ret = s;
	return 0;
fail:
	jsonf_free(&b);
	if (r == P11J_E_NOMEM)
		return err_nomem();
	return err_set(r, "a DPoP claim is not valid UTF-8");
}
