/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>

#include "common/err.h"
#include "common/util.h"
#include "jose/b64url.h"
#include "jose/jwa.h"
#include "jose/jwk.h"

static EVP_PKEY *keygen(jwa_keykind kind)
{
	switch (kind) {
	case KEYKIND_RSA:
		return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	case KEYKIND_P256:
		return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	case KEYKIND_P384:
		return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	case KEYKIND_P521:
		return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
	case KEYKIND_ED25519:
		return EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	default:
		return NULL;
	}
}

/* Self-signed Ed25519 certificate made with openssl req at authoring time; the
 * expected values came from openssl dgst -binary | basenc --base64url. */
static const uint8_t cert_der[] = {
	0x30, 0x82, 0x01, 0x2c, 0x30, 0x81, 0xdf, 0xa0, 0x03, 0x02, 0x01, 0x02,
	0x02, 0x14, 0x12, 0x9c, 0xea, 0xdc, 0x78, 0xf2, 0x6c, 0xa1, 0xd5, 0x5c,
	0x6c, 0x11, 0xa7, 0x59, 0x6f, 0x04, 0xdb, 0xb6, 0xa2, 0xa7, 0x30, 0x05,
	0x06, 0x03, 0x2b, 0x65, 0x70, 0x30, 0x0c, 0x31, 0x0a, 0x30, 0x08, 0x06,
	0x03, 0x55, 0x04, 0x03, 0x0c, 0x01, 0x74, 0x30, 0x1e, 0x17, 0x0d, 0x32,
	0x36, 0x31, 0x31, 0x32, 0x33, 0x30, 0x35, 0x31, 0x38, 0x32, 0x38, 0x5a,
	0x17, 0x0d, 0x32, 0x36, 0x31, 0x31, 0x32, 0x34, 0x30, 0x35, 0x31, 0x38,
	0x32, 0x38, 0x5a, 0x30, 0x0c, 0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55,
	0x04, 0x03, 0x0c, 0x01, 0x74, 0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b,
	0x65, 0x70, 0x03, 0x21, 0x00, 0x41, 0xb7, 0xfe, 0x4d, 0x57, 0xe3, 0x11,
	0x82, 0x22, 0xd1, 0x0d, 0xda, 0xe0, 0xc9, 0xab, 0x9b, 0x76, 0x6f, 0x6d,
	0x58, 0x79, 0x4b, 0xd6, 0x4b, 0x9b, 0x97, 0x73, 0xb6, 0x69, 0xa0, 0x02,
	0x51, 0xa3, 0x53, 0x30, 0x51, 0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x0e,
	0x04, 0x16, 0x04, 0x14, 0x8e, 0x5b, 0x96, 0x1b, 0xc6, 0xc4, 0xf6, 0x04,
	0x6d, 0x5d, 0x63, 0xcd, 0xd4, 0xb1, 0xa3, 0xc1, 0x16, 0x24, 0x9d, 0x4f,
	0x30, 0x1f, 0x06, 0x03, 0x55, 0x1d, 0x23, 0x04, 0x18, 0x30, 0x16, 0x80,
	0x14, 0x8e, 0x5b, 0x96, 0x1b, 0xc6, 0xc4, 0xf6, 0x04, 0x6d, 0x5d, 0x63,
	0xcd, 0xd4, 0xb1, 0xa3, 0xc1, 0x16, 0x24, 0x9d, 0x4f, 0x30, 0x0f, 0x06,
	0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x05, 0x30, 0x03, 0x01,
	0x01, 0xff, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x41, 0x00,
	0xb9, 0x4a, 0x79, 0xf7, 0xf5, 0x7e, 0x41, 0xe9, 0x13, 0x2d, 0xdc, 0xcf,
	0x51, 0x88, 0xc7, 0x82, 0x65, 0x95, 0x19, 0x87, 0xd9, 0xaa, 0xc0, 0x41,
	0xe0, 0x99, 0x94, 0x16, 0x4a, 0x44, 0xb8, 0xd2, 0x7d, 0xf4, 0xa9, 0x0f,
	0xb5, 0xc5, 0x24, 0xc1, 0xe5, 0x4b, 0xbf, 0x27, 0x90, 0x50, 0x26, 0xf3,
	0xf9, 0x2f, 0x54, 0xe8, 0x1e, 0x00, 0x28, 0x03, 0xa6, 0xa3, 0x56, 0x75,
	0xfe, 0xac, 0x18, 0x0e
};
static const char cert_x5c[] =
	"MIIBLDCB36ADAgECAhQSnOrcePJsodVcbBGnWW8E27aipzAFBgMrZXAwDDEKMAgGA1UEAwwB"
	"dDAeFw0yNjExMjMwNTE4MjhaFw0yNjExMjQwNTE4MjhaMAwxCjAIBgNVBAMMAXQwKjAFBgMr"
	"ZXADIQBBt/5NV+MRgiLRDdrgyaubdm9tWHlL1kubl3O2aaACUaNTMFEwHQYDVR0OBBYEFI5b"
	"lhvGxPYEbV1jzdSxo8EWJJ1PMB8GA1UdIwQYMBaAFI5blhvGxPYEbV1jzdSxo8EWJJ1PMA8G"
	"A1UdEwEB/wQFMAMBAf8wBQYDK2VwA0EAuUp59/V+QekTLdzPUYjHgmWVGYfZqsBB4JmUFkpE"
	"uNJ99KkPtcUkweVLvyeQUCbz+S9U6B4AKAOmo1Z1/qwYDg==";

/* RFC 7638 section 3.1 example key (from RFC 7517 appendix A.1). */
static const char rfc7638_jwk[] =
	"{\"kty\":\"RSA\",\"n\":\"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4"
	"cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9"
	"yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu"
	"6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBni"
	"Iqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw\",\"e\":\"AQAB\",\"alg\":\"RS256\","
	"\"kid\":\"2011-04-29\"}";

static json_t *load(const char *s)
{
	json_error_t e;
	json_t *j = json_loads(s, 0, &e);

	if (j == NULL)
		fail_msg("bad test JSON: %s", e.text);
	return j;
}

static void test_rfc7638_thumbprint(void **state)
{
	json_t *jwk = load(rfc7638_jwk);
	char *tp = NULL;
	EVP_PKEY *pk = NULL;
	json_t *back = NULL;

	(void)state;
	assert_int_equal(jwk_thumbprint(jwk, &tp), 0);
	assert_string_equal(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
	free(tp);
	/* Same key through OpenSSL and back gives the same thumbprint. */
	assert_int_equal(jwk_to_pkey(jwk, &pk), 0);
	assert_int_equal(jwa_keykind_of(pk), KEYKIND_RSA);
	assert_int_equal(jwk_from_pkey(pk, &back), 0);
	assert_string_equal(json_string_value(json_object_get(back, "n")),
			    json_string_value(json_object_get(jwk, "n")));
	assert_string_equal(json_string_value(json_object_get(back, "e")), "AQAB");
	assert_null(json_object_get(back, "kid"));
	assert_int_equal(jwk_thumbprint(back, &tp), 0);
	assert_string_equal(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
	free(tp);
	json_decref(back);
	EVP_PKEY_free(pk);
	json_decref(jwk);
}

static void test_thumbprint_member_order_irrelevant(void **state)
{
	json_t *a = load("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AQ\",\"kid\":\"z\"}");
	json_t *b = load("{\"y\":\"AQ\",\"x\":\"AA\",\"use\":\"sig\",\"crv\":\"P-256\",\"kty\":\"EC\"}");
	json_t *c = load("{\"y\":\"AQ\",\"x\":\"AA\",\"kty\":\"EC\"}");
	char *ta = NULL, *tb = NULL, *tc = (char *)0x1;

	(void)state;
	assert_int_equal(jwk_thumbprint(a, &ta), 0);
	assert_int_equal(jwk_thumbprint(b, &tb), 0);
	assert_string_equal(ta, tb);
	assert_int_equal(strlen(ta), 43);
	assert_int_equal(jwk_thumbprint(c, &tc), P11J_E_BAD_REQUEST);
	assert_ptr_equal(tc, (char *)0x1);
	assert_non_null(strstr(err_msg(), "\"crv\""));
	free(ta);
	free(tb);
	json_decref(a);
	json_decref(b);
	json_decref(c);
}

static void check_kind(jwa_keykind kind, const char *kty, const char *crv, size_t xw)
{
	EVP_PKEY *pk = keygen(kind), *pk2 = NULL;
	json_t *jwk = NULL, *jwk2 = NULL;
	uint8_t *x = NULL;
	size_t xlen = 0;
	char *t1 = NULL, *t2 = NULL;

	assert_non_null(pk);
	assert_int_equal(jwk_from_pkey(pk, &jwk), 0);
	assert_string_equal(json_string_value(json_object_get(jwk, "kty")), kty);
	if (crv != NULL) {
		const char *xs = json_string_value(json_object_get(jwk, "x"));

		assert_string_equal(json_string_value(json_object_get(jwk, "crv")), crv);
		assert_int_equal(b64u_decode(xs, strlen(xs), &x, &xlen), 0);
		assert_int_equal(xlen, xw);
		free(x);
		if (strcmp(kty, "EC") == 0) {
			xs = json_string_value(json_object_get(jwk, "y"));
			assert_int_equal(b64u_decode(xs, strlen(xs), &x, &xlen), 0);
			assert_int_equal(xlen, xw);
			free(x);
			assert_int_equal(json_object_size(jwk), 4);
		} else {
			assert_int_equal(json_object_size(jwk), 3);
		}
	} else {
		assert_int_equal(json_object_size(jwk), 3);
		assert_string_equal(json_string_value(json_object_get(jwk, "e")), "AQAB");
	}
	assert_int_equal(jwk_to_pkey(jwk, &pk2), 0);
	assert_int_equal(jwa_keykind_of(pk2), kind);
	assert_int_equal(EVP_PKEY_eq(pk, pk2), 1);
	assert_int_equal(jwk_from_pkey(pk2, &jwk2), 0);
	assert_true(json_equal(jwk, jwk2));
	assert_int_equal(jwk_thumbprint(jwk, &t1), 0);
	assert_int_equal(jwk_thumbprint(jwk2, &t2), 0);
	assert_string_equal(t1, t2);
	free(t1);
	free(t2);
	json_decref(jwk);
	json_decref(jwk2);
	EVP_PKEY_free(pk);
	EVP_PKEY_free(pk2);
}

static void test_jwk_every_kind(void **state)
{
	(void)state;
	check_kind(KEYKIND_RSA, "RSA", NULL, 0);
	check_kind(KEYKIND_P256, "EC", "P-256", 32);
	check_kind(KEYKIND_P384, "EC", "P-384", 48);
	check_kind(KEYKIND_P521, "EC", "P-521", 66);
	check_kind(KEYKIND_ED25519, "OKP", "Ed25519", 32);
}

/* P-521 coordinates are often shorter than 66 bytes: they must be padded. */
static void test_ec_fixed_width(void **state)
{
	(void)state;
	for (int i = 0; i < 20; i++)
		check_kind(KEYKIND_P521, "EC", "P-521", 66);
}

static void test_jwk_from_unsupported(void **state)
{
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	json_t *j = (json_t *)0x1;

	(void)state;
	assert_int_equal(jwk_from_pkey(k, &j), P11J_E_UNSUPPORTED_ALG);
	assert_ptr_equal(j, (json_t *)0x1);
	EVP_PKEY_free(k);
}

static void expect_bad_jwk(const char *json, const char *msg_part)
{
	json_t *j = load(json);
	EVP_PKEY *pk = (EVP_PKEY *)0x1;

	err_clear();
	assert_int_equal(jwk_to_pkey(j, &pk), P11J_E_BAD_REQUEST);
	assert_ptr_equal(pk, (EVP_PKEY *)0x1);
	if (strstr(err_msg(), msg_part) == NULL)
		fail_msg("%s: message \"%s\" lacks \"%s\"", json, err_msg(), msg_part);
	json_decref(j);
}

static void test_jwk_malformed(void **state)
{
	EVP_PKEY *p256 = keygen(KEYKIND_P256);
	json_t *good = NULL;
	char *s, buf[512];
	const char *x, *y;

	(void)state;
	expect_bad_jwk("[]", "not a JSON object");
	expect_bad_jwk("{}", "\"kty\" is missing");
	expect_bad_jwk("{\"kty\":1}", "\"kty\" is missing or not a string");
	expect_bad_jwk("{\"kty\":\"oct\",\"k\":\"AA\"}", "\"kty\" has unsupported value \"oct\"");
	expect_bad_jwk("{\"kty\":\"RSA\",\"e\":\"AQAB\"}", "\"n\" is missing");
	expect_bad_jwk("{\"kty\":\"RSA\",\"n\":\"AQAB\"}", "\"e\" is missing");
	expect_bad_jwk("{\"kty\":\"RSA\",\"n\":5,\"e\":\"AQAB\"}", "\"n\" is not a string");
	expect_bad_jwk("{\"kty\":\"RSA\",\"n\":\"a+b\",\"e\":\"AQAB\"}",
		       "\"n\" is not valid base64url");
	expect_bad_jwk("{\"kty\":\"RSA\",\"n\":\"AAEC\",\"e\":\"AQAB\"}", "leading zero");
	expect_bad_jwk("{\"kty\":\"RSA\",\"n\":\"\",\"e\":\"AQAB\"}", "\"n\" is empty");
	expect_bad_jwk("{\"kty\":\"RSA\",\"n\":\"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78"
		       "LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64t"
		       "Z_2W-5JsGY4H\","
		       "\"e\":\"AQAB\"}", "2048");
	expect_bad_jwk("{\"kty\":\"EC\",\"x\":\"AA\",\"y\":\"AA\"}", "\"crv\" is missing");
	expect_bad_jwk("{\"kty\":\"EC\",\"crv\":\"P-192\",\"x\":\"AA\",\"y\":\"AA\"}",
		       "unsupported curve");
	expect_bad_jwk("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"}",
		       "\"x\" must be 32 bytes, got 1");
	expect_bad_jwk("{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"AA\"}", "\"Ed25519\"");
	expect_bad_jwk("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"}",
		       "\"x\" must be 32 bytes");

	/* A point that is not on the curve: take a real key, change y. */
	assert_int_equal(jwk_from_pkey(p256, &good), 0);
	x = json_string_value(json_object_get(good, "x"));
	y = json_string_value(json_object_get(good, "y"));
	s = strdup(y);
	s[5] = s[5] == 'A' ? 'B' : 'A';
	snprintf(buf, sizeof(buf), "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}",
		 x, s);
	expect_bad_jwk(buf, "not describe a valid public key");
	free(s);
	json_decref(good);
	EVP_PKEY_free(p256);
}

static void test_x5t(void **state)
{
	char *s = NULL;

	(void)state;
	assert_int_equal(jwk_x5t(cert_der, sizeof(cert_der), &s), 0);
	assert_string_equal(s, "7Kqf8zoPsrsm7nduuMuBdYU0ZJA");
	free(s);
	assert_int_equal(jwk_x5t_s256(cert_der, sizeof(cert_der), &s), 0);
	assert_string_equal(s, "I0uGnXgGVC0qyg7B9Td67JVwENYnhGrozCd95fkjMTI");
	free(s);
	assert_int_equal(jwk_x5c_entry(cert_der, sizeof(cert_der), &s), 0);
	assert_string_equal(s, cert_x5c);
	free(s);
}

static void test_jwk_find(void **state)
{
	json_t *jwks = load("{\"keys\":[{\"kid\":\"a\",\"kty\":\"EC\"},"
			    "{\"kid\":\"b\",\"kty\":\"RSA\"},{\"kty\":\"OKP\"}]}");
	json_t *one = load("{\"keys\":[{\"kid\":\"only\",\"kty\":\"EC\"}]}");
	json_t *bad = load("{\"keys\":{}}");
	const json_t *k = NULL;

	(void)state;
	assert_int_equal(jwk_find(jwks, "b", &k), 0);
	assert_string_equal(json_string_value(json_object_get(k, "kty")), "RSA");
	assert_int_equal(jwk_find(jwks, "a", &k), 0);
	assert_string_equal(json_string_value(json_object_get(k, "kty")), "EC");
	k = NULL;
	assert_int_equal(jwk_find(jwks, "c", &k), P11J_E_NOT_FOUND);
	assert_null(k);
	assert_non_null(strstr(err_msg(), "\"c\""));
	assert_int_equal(jwk_find(jwks, NULL, &k), P11J_E_NOT_FOUND);
	assert_int_equal(jwk_find(one, NULL, &k), 0);
	assert_string_equal(json_string_value(json_object_get(k, "kid")), "only");
	assert_int_equal(jwk_find(bad, "a", &k), P11J_E_BAD_REQUEST);
	assert_int_equal(jwk_find(NULL, "a", &k), P11J_E_BAD_REQUEST);
	json_decref(jwks);
	json_decref(one);
	json_decref(bad);
}

static void expect_find_verify(const json_t *jwks, const char *kid, int code,
			       const char *msg_part)
{
	const json_t *k = (const json_t *)0x1;

	err_clear();
	assert_int_equal(jwk_find_verify(jwks, kid, &k), code);
	assert_ptr_equal(k, (const json_t *)0x1);
	if (strstr(err_msg(), msg_part) == NULL)
		fail_msg("kid %s: message \"%s\" lacks \"%s\"", kid ? kid : "(none)", err_msg(),
			 msg_part);
}

/* Key selection for verification honours use and key_ops (RFC 7517 4.2,
 * 4.3); jwk_find itself does not look at them. */
static void test_jwk_find_verify(void **state)
{
	json_t *jwks = load("{\"keys\":["
			    "{\"kid\":\"enc\",\"kty\":\"RSA\",\"use\":\"enc\"},"
			    "{\"kid\":\"sig\",\"kty\":\"RSA\",\"use\":\"sig\"},"
			    "{\"kid\":\"ops\",\"kty\":\"EC\",\"key_ops\":[\"sign\",\"verify\"]},"
			    "{\"kid\":\"signonly\",\"kty\":\"EC\",\"key_ops\":[\"sign\"]},"
			    "{\"kid\":\"twice\",\"kty\":\"EC\",\"use\":\"enc\"},"
			    "{\"kid\":\"twice\",\"kty\":\"OKP\",\"key_ops\":[\"verify\"]},"
			    "{\"kid\":\"dup\",\"key_ops\":[\"verify\",\"verify\"]},"
			    "{\"kid\":\"num\",\"key_ops\":[\"verify\",2]},"
			    "{\"kid\":\"str\",\"key_ops\":\"verify\"},"
			    "{\"kid\":\"usenum\",\"use\":[\"sig\"]},"
			    "{\"kid\":\"encs\",\"use\":\"enc\"},"
			    "{\"kid\":\"encs\",\"key_ops\":[\"decrypt\"]},"
			    "{\"kid\":\"\\u001b]0;pwned\\u0007\",\"use\":\"enc\"},"
			    "7]}");
	json_t *one_enc = load("{\"keys\":[{\"kty\":\"EC\",\"use\":\"enc\"}]}");
	json_t *one_ops = load("{\"keys\":[{\"kty\":\"EC\",\"key_ops\":[]}]}");
	json_t *one_ok = load("{\"keys\":[{\"kty\":\"EC\",\"use\":\"sig\"}]}");
	const json_t *k = NULL;

	(void)state;
	/* jwk_find, as before, goes by kid alone */
	assert_int_equal(jwk_find(jwks, "enc", &k), 0);
	assert_string_equal(json_string_value(json_object_get(k, "use")), "enc");

	assert_int_equal(jwk_find_verify(jwks, "sig", &k), 0);
	assert_string_equal(json_string_value(json_object_get(k, "kid")), "sig");
	assert_int_equal(jwk_find_verify(jwks, "ops", &k), 0);
	assert_string_equal(json_string_value(json_object_get(k, "kid")), "ops");
	/* the first key with kid "twice" is for encryption: the second is taken */
	assert_int_equal(jwk_find_verify(jwks, "twice", &k), 0);
	assert_string_equal(json_string_value(json_object_get(k, "kty")), "OKP");
	assert_int_equal(jwk_find_verify(one_ok, NULL, &k), 0);

	expect_find_verify(jwks, "enc", P11J_E_NOT_FOUND,
			   "the JWKS key with kid \"enc\" is not for signatures: its \"use\" is "
			   "\"enc\", not \"sig\"");
	expect_find_verify(jwks, "signonly", P11J_E_NOT_FOUND,
			   "kid \"signonly\" may not verify signatures: its \"key_ops\" lacks "
			   "\"verify\"");
	/* two keys with that kid, neither for signatures: the first refusal */
	expect_find_verify(jwks, "encs", P11J_E_NOT_FOUND, "its \"use\" is \"enc\"");
	expect_find_verify(jwks, "none", P11J_E_NOT_FOUND, "no key with kid \"none\"");
	expect_find_verify(jwks, "dup", P11J_E_BAD_REQUEST,
			   "kid \"dup\": \"key_ops\" lists \"verify\" twice");
	expect_find_verify(jwks, "num", P11J_E_BAD_REQUEST, "\"key_ops\" entry 1 is not a string");
	expect_find_verify(jwks, "str", P11J_E_BAD_REQUEST, "\"key_ops\" that is not an array");
	expect_find_verify(jwks, "usenum", P11J_E_BAD_REQUEST, "\"use\" that is not a string");
	expect_find_verify(one_enc, NULL, P11J_E_NOT_FOUND,
			   "the JWKS's only key is not for signatures");
	expect_find_verify(one_ops, NULL, P11J_E_NOT_FOUND, "lacks \"verify\"");
	expect_find_verify(jwks, NULL, P11J_E_NOT_FOUND, "not exactly one");
	expect_find_verify(NULL, "sig", P11J_E_BAD_REQUEST, "\"keys\"");
	/* a hostile kid is named without its control characters */
	expect_find_verify(jwks, "\x1b]0;pwned\x07", P11J_E_NOT_FOUND, "kid \"?]0;pwned?\"");
	expect_find_verify(jwks, "\x1b[2J", P11J_E_NOT_FOUND, "no key with kid \"?[2J\"");
	json_decref(jwks);
	json_decref(one_enc);
	json_decref(one_ops);
	json_decref(one_ok);
}

/* The raw-component builders shared with the token layer. */
static void test_pkey_builders_reject_bad_components(void **state)
{
	EVP_PKEY *pk = NULL, *good = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	uint8_t pt[65], comp[33], e[] = { 1, 0, 1 };
	size_t n = sizeof(pt);

	(void)state;
	assert_non_null(good);
	assert_int_equal(EVP_PKEY_get_octet_string_param(good, "encoded-pub-key", pt, sizeof(pt), &n), 1);
	assert_int_equal(n, 65);
	assert_int_equal(jwk_pkey_ec("P-256", pt, n, &pk), 0);
	assert_int_equal(EVP_PKEY_eq(pk, good), 1);
	EVP_PKEY_free(pk);
	pk = NULL;
	comp[0] = 0x02;
	memcpy(comp + 1, pt + 1, 32);
	assert_int_equal(jwk_pkey_ec("P-256", comp, sizeof(comp), &pk), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "uncompressed"));
	assert_int_equal(jwk_pkey_ec("P-384", pt, n, &pk), P11J_E_BAD_REQUEST);
	assert_int_equal(jwk_pkey_ec("P-192", pt, n, &pk), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "P-192"));
	pt[64] ^= 1; /* no longer on the curve */
	assert_int_equal(jwk_pkey_ec("P-256", pt, n, &pk), P11J_E_BAD_REQUEST);
	assert_int_equal(jwk_pkey_rsa(pt, 0, e, sizeof(e), &pk), P11J_E_BAD_REQUEST);
	assert_null(pk);
	EVP_PKEY_free(good);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pkey_builders_reject_bad_components),
		cmocka_unit_test(test_rfc7638_thumbprint),
		cmocka_unit_test(test_thumbprint_member_order_irrelevant),
		cmocka_unit_test(test_jwk_every_kind),
		cmocka_unit_test(test_ec_fixed_width),
		cmocka_unit_test(test_jwk_from_unsupported),
		cmocka_unit_test(test_jwk_malformed),
		cmocka_unit_test(test_x5t),
		cmocka_unit_test(test_jwk_find),
		cmocka_unit_test(test_jwk_find_verify),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
