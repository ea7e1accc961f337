/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "jose/b64url.h"
#include "jose/jwa.h"
#include "jose/jwk.h"
#include "jose/jws.h"
#include "support/softsign.h"

#define NOW 1800000000LL

static EVP_PKEY *keys[6]; /* by jwa_keykind */

static int setup_keys(void **state)
{
	(void)state;
	keys[KEYKIND_RSA] = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	keys[KEYKIND_P256] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	keys[KEYKIND_P384] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	keys[KEYKIND_P521] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
	keys[KEYKIND_ED25519] = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	for (int k = KEYKIND_RSA; k <= KEYKIND_ED25519; k++)
		if (keys[k] == NULL)
			return -1;
	return 0;
}

static int teardown_keys(void **state)
{
	(void)state;
	for (int k = 0; k < 6; k++)
		EVP_PKEY_free(keys[k]);
	return 0;
}

static json_t *load(const char *s)
{
	json_error_t e;
	json_t *j = json_loads(s, 0, &e);

	if (j == NULL)
		fail_msg("bad test JSON: %s", e.text);
	return j;
}

/* JWKS with the public key of kind k under kid, optionally with an alg. */
static json_t *jwks_for(jwa_keykind k, const char *kid, const char *alg)
{
	json_t *jwk = NULL, *jwks;

	assert_int_equal(jwk_from_pkey(keys[k], &jwk), 0);
	json_object_set_new(jwk, "kid", json_string(kid));
	if (alg != NULL)
		json_object_set_new(jwk, "alg", json_string(alg));
	jwks = json_pack("{s:[o]}", "keys", jwk);
	assert_non_null(jwks);
	return jwks;
}

static char *sign_with(jwa_keykind k, jwa_alg alg, const char *kid, json_t *claims)
{
	json_t *hdr = json_pack("{s:s,s:s,s:s}", "alg", jwa_name(alg), "typ", "JWT", "kid", kid);
	char *jwt = NULL;

	assert_int_equal(jws_sign_compact(hdr, claims, alg, softsign_fn, keys[k],
					  jwa_max_sig_len(keys[k]), &jwt), 0);
	json_decref(hdr);
	return jwt;
}

static char *b64(const char *s)
{
	char *r = NULL;

	assert_int_equal(b64u_encode((const uint8_t *)s, strlen(s), &r), 0);
	return r;
}

/* Compact JWT from header and payload text and a signature of "sig" bytes. */
static char *mkjwt(const char *hdr, const char *payload)
{
	char *h = b64(hdr), *p = b64(payload), *out = malloc(strlen(h) + strlen(p) + 16);

	sprintf(out, "%s.%s.c2ln", h, p);
	free(h);
	free(p);
	return out;
}

static void test_sign_verify_every_alg(void **state)
{
	(void)state;
	for (int k = KEYKIND_RSA; k <= KEYKIND_ED25519; k++) {
		unsigned mask = jwa_algs_for_kind((jwa_keykind)k);

		for (int a = JWA_RS256; a < JWA__COUNT; a++) {
			json_t *claims, *jwks;
			jws_parsed p = { 0 };
			char *jwt;

			if (!(mask & JWA_BIT(a)))
				continue;
			claims = json_pack("{s:s,s:I,s:I}", "iss", "me", "exp", NOW + 60, "iat", NOW);
			jwt = sign_with((jwa_keykind)k, (jwa_alg)a, "k1", claims);
			/* header is compact, in insertion order */
			{
				char hdr[128], *enc;

				snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"k1\"}",
					 jwa_name((jwa_alg)a));
				enc = b64(hdr);
				assert_int_equal(strncmp(jwt, enc, strlen(enc)), 0);
				assert_int_equal(jwt[strlen(enc)], '.');
				free(enc);
			}
			jwks = jwks_for((jwa_keykind)k, "k1", jwa_name((jwa_alg)a));
			if (jws_verify_jwks(jwt, jwks, NOW, 0, &p) != 0)
				fail_msg("%s: %s", jwa_name((jwa_alg)a), err_msg());
			assert_int_equal(p.alg, a);
			assert_true(json_equal(p.claims, claims));
			if (jwa_sig_len((jwa_alg)a) != 0)
				assert_int_equal(p.sig_len, jwa_sig_len((jwa_alg)a));
			else
				assert_int_equal(p.sig_len, 256);
			jws_parsed_clear(&p);
			assert_null(p.header);
			json_decref(jwks);
			json_decref(claims);
			free(jwt);
		}
	}
}

static void test_sign_compact_raw(void **state)
{
	const char *h = "{\"alg\":\"EdDSA\"}", *c = "{\"b\":1,\"a\":2}";
	char *jwt = NULL, *eh = b64(h), *ec = b64(c);
	jws_parsed p = { 0 };

	(void)state;
	assert_int_equal(jws_sign_compact_raw(h, strlen(h), c, strlen(c), JWA_EDDSA, softsign_fn,
					      keys[KEYKIND_ED25519], 64, &jwt), 0);
	assert_int_equal(strncmp(jwt, eh, strlen(eh)), 0);
	assert_int_equal(strncmp(jwt + strlen(eh) + 1, ec, strlen(ec)), 0);
	assert_int_equal(jws_parse(jwt, &p), 0);
	assert_int_equal(p.signing_input_len, strlen(eh) + 1 + strlen(ec));
	assert_int_equal(jws_verify_sig(JWA_EDDSA, keys[KEYKIND_ED25519], (const uint8_t *)jwt,
					p.signing_input_len, p.sig, p.sig_len), 0);
	jws_parsed_clear(&p);
	free(jwt);
	free(eh);
	free(ec);
}

static void test_tampered(void **state)
{
	json_t *claims = json_pack("{s:s}", "sub", "alice");
	json_t *jwks;

	(void)state;
	for (int k = KEYKIND_RSA; k <= KEYKIND_ED25519; k++) {
		jwa_alg alg = jwa_default_for_kind((jwa_keykind)k);
		char *jwt = sign_with((jwa_keykind)k, alg, "k", claims), *t, *dot;
		char *evil = b64("{\"sub\":\"admin\"}");

		jwks = jwks_for((jwa_keykind)k, "k", NULL);
		assert_int_equal(jws_verify_jwks(jwt, jwks, NOW, 0, NULL), 0);
		/* swap the payload */
		dot = strchr(jwt, '.');
		t = malloc(strlen(jwt) + strlen(evil) + 1);
		memcpy(t, jwt, (size_t)(dot - jwt) + 1);
		strcpy(t + (dot - jwt) + 1, evil);
		strcat(t, strrchr(jwt, '.'));
		assert_int_equal(jws_verify_jwks(t, jwks, NOW, 0, NULL), P11J_E_BAD_SIGNATURE);
		assert_non_null(strstr(err_msg(), "does not verify"));
		free(t);
		/* flip a bit in the signature: first sig char 'A'<->'B' keeps it valid b64url */
		dot = strrchr(jwt, '.') + 1;
		*dot = *dot == 'A' ? 'B' : 'A';
		assert_int_equal(jws_verify_jwks(jwt, jwks, NOW, 0, NULL), P11J_E_BAD_SIGNATURE);
		free(evil);
		free(jwt);
		json_decref(jwks);
	}
	json_decref(claims);
}

static void test_wrong_alg_for_key(void **state)
{
	uint8_t sig[256] = { 1 };
	const uint8_t in[] = "x.y";
	json_t *claims = json_object(), *jwks;
	char *jwt;

	(void)state;
	assert_int_equal(jws_verify_sig(JWA_ES256, keys[KEYKIND_P384], in, 3, sig, 64),
			 P11J_E_UNSUPPORTED_ALG);
	assert_int_equal(jws_verify_sig(JWA_RS256, keys[KEYKIND_P256], in, 3, sig, 256),
			 P11J_E_UNSUPPORTED_ALG);
	assert_int_equal(jws_verify_sig(JWA_EDDSA, keys[KEYKIND_RSA], in, 3, sig, 64),
			 P11J_E_UNSUPPORTED_ALG);
	assert_int_equal(jws_verify_sig(JWA_PS256, keys[KEYKIND_ED25519], in, 3, sig, 256),
			 P11J_E_UNSUPPORTED_ALG);
	assert_int_equal(jws_verify_sig(JWA_NONE, keys[KEYKIND_RSA], in, 3, sig, 256),
			 P11J_E_UNSUPPORTED_ALG);
	/* ES* with a signature of the wrong width (DER, or a P-384 width) */
	assert_int_equal(jws_verify_sig(JWA_ES256, keys[KEYKIND_P256], in, 3, sig, 70),
			 P11J_E_BAD_SIGNATURE);
	assert_non_null(strstr(err_msg(), "64 bytes"));

	/* The JWK names another alg than the header. */
	jwt = sign_with(KEYKIND_RSA, JWA_RS256, "r", claims);
	jwks = jwks_for(KEYKIND_RSA, "r", "PS256");
	assert_int_equal(jws_verify_jwks(jwt, jwks, NOW, 0, NULL), P11J_E_UNSUPPORTED_ALG);
	json_decref(jwks);
	/* kid matches a key of another type */
	jwks = jwks_for(KEYKIND_P256, "r", NULL);
	assert_int_equal(jws_verify_jwks(jwt, jwks, NOW, 0, NULL), P11J_E_UNSUPPORTED_ALG);
	json_decref(jwks);
	/* unknown kid */
	jwks = jwks_for(KEYKIND_RSA, "other", NULL);
	assert_int_equal(jws_verify_jwks(jwt, jwks, NOW, 0, NULL), P11J_E_NOT_FOUND);
	json_decref(jwks);
	free(jwt);
	json_decref(claims);
}

static void test_alg_none_and_unknown(void **state)
{
	json_t *jwks = jwks_for(KEYKIND_P256, "k", NULL);
	char *jwt;

	(void)state;
	jwt = mkjwt("{\"alg\":\"none\",\"kid\":\"k\"}", "{}");
	assert_int_equal(jws_verify_jwks(jwt, jwks, NOW, 0, NULL), P11J_E_UNSUPPORTED_ALG);
	free(jwt);
	jwt = mkjwt("{\"alg\":\"HS256\",\"kid\":\"k\"}", "{}");
	assert_int_equal(jws_verify_jwks(jwt, jwks, NOW, 0, NULL), P11J_E_UNSUPPORTED_ALG);
	assert_non_null(strstr(err_msg(), "HS256"));
	free(jwt);
	jwt = mkjwt("{\"kid\":\"k\"}", "{}");
	assert_int_equal(jws_verify_jwks(jwt, jwks, NOW, 0, NULL), P11J_E_UNSUPPORTED_ALG);
	free(jwt);
	json_decref(jwks);
}

static int verify_claims(const char *claims_json, int64_t leeway)
{
	json_t *claims = load(claims_json), *jwks = jwks_for(KEYKIND_P256, "k", NULL);
	char *jwt = sign_with(KEYKIND_P256, JWA_ES256, "k", claims);
	int r = jws_verify_jwks(jwt, jwks, NOW, leeway, NULL);

	free(jwt);
	json_decref(claims);
	json_decref(jwks);
	return r;
}

static void test_exp_nbf(void **state)
{
	(void)state;
	assert_int_equal(verify_claims("{\"exp\":1800000001}", 0), 0);
	assert_int_equal(verify_claims("{\"exp\":1800000000}", 0), P11J_E_EXPIRED);
	assert_non_null(strstr(err_msg(), "expired"));
	assert_int_equal(verify_claims("{\"exp\":1799999990}", 30), 0);
	assert_int_equal(verify_claims("{\"exp\":1799999960}", 30), P11J_E_EXPIRED);
	assert_int_equal(verify_claims("{\"exp\":1800000001.5}", 0), 0);
	assert_int_equal(verify_claims("{\"exp\":\"1900000000\"}", 0), P11J_E_BAD_JWT);
	assert_non_null(strstr(err_msg(), "exp"));
	assert_int_equal(verify_claims("{\"exp\":1e300}", 0), 0);
	assert_int_equal(verify_claims("{\"exp\":-9223372036854775807}", 0), P11J_E_EXPIRED);
	assert_int_equal(verify_claims("{\"nbf\":1800000000}", 0), 0);
	assert_int_equal(verify_claims("{\"nbf\":1800000010}", 0), P11J_E_NOT_YET_VALID);
	assert_non_null(strstr(err_msg(), "10 seconds"));
	assert_int_equal(verify_claims("{\"nbf\":1800000010}", 10), 0);
	assert_int_equal(verify_claims("{\"nbf\":9223372036854775807}", 10),
			 P11J_E_NOT_YET_VALID);
	assert_int_equal(verify_claims("{\"nbf\":null}", 0), P11J_E_BAD_JWT);
}

static void expect_parse(const char *jwt, int code, const char *msg_part)
{
	jws_parsed p = { .alg = JWA_ES512 };

	err_clear();
	assert_int_equal(jws_parse(jwt, &p), code);
	assert_null(p.header);
	assert_int_equal(p.alg, JWA_ES512);
	if (strstr(err_msg(), msg_part) == NULL)
		fail_msg("\"%.60s\": message \"%s\" lacks \"%s\"", jwt, err_msg(), msg_part);
}

static void expect_parse_parts(const char *hdr, const char *payload, const char *msg_part)
{
	char *jwt = mkjwt(hdr, payload);

	expect_parse(jwt, P11J_E_BAD_JWT, msg_part);
	free(jwt);
}

static void test_parse_bad_inputs(void **state)
{
	char *big, *ok;
	jws_parsed p = { 0 };

	(void)state;
	expect_parse("", P11J_E_BAD_JWT, "three parts");
	expect_parse("abc", P11J_E_BAD_JWT, "three parts");
	expect_parse("e30.e30", P11J_E_BAD_JWT, "three parts");
	expect_parse("e30.e30.c2ln.c2ln", P11J_E_BAD_JWT, "three parts");
	expect_parse("e30.e30.c2ln.", P11J_E_BAD_JWT, "three parts");
	expect_parse(".e30.c2ln", P11J_E_BAD_JWT, "header is empty");
	expect_parse("e30..c2ln", P11J_E_BAD_JWT, "payload is empty");
	expect_parse("e30.e30.", P11J_E_BAD_JWT, "signature is empty");
	expect_parse("e30=.e30.c2ln", P11J_E_BAD_JWT, "header");
	expect_parse("e30.e3+.c2ln", P11J_E_BAD_JWT, "payload");
	expect_parse("e30.e30.c2l*", P11J_E_BAD_JWT, "signature");
	expect_parse("e30.e30.c2lu=", P11J_E_BAD_JWT, "signature");
	expect_parse("e 30.e30.c2ln", P11J_E_BAD_JWT, "header");
	expect_parse_parts("[]", "{}", "JWT header is not a JSON object");
	expect_parse_parts("\"x\"", "{}", "JWT header is not a JSON object");
	expect_parse_parts("{}", "[1,2]", "JWT payload is not a JSON object");
	expect_parse_parts("{}", "42", "JWT payload is not a JSON object");
	expect_parse_parts("{", "{}", "header is not valid JSON");
	expect_parse_parts("{}", "{\"a\":1} x", "payload is not valid JSON");
	expect_parse_parts("{}", "{\"sub\":\"a\\u0000b\"}", "payload is not valid JSON");
	expect_parse_parts("{\"alg\":\"ES256\",\"alg\":\"none\"}", "{}",
			   "header is not valid JSON");
	expect_parse_parts("{}", "{\"sub\":\"a\",\"sub\":\"b\"}", "payload is not valid JSON");
	{
		/* a raw NUL byte inside the decoded payload */
		static const uint8_t nul[] = "{\"a\":\"x\0y\"}";
		char *h = b64("{}"), *pl = NULL, jwt[128];

		assert_int_equal(b64u_encode(nul, sizeof(nul) - 1, &pl), 0);
		snprintf(jwt, sizeof(jwt), "%s.%s.c2ln", h, pl);
		expect_parse(jwt, P11J_E_BAD_JWT, "payload is not valid JSON");
		free(h);
		free(pl);
	}

	/* Over the 64 KiB bound. */
	big = malloc(70 * 1024 + 1);
	memset(big, 'A', 70 * 1024);
	big[10] = '.';
	big[20] = '.';
	big[70 * 1024] = '\0';
	expect_parse(big, P11J_E_REQUEST_TOO_LARGE, "65536");
	free(big);
	expect_parse(NULL, P11J_E_BAD_JWT, "");

	/* A good one parses; alg from the header, unknown alg is JWA_NONE. */
	ok = mkjwt("{\"alg\":\"PS384\",\"kid\":\"x\"}", "{\"a\":[1]}");
	assert_int_equal(jws_parse(ok, &p), 0);
	assert_int_equal(p.alg, JWA_PS384);
	assert_int_equal(p.sig_len, 3);
	assert_memory_equal(p.sig, "sig", 3);
	assert_string_equal(json_string_value(json_object_get(p.header, "kid")), "x");
	jws_parsed_clear(&p);
	free(ok);
	ok = mkjwt("{\"alg\":\"XX1\"}", "{}");
	assert_int_equal(jws_parse(ok, &p), 0);
	assert_int_equal(p.alg, JWA_NONE);
	jws_parsed_clear(&p);
	free(ok);
}

static void test_ecdsa_width_leading_zeros(void **state)
{
	uint8_t raw[64], back[64], *der = NULL;
	size_t derlen = 0;

	(void)state;
	/* r = 00 00 01 02 ..., s = 00 7f ... : both shorter than 32 bytes */
	for (int i = 0; i < 64; i++)
		raw[i] = (uint8_t)(i + 1);
	raw[0] = 0x00;
	raw[1] = 0x00;
	raw[32] = 0x00;
	raw[33] = 0x7f;
	assert_int_equal(jws_ecdsa_raw_to_der(raw, sizeof(raw), &der, &derlen), 0);
	/* SEQUENCE { INTEGER 30 bytes, INTEGER 31 bytes } */
	assert_int_equal(der[0], 0x30);
	assert_int_equal(der[2], 0x02);
	assert_int_equal(der[3], 30);
	assert_int_equal(der[4], 0x03);
	assert_int_equal(der[4 + 30], 0x02);
	assert_int_equal(der[4 + 30 + 1], 31);
	assert_int_equal(der[4 + 30 + 2], 0x7f);
	assert_int_equal(derlen, 2 + 2 + 30 + 2 + 31);
	memset(back, 0xee, sizeof(back));
	assert_int_equal(jws_ecdsa_der_to_raw(der, derlen, 32, back), 0);
	assert_memory_equal(back, raw, 64);
	OPENSSL_free(der);

	/* High bit set: DER adds a 0x00 sign byte, raw must not keep it. */
	memset(raw, 0xff, sizeof(raw));
	assert_int_equal(jws_ecdsa_raw_to_der(raw, sizeof(raw), &der, &derlen), 0);
	assert_int_equal(der[3], 33);
	assert_int_equal(jws_ecdsa_der_to_raw(der, derlen, 32, back), 0);
	assert_memory_equal(back, raw, 64);
	/* ... and does not fit a narrower half */
	assert_int_equal(jws_ecdsa_der_to_raw(der, derlen, 31, back), P11J_E_BAD_SIGNATURE);
	/* trailing garbage after the DER */
	{
		uint8_t *d2 = malloc(derlen + 1);

		memcpy(d2, der, derlen);
		d2[derlen] = 0;
		assert_int_equal(jws_ecdsa_der_to_raw(d2, derlen + 1, 32, back),
				 P11J_E_BAD_SIGNATURE);
		free(d2);
	}
	OPENSSL_free(der);
	assert_int_equal(jws_ecdsa_der_to_raw((const uint8_t *)"\x30\x01", 2, 32, back),
			 P11J_E_BAD_SIGNATURE);
	assert_int_equal(jws_ecdsa_raw_to_der(raw, 63, &der, &derlen), P11J_E_BAD_SIGNATURE);

	/* Real signatures with short r or s verify: sign until one has a leading zero. */
	for (int n = 0, found = 0; n < 2000 && found < 2; n++) {
		uint8_t sig[64], msg[8];
		size_t sl = sizeof(sig);

		memcpy(msg, &n, sizeof(n));
		assert_int_equal(softsign_fn(keys[KEYKIND_P256], JWA_ES256, msg, sizeof(msg), sig,
					     &sl), 0);
		assert_int_equal(sl, 64);
		if (sig[0] != 0 && sig[32] != 0)
			continue;
		found++;
		assert_int_equal(jws_verify_sig(JWA_ES256, keys[KEYKIND_P256], msg, sizeof(msg),
						sig, sl), 0);
	}
}

/* A P-256 ES256 JWT with this header (signed for real) checked against a
 * JWKS holding the key under kid "k": the return code, message in err_msg(). */
static int verify_hdr(const char *hdr_json, const json_t *jwks)
{
	json_t *hdr = load(hdr_json), *claims = json_pack("{s:s}", "sub", "alice");
	char *jwt = NULL;
	int r;

	assert_int_equal(jws_sign_compact(hdr, claims, JWA_ES256, softsign_fn, keys[KEYKIND_P256],
					  64, &jwt), 0);
	err_clear();
	r = jws_verify_jwks(jwt, jwks, NOW, 0, NULL);
	free(jwt);
	json_decref(hdr);
	json_decref(claims);
	return r;
}

static void expect_verify_hdr(const char *hdr_json, const json_t *jwks, int code,
			      const char *msg_part)
{
	int r = verify_hdr(hdr_json, jwks);

	if (r != code)
		fail_msg("%s: got %d (%s), want %d", hdr_json, r, err_msg(), code);
	if (strstr(err_msg(), msg_part) == NULL)
		fail_msg("%s: message \"%s\" lacks \"%s\"", hdr_json, err_msg(), msg_part);
}

/* RFC 7515 4.1.11: a validly signed JWT whose crit the verifier cannot honour
 * is invalid. Each of these verified before (issue 15). */
static void test_crit_refused(void **state)
{
	json_t *jwks = jwks_for(KEYKIND_P256, "k", NULL);

	(void)state;
	/* the same key and header without crit verify */
	assert_int_equal(verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"urn:x\":1}", jwks), 0);
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[\"urn:x-unknown\"],"
			  "\"urn:x-unknown\":true}",
			  jwks, P11J_E_BAD_JWT,
			  "requires the extension \"urn:x-unknown\", which this verifier does not "
			  "understand");
	/* RFC 7797 b64 is an extension we do not implement either */
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"b64\":false,\"crit\":[\"b64\"]}",
			  jwks, P11J_E_BAD_JWT, "\"b64\", which this verifier does not understand");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[]}", jwks, P11J_E_BAD_JWT,
			  "\"crit\" is an empty array");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":\"exp\",\"exp\":1}", jwks,
			  P11J_E_BAD_JWT, "\"crit\" is not an array");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":{\"urn:x\":1},\"urn:x\":1}",
			  jwks, P11J_E_BAD_JWT, "\"crit\" is not an array");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":null}", jwks,
			  P11J_E_BAD_JWT, "\"crit\" is not an array");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[\"urn:x\",7],\"urn:x\":1}",
			  jwks, P11J_E_BAD_JWT, "\"crit\" entry 1 is not a string");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[[\"urn:x\"]],\"urn:x\":1}",
			  jwks, P11J_E_BAD_JWT, "\"crit\" entry 0 is not a string");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[\"urn:x\",\"urn:x\"],"
			  "\"urn:x\":1}",
			  jwks, P11J_E_BAD_JWT, "\"crit\" lists \"urn:x\" twice");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[\"urn:absent\"]}", jwks,
			  P11J_E_BAD_JWT, "\"urn:absent\", which is not in the header");
	/* names RFC 7515/7518 define may not be listed, present or not */
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[\"kid\"]}", jwks,
			  P11J_E_BAD_JWT, "lists \"kid\", which RFC 7515/7518 define");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[\"alg\"]}", jwks,
			  P11J_E_BAD_JWT, "lists \"alg\"");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[\"crit\"]}", jwks,
			  P11J_E_BAD_JWT, "lists \"crit\"");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\",\"crit\":[\"x5t#S256\"]}", jwks,
			  P11J_E_BAD_JWT, "lists \"x5t#S256\"");
	/* crit is checked before the key is looked for: no kid match needed */
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"nope\",\"crit\":[]}", jwks,
			  P11J_E_BAD_JWT, "empty array");
	json_decref(jwks);
}

/* jws_check_crit itself, with extensions a caller says it understands. */
static void test_check_crit_understood(void **state)
{
	static const char *const ours[] = { "urn:a", "kid", NULL };
	json_t *h;

	(void)state;
	h = load("{\"alg\":\"ES256\"}");
	assert_int_equal(jws_check_crit(h, NULL), 0);
	json_decref(h);
	h = load("{\"crit\":[\"urn:a\"],\"urn:a\":{}}");
	assert_int_equal(jws_check_crit(h, ours), 0);
	assert_int_equal(jws_check_crit(h, NULL), P11J_E_BAD_JWT);
	assert_non_null(strstr(err_msg(), "\"urn:a\""));
	json_decref(h);
	h = load("{\"crit\":[\"urn:a\",\"urn:b\"],\"urn:a\":1,\"urn:b\":2}");
	assert_int_equal(jws_check_crit(h, ours), P11J_E_BAD_JWT);
	assert_non_null(strstr(err_msg(), "\"urn:b\""));
	json_decref(h);
	/* well-formedness comes first: a duplicate of an understood name */
	h = load("{\"crit\":[\"urn:a\",\"urn:a\"],\"urn:a\":1}");
	assert_int_equal(jws_check_crit(h, ours), P11J_E_BAD_JWT);
	assert_non_null(strstr(err_msg(), "twice"));
	json_decref(h);
	/* "understanding" kid does not make it listable */
	h = load("{\"crit\":[\"kid\"],\"kid\":\"x\"}");
	assert_int_equal(jws_check_crit(h, ours), P11J_E_BAD_JWT);
	assert_non_null(strstr(err_msg(), "RFC 7515/7518"));
	json_decref(h);
	/* a hostile name is shown without its control characters, and bounded */
	h = load("{\"crit\":[\"\\u001b[2Jurn:evil\"],\"\\u001b[2Jurn:evil\":1}");
	assert_int_equal(jws_check_crit(h, NULL), P11J_E_BAD_JWT);
	assert_null(strchr(err_msg(), 0x1b));
	assert_non_null(strstr(err_msg(), "\"?[2Jurn:evil\""));
	json_decref(h);
	{
		char big[400], hdr[900];

		memset(big, 'n', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		snprintf(hdr, sizeof(hdr), "{\"crit\":[\"%s\"],\"%s\":1}", big, big);
		h = load(hdr);
		assert_int_equal(jws_check_crit(h, NULL), P11J_E_BAD_JWT);
		assert_non_null(strstr(err_msg(), "nnn...\""));
		assert_true(strlen(err_msg()) < 200);
		json_decref(h);
	}
}

/* A kid that is not a string is refused, not taken as "no kid" (which picks
 * the JWKS's only key: that verified before, issue 15). */
static void test_kid_not_string(void **state)
{
	json_t *jwks = jwks_for(KEYKIND_P256, "k", NULL), *jwk = NULL, *nokid;

	(void)state;
	/* the only key, without a kid of its own */
	assert_int_equal(jwk_from_pkey(keys[KEYKIND_P256], &jwk), 0);
	nokid = json_pack("{s:[o]}", "keys", jwk);
	assert_non_null(nokid);
	assert_int_equal(verify_hdr("{\"alg\":\"ES256\"}", nokid), 0);
	assert_int_equal(verify_hdr("{\"alg\":\"ES256\"}", jwks), 0);
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":7}", jwks, P11J_E_BAD_JWT,
			  "\"kid\" is not a string");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":null}", nokid, P11J_E_BAD_JWT,
			  "\"kid\" is not a string");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":[\"k\"]}", jwks, P11J_E_BAD_JWT,
			  "\"kid\" is not a string");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":{\"k\":1}}", nokid, P11J_E_BAD_JWT,
			  "\"kid\" is not a string");
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":false}", jwks, P11J_E_BAD_JWT,
			  "\"kid\" is not a string");
	json_decref(nokid);
	json_decref(jwks);
}

/* JWKS with the P-256 key under kid "k" and these extra members. */
static json_t *jwks_p256_with(const char *extra_json)
{
	json_t *jwks = jwks_for(KEYKIND_P256, "k", NULL), *extra = load(extra_json);

	assert_int_equal(json_object_update(json_array_get(json_object_get(jwks, "keys"), 0),
					    extra), 0);
	json_decref(extra);
	return jwks;
}

static void expect_key_use(const char *extra_json, const char *hdr_json, int code,
			   const char *msg_part)
{
	json_t *jwks = jwks_p256_with(extra_json);

	if (code == 0) {
		if (verify_hdr(hdr_json, jwks) != 0)
			fail_msg("%s: %s", extra_json, err_msg());
	} else {
		expect_verify_hdr(hdr_json, jwks, code, msg_part);
	}
	json_decref(jwks);
}

/* RFC 7517 4.2/4.3: a key whose use or key_ops say it is not for verifying
 * signatures is not used (each refused case verified before, issue 15). */
static void test_key_use_and_ops(void **state)
{
	const char *k = "{\"alg\":\"ES256\",\"kid\":\"k\"}", *none = "{\"alg\":\"ES256\"}";

	(void)state;
	expect_key_use("{\"use\":\"sig\"}", k, 0, NULL);
	expect_key_use("{\"key_ops\":[\"verify\"]}", k, 0, NULL);
	expect_key_use("{\"use\":\"sig\",\"key_ops\":[\"sign\",\"verify\"]}", k, 0, NULL);
	expect_key_use("{\"use\":\"enc\"}", k, P11J_E_NOT_FOUND,
		       "the JWKS key with kid \"k\" is not for signatures: its \"use\" is \"enc\"");
	expect_key_use("{\"use\":\"SIG\"}", k, P11J_E_NOT_FOUND, "\"use\" is \"SIG\"");
	expect_key_use("{\"use\":\"\"}", k, P11J_E_NOT_FOUND, "\"use\" is \"\"");
	expect_key_use("{\"use\":\"enc\"}", none, P11J_E_NOT_FOUND,
		       "the JWKS's only key (kid \"k\") is not for signatures");
	expect_key_use("{\"key_ops\":[\"sign\"]}", k, P11J_E_NOT_FOUND,
		       "kid \"k\" may not verify signatures: its \"key_ops\" lacks \"verify\"");
	expect_key_use("{\"key_ops\":[]}", none, P11J_E_NOT_FOUND, "lacks \"verify\"");
	expect_key_use("{\"key_ops\":[\"encrypt\",\"wrapKey\"]}", k, P11J_E_NOT_FOUND,
		       "lacks \"verify\"");
	expect_key_use("{\"use\":\"sig\",\"key_ops\":[\"sign\"]}", k, P11J_E_NOT_FOUND,
		       "lacks \"verify\"");
	/* malformed use / key_ops: bad_request, the key named */
	expect_key_use("{\"use\":1}", k, P11J_E_BAD_REQUEST,
		       "kid \"k\" has a \"use\" that is not a string");
	expect_key_use("{\"key_ops\":\"verify\"}", k, P11J_E_BAD_REQUEST,
		       "\"key_ops\" that is not an array");
	expect_key_use("{\"key_ops\":[\"verify\",null]}", k, P11J_E_BAD_REQUEST,
		       "\"key_ops\" entry 1 is not a string");
	expect_key_use("{\"key_ops\":[\"verify\",\"sign\",\"verify\"]}", k, P11J_E_BAD_REQUEST,
		       "\"key_ops\" lists \"verify\" twice");
}

/* A kid shared by an encryption key and a signing key: the signing one. */
static void test_same_kid_enc_then_sig(void **state)
{
	json_t *jwks = jwks_for(KEYKIND_P256, "k", NULL), *keyarr = json_object_get(jwks, "keys");
	json_t *enc = json_deep_copy(json_array_get(keyarr, 0));
	json_t *other = NULL;

	(void)state;
	json_object_set_new(enc, "use", json_string("enc"));
	json_object_set_new(json_array_get(keyarr, 0), "use", json_string("sig"));
	assert_int_equal(json_array_insert_new(keyarr, 0, enc), 0);
	assert_int_equal(verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\"}", jwks), 0);
	/* the usable key is another key: its signature check fails, not the lookup */
	assert_int_equal(jwk_from_pkey(keys[KEYKIND_P256 + 1], &other), 0);
	json_object_set_new(other, "kid", json_string("k"));
	assert_int_equal(json_array_remove(keyarr, 1), 0);
	assert_int_equal(json_array_append_new(keyarr, other), 0);
	expect_verify_hdr("{\"alg\":\"ES256\",\"kid\":\"k\"}", jwks, P11J_E_UNSUPPORTED_ALG,
			  "does not fit");
	json_decref(jwks);
}

static int short_signer(void *ctx, jwa_alg alg, const uint8_t *in, size_t inlen, uint8_t *sig,
			size_t *siglen)
{
	(void)ctx;
	(void)alg;
	(void)in;
	(void)inlen;
	memset(sig, 1, 63);
	*siglen = 63;
	return 0;
}

static int failing_signer(void *ctx, jwa_alg alg, const uint8_t *in, size_t inlen, uint8_t *sig,
			  size_t *siglen)
{
	(void)ctx;
	(void)alg;
	(void)in;
	(void)inlen;
	(void)sig;
	(void)siglen;
	return err_set(P11J_E_TOKEN_UNAVAILABLE, "token gone");
}

static void test_signer_checked(void **state)
{
	json_t *h = json_pack("{s:s}", "alg", "ES256"), *c = json_object(), *arr = json_array();
	char *jwt = (char *)0x1;

	(void)state;
	assert_int_equal(jws_sign_compact(h, c, JWA_ES256, short_signer, NULL, 64, &jwt),
			 P11J_E_INTERNAL);
	assert_non_null(strstr(err_msg(), "63"));
	assert_int_equal(jws_sign_compact(h, c, JWA_EDDSA, short_signer, NULL, 64, &jwt),
			 P11J_E_INTERNAL);
	assert_int_equal(jws_sign_compact(h, c, JWA_ES256, failing_signer, NULL, 64, &jwt),
			 P11J_E_TOKEN_UNAVAILABLE);
	assert_int_equal(jws_sign_compact(h, arr, JWA_ES256, softsign_fn, keys[KEYKIND_P256], 64,
					  &jwt), P11J_E_BAD_REQUEST);
	assert_int_equal(jws_sign_compact(h, c, JWA_NONE, softsign_fn, keys[KEYKIND_P256], 64,
					  &jwt), P11J_E_UNSUPPORTED_ALG);
	assert_ptr_equal(jwt, (char *)0x1);
	json_decref(h);
	json_decref(c);
	json_decref(arr);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sign_verify_every_alg),
		cmocka_unit_test(test_sign_compact_raw),
		cmocka_unit_test(test_tampered),
		cmocka_unit_test(test_wrong_alg_for_key),
		cmocka_unit_test(test_alg_none_and_unknown),
		cmocka_unit_test(test_exp_nbf),
		cmocka_unit_test(test_parse_bad_inputs),
		cmocka_unit_test(test_ecdsa_width_leading_zeros),
		cmocka_unit_test(test_signer_checked),
		cmocka_unit_test(test_crit_refused),
		cmocka_unit_test(test_check_crit_understood),
		cmocka_unit_test(test_kid_not_string),
		cmocka_unit_test(test_key_use_and_ops),
		cmocka_unit_test(test_same_kid_enc_then_sig),
	};
	return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
