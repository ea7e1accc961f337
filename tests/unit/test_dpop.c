/* SPDX-License-Identifier: MIT */
/* DPoP proof pieces (jose/dpop.c): htu normalisation, field checks, ath,
 * jti, the header and the claims. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

#include "common/err.h"
#include "common/util.h"
#include "jose/b64url.h"
#include "jose/dpop.h"
#include "jose/jwk.h"

static void htu_ok(const char *in, const char *want)
{
	char *out = NULL;

	if (dpop_htu_normalise(in, strlen(in), &out) != 0)
		fail_msg("'%s' refused: %s", in, err_msg());
	if (strcmp(out, want) != 0)
		fail_msg("'%s' -> '%s', want '%s'", in, out, want);
	free(out);
}

static void htu_bad(const char *in, const char *msg_part)
{
	char *out = NULL;
	int r = dpop_htu_normalise(in, strlen(in), &out);

	if (r != P11J_E_BAD_REQUEST)
		fail_msg("'%s' accepted as '%s'", in, out ? out : "?");
	if (msg_part != NULL && strstr(err_msg(), msg_part) == NULL)
		fail_msg("'%s': message '%s' lacks '%s'", in, err_msg(), msg_part);
	assert_null(out);
}

static void test_htu_normalise(void **state)
{
	static const char *const table[][2] = {
		{ "https://server.example.com/token", "https://server.example.com/token" },
		/* case of scheme and host; the path keeps its case */
		{ "HTTPS://Server.EXAMPLE.com/Token", "https://server.example.com/Token" },
		{ "HtTp://LOCALHOST/A/b", "http://localhost/A/b" },
		/* default ports dropped, others kept (without leading zeros) */
		{ "https://a.example:443/x", "https://a.example/x" },
		{ "http://a.example:80/x", "http://a.example/x" },
		{ "https://a.example:80/x", "https://a.example:80/x" },
		{ "http://a.example:443/x", "http://a.example:443/x" },
		{ "https://a.example:8443/x", "https://a.example:8443/x" },
		{ "https://a.example:0443/x", "https://a.example/x" },
		{ "https://a.example:08443/x", "https://a.example:8443/x" },
		{ "https://a.example:/x", "https://a.example/x" },
		/* query and fragment dropped */
		{ "https://a.example/x?y=1&z=2", "https://a.example/x" },
		{ "https://a.example/x#frag", "https://a.example/x" },
		{ "https://a.example/x?q#f", "https://a.example/x" },
		{ "https://a.example?q=1", "https://a.example/" },
		{ "https://a.example#f", "https://a.example/" },
		/* empty path is "/" */
		{ "https://a.example", "https://a.example/" },
		{ "https://a.example:8443", "https://a.example:8443/" },
		/* IP literals */
		{ "http://127.0.0.1:8080/t", "http://127.0.0.1:8080/t" },
		{ "http://[::1]:80/t", "http://[::1]/t" },
		{ "https://[2001:DB8::1]/t", "https://[2001:db8::1]/t" },
		/* percent-encodings: upper-case hex, unreserved ones decoded */
		{ "https://a.example/%7euser/%2f%41", "https://a.example/~user/%2FA" },
		{ "https://a.example/a%20b", "https://a.example/a%20b" },
		{ "https://%41.example/", "https://a.example/" },
		/* sub-delims, ':' and '@' in the path are kept */
		{ "https://a.example/a:b@c!$&'()*+,;=", "https://a.example/a:b@c!$&'()*+,;=" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		htu_ok(table[i][0], table[i][1]);
}

static void test_htu_refused(void **state)
{
	char *big;

	(void)state;
	htu_bad("", "empty");
	htu_bad("/token", "absolute");
	htu_bad("server.example.com/token", "absolute");
	htu_bad("ftp://a.example/x", "not http or https");
	htu_bad("file:///etc/passwd", "not http or https");
	htu_bad("https:/a.example/x", "no host");
	htu_bad("https://", "empty host");
	htu_bad("https:///x", "empty host");
	htu_bad("https://user@a.example/x", "userinfo");
	htu_bad("https://user:pw@a.example/x", "userinfo");
	htu_bad("https://a.example:99999/x", "65535");
	htu_bad("https://a.example:0/x", "port 0");
	htu_bad("https://a.example:8x/x", "not a number");
	htu_bad("https://a.example/a b", "space");
	htu_bad("https://a.example/a\tb", "control");
	htu_bad("https://a.example/\xc3\xa9", "non-ASCII");
	htu_bad("https://a.example/a%zz", "two hex digits");
	htu_bad("https://a.example/a%4", "two hex digits");
	htu_bad("https://a.example/a\"b", "percent-encoded");
	htu_bad("https://a.example/a<b>", "percent-encoded");
	htu_bad("https://a.exa^mple/", "bad character");
	htu_bad("https://[::1/x", "IPv6");
	htu_bad("https://[]/x", "IPv6");
	htu_bad("https://[::g]/x", "IPv6");
	htu_bad("https://[::1]x/", "after the host");
	big = malloc(DPOP_MAX_HTU + 2);
	assert_non_null(big);
	memcpy(big, "https://a.example/", 18);
	memset(big + 18, 'a', DPOP_MAX_HTU + 1 - 18);
	big[DPOP_MAX_HTU + 1] = '\0';
	htu_bad(big, "at most");
	big[DPOP_MAX_HTU] = '\0'; /* exactly the limit */
	htu_ok(big, big);
	free(big);
}

static void test_htm(void **state)
{
	static const char *const good[] = { "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
					    "HEAD", "M-SEARCH", "X_CUSTOM!", NULL };
	static const char *const bad[] = { "", "post", "Get", "PO ST", "PO\"ST", "GE(T", "POST\n",
					   "\xc3\xa9", "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG", NULL };

	(void)state;
	for (const char *const *m = good; *m; m++)
		if (dpop_htm_check(*m, strlen(*m)) != 0)
			fail_msg("htm '%s' refused: %s", *m, err_msg());
	for (const char *const *m = bad; *m; m++)
		if (dpop_htm_check(*m, strlen(*m)) != P11J_E_BAD_REQUEST)
			fail_msg("htm '%s' accepted", *m);
	assert_int_equal(dpop_htm_check("post", 4), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "case-sensitive"));
	/* a NUL inside counts as a bad byte */
	assert_int_equal(dpop_htm_check("GE\0T", 4), P11J_E_BAD_REQUEST);
}

static void test_nonce(void **state)
{
	char big[DPOP_MAX_NONCE + 2];

	(void)state;
	assert_int_equal(dpop_nonce_check("eyJ7S_zG.eyJH0-Z.HX4w-7v", 24), 0);
	assert_int_equal(dpop_nonce_check("!#[]~", 5), 0);
	assert_int_equal(dpop_nonce_check("", 0), P11J_E_BAD_REQUEST);
	assert_int_equal(dpop_nonce_check("a b", 3), P11J_E_BAD_REQUEST);
	assert_int_equal(dpop_nonce_check("a\"b", 3), P11J_E_BAD_REQUEST);
	assert_int_equal(dpop_nonce_check("a\\b", 3), P11J_E_BAD_REQUEST);
	assert_int_equal(dpop_nonce_check("a\nb", 3), P11J_E_BAD_REQUEST);
	assert_int_equal(dpop_nonce_check("\xc3\xa9", 2), P11J_E_BAD_REQUEST);
	memset(big, 'n', sizeof(big));
	assert_int_equal(dpop_nonce_check(big, DPOP_MAX_NONCE), 0);
	assert_int_equal(dpop_nonce_check(big, DPOP_MAX_NONCE + 1), P11J_E_BAD_REQUEST);
}

static void test_ath(void **state)
{
	/* RFC 9449 section 7.1's example: the access token and its ath */
	static const char token[] = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
	static const char want[] = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo";
	char ath[DPOP_ATH_LEN + 1];

	(void)state;
	assert_int_equal(dpop_ath(token, strlen(token), ath), 0);
	assert_string_equal(ath, want);
	assert_int_equal(dpop_ath_check(ath, strlen(ath)), 0);
	assert_int_equal(dpop_ath_check(ath, 42), P11J_E_BAD_REQUEST);
	assert_int_equal(dpop_ath_check("", 0), P11J_E_BAD_REQUEST);
	/* padding, the standard alphabet, unused bits set */
	assert_int_equal(dpop_ath_check("fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQE=", 43),
			 P11J_E_BAD_REQUEST);
	assert_int_equal(dpop_ath_check("fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQ+o", 43),
			 P11J_E_BAD_REQUEST);
	assert_int_equal(dpop_ath_check("fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEp", 43),
			 P11J_E_BAD_REQUEST);
	/* the in-place check agrees with the decoder, for every byte in every
	 * position class: the first, a middle one, the last */
	for (int c = 0; c < 256; c++) {
		for (size_t pos = 0; pos < DPOP_ATH_LEN; pos += DPOP_ATH_LEN / 2) {
			char t[DPOP_ATH_LEN + 1];
			uint8_t *dec = NULL;
			size_t n = 0;
			bool ok;

			memcpy(t, want, sizeof(t));
			t[pos] = (char)c;
			ok = b64u_decode(t, DPOP_ATH_LEN, &dec, &n) == 0 && n == 32;
			free(dec);
			if ((dpop_ath_check(t, DPOP_ATH_LEN) == 0) != ok)
				fail_msg("byte %d at %zu: check says %s, the decoder %s", c, pos,
					 ok ? "bad" : "good", ok ? "good" : "bad");
		}
	}
}

static void test_jti(void **state)
{
	char a[DPOP_JTI_LEN + 1], b[DPOP_JTI_LEN + 1];
	uint8_t *raw = NULL;
	size_t n = 0;

	(void)state;
	assert_int_equal(dpop_jti(a), 0);
	assert_int_equal(dpop_jti(b), 0);
	assert_int_equal(strlen(a), DPOP_JTI_LEN);
	assert_string_not_equal(a, b);
	assert_int_equal(b64u_decode(a, strlen(a), &raw, &n), 0);
	assert_true(n * 8 >= 128);
	free(raw);
}

static void test_public_jwk_and_header(void **state)
{
	EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	json_t *jwk = NULL, *pub, *h;
	char *hj = NULL;
	size_t hl = 0;
	const char *k;
	json_t *v;

	(void)state;
	assert_non_null(pk);
	assert_int_equal(jwk_from_pkey(pk, &jwk), 0);
	/* what a keyring's JWK carries besides the key */
	json_object_set_new(jwk, "kid", json_string("kid-1"));
	json_object_set_new(jwk, "alg", json_string("ES256"));
	json_object_set_new(jwk, "use", json_string("sig"));
	json_object_set_new(jwk, "d", json_string("private"));
	pub = dpop_public_jwk(jwk);
	assert_int_equal(json_object_size(pub), 4);
	json_object_foreach(pub, k, v)
		assert_true(strcmp(k, "kty") == 0 || strcmp(k, "crv") == 0 || strcmp(k, "x") == 0 ||
			    strcmp(k, "y") == 0);
	assert_int_equal(dpop_header(JWA_ES256, jwk, &hj, &hl), 0);
	assert_int_equal(strlen(hj), hl);
	assert_true(strncmp(hj, "{\"typ\":\"dpop+jwt\",\"alg\":\"ES256\",\"jwk\":{", 39) == 0);
	h = json_loads(hj, 0, NULL);
	assert_non_null(h);
	assert_true(json_equal(json_object_get(h, "jwk"), pub));
	assert_int_equal(json_object_size(h), 3);
	json_decref(h);
	free(hj);
	json_decref(pub);
	json_decref(jwk);
	EVP_PKEY_free(pk);
}

static void test_claims(void **state)
{
	dpop_claims_in in = { .jti = "j1", .htm = "POST", .htu = "https://a.example/t",
			      .iat = 1700000000 };
	char *c = NULL;
	size_t cl = 0;

	(void)state;
	assert_int_equal(dpop_claims(&in, &c, &cl), 0);
	assert_string_equal(c, "{\"jti\":\"j1\",\"htm\":\"POST\",\"htu\":\"https://a.example/t\","
			       "\"iat\":1700000000}");
	assert_int_equal(cl, strlen(c));
	freezero_str(c);
	/* nonce and ath only when given, in that order */
	in.nonce = "n-1";
	assert_int_equal(dpop_claims(&in, &c, &cl), 0);
	assert_non_null(strstr(c, ",\"iat\":1700000000,\"nonce\":\"n-1\"}"));
	assert_null(strstr(c, "ath"));
	freezero_str(c);
	in.nonce = NULL;
	in.ath = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo";
	assert_int_equal(dpop_claims(&in, &c, &cl), 0);
	assert_non_null(strstr(c, ",\"ath\":\"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo\"}"));
	assert_null(strstr(c, "nonce"));
	freezero_str(c);
	in.nonce = "n-2";
	assert_int_equal(dpop_claims(&in, &c, &cl), 0);
	assert_non_null(strstr(c, "\"nonce\":\"n-2\",\"ath\":"));
	freezero_str(c);
	in.jti = NULL;
	assert_int_equal(dpop_claims(&in, &c, &cl), P11J_E_BAD_REQUEST);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_htu_normalise),
		cmocka_unit_test(test_htu_refused),
		cmocka_unit_test(test_htm),
		cmocka_unit_test(test_nonce),
		cmocka_unit_test(test_ath),
		cmocka_unit_test(test_jti),
		cmocka_unit_test(test_public_jwk_and_header),
		cmocka_unit_test(test_claims),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
