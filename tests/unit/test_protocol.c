/* SPDX-License-Identifier: MIT */
/* The agent's protocol handler, driven directly with software keys. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "agent/audit.h"
#include "agent/config.h"
#include "agent/keyring.h"
#include "agent/policy.h"
#include "agent/proto.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/b64url.h"
#include "jose/dpop.h"
#include "jose/jwk.h"
#include "jose/jws.h"
#include "support/protoenv.h"
#include "support/softsign.h"

static keyring kr;
static EVP_PKEY *pk[5];
static uint8_t *cert_der;
static int cert_len;
static proto_env env;
static const proto_peer me = { .uid = 1000, .gid = 1000, .pid = 42 };

static int setup(void **state)
{
	static const char *const names[] = { "rsa", "p256", "p384", "p521", "ed" };

	(void)state;
	pk[0] = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	pk[1] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	pk[2] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	pk[3] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
	pk[4] = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	if (softsign_cert(pk[0], &cert_der, &cert_len) < 0)
		return -1;
	for (int i = 0; i < 5; i++)
		if (pk[i] == NULL ||
		    kr_add(&kr, names[i], "pkcs11:object=x", pk[i], i == 0 ? cert_der : NULL,
			   i == 0 ? (size_t)cert_len : 0, 0, softsign_fn, pk[i]) < 0)
			return -1;
	protoenv_init(&env, &kr);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	kr_free(&kr);
	for (int i = 0; i < 5; i++)
		EVP_PKEY_free(pk[i]);
	OPENSSL_free(cert_der);
	protoenv_fini();
	return 0;
}

/* Send a request line, return the parsed response (one line, ends in \n). */
static json_t *call_raw(const proto_peer *peer, const char *line, size_t len)
{
	char *resp = NULL;
	size_t rlen = 0;
	json_t *v;

	assert_int_equal(proto_handle(&env, peer, line, len, &resp, &rlen), 0);
	assert_true(rlen > 0 && resp[rlen - 1] == '\n');
	assert_null(memchr(resp, '\n', rlen - 1)); /* exactly one line */
	v = json_loadb(resp, rlen, 0, NULL);
	assert_non_null(v);
	free(resp);
	return v;
}

static json_t *call(const char *line)
{
	return call_raw(&me, line, strlen(line));
}

static void expect_error(json_t *v, const char *code, const char *msg_part)
{
	json_t *e = json_object_get(v, "error");

	assert_true(json_is_false(json_object_get(v, "ok")));
	assert_string_equal(json_string_value(json_object_get(e, "code")), code);
	assert_true(strlen(json_string_value(json_object_get(e, "message"))) > 0);
	if (msg_part != NULL && strstr(json_string_value(json_object_get(e, "message")), msg_part) == NULL)
		fail_msg("message '%s' lacks '%s'", json_string_value(json_object_get(e, "message")),
			 msg_part);
}

static void err_case(const char *line, const char *code, const char *msg_part)
{
	json_t *v = call(line);

	expect_error(v, code, msg_part);
	json_decref(v);
}

static void test_hello(void **state)
{
	json_t *v = call("{\"id\":7,\"op\":\"hello\"}");

	(void)state;
	assert_true(json_is_true(json_object_get(v, "ok")));
	assert_int_equal(json_integer_value(json_object_get(v, "id")), 7);
	assert_int_equal(json_integer_value(json_object_get(v, "protocol")), 1);
	assert_string_equal(json_string_value(json_object_get(v, "version")), "test");
	json_decref(v);
}

static void test_keys_and_jwks(void **state)
{
	json_t *v = call("{\"op\":\"keys\"}"), *k, *j;
	char *thp = NULL;
	size_t i;

	(void)state;
	assert_true(json_is_null(json_object_get(v, "id")));
	assert_int_equal(json_array_size(json_object_get(v, "keys")), 5);
	k = json_array_get(json_object_get(v, "keys"), 0);
	assert_string_equal(json_string_value(json_object_get(k, "name")), "rsa");
	assert_string_equal(json_string_value(json_object_get(k, "alg")), "RS256");
	assert_int_equal(json_array_size(json_object_get(k, "algs")), 6);
	assert_int_equal(json_integer_value(json_object_get(k, "bits")), 2048);
	assert_true(json_is_true(json_object_get(k, "has_cert")));
	k = json_array_get(json_object_get(v, "keys"), 2);
	assert_string_equal(json_string_value(json_object_get(k, "crv")), "P-384");
	assert_string_equal(json_string_value(json_object_get(k, "alg")), "ES384");
	json_decref(v);

	v = call("{\"op\":\"jwks\"}");
	json_array_foreach(json_object_get(v, "keys"), i, j) {
		assert_int_equal(jwk_thumbprint(j, &thp), 0);
		assert_string_equal(thp, json_string_value(json_object_get(j, "kid")));
		assert_string_equal(json_string_value(json_object_get(j, "use")), "sig");
		assert_null(json_object_get(j, "d"));
		free(thp);
	}
	assert_int_equal(i, 5);
	json_decref(v);
	v = call("{\"op\":\"jwks\",\"key\":\"ed\"}");
	assert_int_equal(json_array_size(json_object_get(v, "keys")), 1);
	json_decref(v);
	err_case("{\"op\":\"jwks\",\"key\":\"nope\"}", "unknown_key", "nope");
	err_case("{\"op\":\"jwks\",\"key\":5}", "bad_request", "'key'");
	err_case("{\"op\":\"keys\",\"key\":\"rsa\"}", "bad_request", "unknown field 'key'");
}

/* Sign, then verify with the op's own JWKS and with a second, independent
 * path: OpenSSL directly on the signing input. */
static void test_sign_every_pair(void **state)
{
	static const struct {
		const char *key, *alg;
		int pki;
	} pairs[] = {
		{ "rsa", "RS256", 0 }, { "rsa", "RS384", 0 }, { "rsa", "RS512", 0 },
		{ "rsa", "PS256", 0 }, { "rsa", "PS384", 0 }, { "rsa", "PS512", 0 },
		{ "p256", "ES256", 1 }, { "p384", "ES384", 2 }, { "p521", "ES512", 3 },
		{ "ed", "EdDSA", 4 },
	};
	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(pairs); i++) {
		char req[256];
		json_t *v, *jwks;
		jws_parsed p = { 0 };
		const char *jwt;

		snprintf(req, sizeof(req),
			 "{\"id\":%zu,\"op\":\"sign\",\"key\":\"%s\",\"alg\":\"%s\","
			 "\"claims\":{\"sub\":\"s\"}}", i, pairs[i].key, pairs[i].alg);
		v = call(req);
		assert_true(json_is_true(json_object_get(v, "ok")));
		/* the JWKS exported for this alg, as a provider would hold it */
		snprintf(req, sizeof(req), "{\"op\":\"jwks\",\"key\":\"%s\",\"alg\":\"%s\"}",
			 pairs[i].key, pairs[i].alg);
		jwks = call(req);
		assert_string_equal(json_string_value(json_object_get(
					    json_array_get(json_object_get(jwks, "keys"), 0), "alg")),
				    pairs[i].alg);
		jwt = json_string_value(json_object_get(v, "jwt"));
		assert_int_equal(jws_verify_jwks(jwt, jwks, protoenv_now(), 0, &p), 0);
		assert_string_equal(json_string_value(json_object_get(p.header, "alg")), pairs[i].alg);
		assert_int_equal(jws_verify_sig(jwa_from_name(pairs[i].alg), pk[pairs[i].pki],
						(const uint8_t *)jwt, p.signing_input_len, p.sig,
						p.sig_len), 0);
		assert_string_equal(json_string_value(json_object_get(v, "alg")), pairs[i].alg);
		jws_parsed_clear(&p);
		json_decref(v);
		json_decref(jwks);
	}
	err_case("{\"op\":\"jwks\",\"alg\":\"RS512\"}", "unsupported_alg", "name one key");
	err_case("{\"op\":\"jwks\",\"key\":\"p256\",\"alg\":\"ES384\"}", "unsupported_alg",
		 "p256");
	err_case("{\"op\":\"jwks\",\"key\":\"p256\",\"alg\":3}", "bad_request", "'alg'");
}

static void test_claim_defaults_and_control(void **state)
{
	json_t *v = call("{\"op\":\"sign\",\"key\":\"p256\",\"lifetime\":120}");
	jws_parsed p = { 0 };
	const char *jti;

	(void)state;
	assert_int_equal(jws_parse(json_string_value(json_object_get(v, "jwt")), &p), 0);
	assert_int_equal(json_integer_value(json_object_get(p.claims, "iat")), 1700000000);
	assert_int_equal(json_integer_value(json_object_get(p.claims, "exp")), 1700000120);
	jti = json_string_value(json_object_get(p.claims, "jti"));
	assert_non_null(jti);
	assert_int_equal(strlen(jti), 36);
	assert_string_equal(jti, json_string_value(json_object_get(v, "jti")));
	assert_int_equal(json_integer_value(json_object_get(v, "exp")), 1700000120);
	assert_string_equal(json_string_value(json_object_get(p.header, "typ")), "JWT");
	assert_string_equal(json_string_value(json_object_get(p.header, "kid")),
			    json_string_value(json_object_get(v, "kid")));
	jws_parsed_clear(&p);
	json_decref(v);

	/* default lifetime 300; caller's iat, jti, typ, kid and extra members kept */
	v = call("{\"op\":\"sign\",\"key\":\"p256\",\"header\":{\"typ\":\"at+jwt\",\"kid\":\"k\","
		 "\"x\":[1]},\"claims\":{\"iat\":1600000000,\"jti\":\"j\",\"aud\":[\"a\",\"b\"]}}");
	assert_int_equal(jws_parse(json_string_value(json_object_get(v, "jwt")), &p), 0);
	assert_int_equal(json_integer_value(json_object_get(p.claims, "exp")), 1600000300);
	assert_string_equal(json_string_value(json_object_get(p.claims, "jti")), "j");
	assert_int_equal(json_array_size(json_object_get(p.claims, "aud")), 2);
	assert_string_equal(json_string_value(json_object_get(p.header, "typ")), "at+jwt");
	assert_string_equal(json_string_value(json_object_get(p.header, "kid")), "k");
	assert_string_equal(json_string_value(json_object_get(p.header, "alg")), "ES256");
	assert_true(json_is_array(json_object_get(p.header, "x")));
	assert_string_equal(json_string_value(json_object_get(v, "kid")), "k");
	jws_parsed_clear(&p);
	json_decref(v);

	/* caller's exp kept; alg taken from the header when the request has none */
	v = call("{\"op\":\"sign\",\"key\":\"rsa\",\"header\":{\"alg\":\"PS384\"},"
		 "\"claims\":{\"exp\":5}}");
	assert_string_equal(json_string_value(json_object_get(v, "alg")), "PS384");
	assert_int_equal(json_integer_value(json_object_get(v, "exp")), 5);
	json_decref(v);
}

/* The header of a request without header members comes pre-serialised per
 * key and alg: its bytes must be what the general path would have built,
 * for every alg the key signs, and follow a kid set by the configuration. */
static void header_bytes(const char *key, const char *alg, char *out, size_t outlen)
{
	char req[256];
	json_t *v;
	const char *jwt, *dot;
	uint8_t *raw = NULL;
	size_t rawlen = 0;

	snprintf(req, sizeof(req), "{\"op\":\"sign\",\"key\":\"%s\",\"alg\":\"%s\"}", key, alg);
	v = call(req);
	jwt = json_string_value(json_object_get(v, "jwt"));
	assert_non_null(jwt);
	dot = strchr(jwt, '.');
	assert_non_null(dot);
	assert_int_equal(b64u_decode(jwt, (size_t)(dot - jwt), &raw, &rawlen), 0);
	assert_true(rawlen < outlen);
	memcpy(out, raw, rawlen);
	out[rawlen] = '\0';
	free(raw);
	json_decref(v);
}

static void test_preserialised_header(void **state)
{
	static const char *const rsa_algs[] = { "RS256", "RS384", "RS512",
						"PS256", "PS384", "PS512" };
	char got[512], want[512];
	kr_key *k = kr.keys[1]; /* p256 */
	char *old_kid;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rsa_algs); i++) {
		header_bytes("rsa", rsa_algs[i], got, sizeof(got));
		snprintf(want, sizeof(want), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
			 rsa_algs[i], kr.keys[0]->kid);
		assert_string_equal(got, want);
	}
	header_bytes("ed", "EdDSA", got, sizeof(got));
	snprintf(want, sizeof(want), "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
		 kr.keys[4]->kid);
	assert_string_equal(got, want);
	/* only the algs the key signs have one */
	assert_non_null(k->hdr_json[JWA_ES256]);
	assert_null(k->hdr_json[JWA_ES384]);
	assert_null(k->hdr_json[JWA_RS256]);

	/* a configured kid (with a character JSON must escape) replaces it */
	old_kid = strdup(k->kid);
	assert_int_equal(kr_key_configure(k, NULL, JWA_NONE, "kid/\"2\""), 0);
	header_bytes("p256", "ES256", got, sizeof(got));
	assert_string_equal(got, "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"kid/\\\"2\\\"\"}");
	/* the same request with an explicit empty header takes the general
	 * path: same bytes */
	{
		json_t *v = call("{\"op\":\"sign\",\"key\":\"p256\",\"header\":{}}");
		const char *jwt = json_string_value(json_object_get(v, "jwt"));

		assert_non_null(jwt);
		assert_true(strncmp(jwt, "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImtpZC9cIjJcIiJ9.",
				    61) == 0);
		json_decref(v);
	}
	assert_int_equal(kr_key_configure(k, NULL, JWA_NONE, old_kid), 0);
	free(old_kid);
}

static void test_include_certificate(void **state)
{
	json_t *v = call("{\"op\":\"sign\",\"key\":\"rsa\",\"include\":[\"x5t\",\"x5t#S256\",\"x5c\"]}");
	jws_parsed p = { 0 };
	uint8_t md[32];
	char want[64], *x5c = NULL;

	(void)state;
	assert_int_equal(jws_parse(json_string_value(json_object_get(v, "jwt")), &p), 0);
	EVP_Digest(cert_der, (size_t)cert_len, md, NULL, EVP_sha1(), NULL);
	b64u_encode_to(md, 20, want);
	assert_string_equal(json_string_value(json_object_get(p.header, "x5t")), want);
	EVP_Digest(cert_der, (size_t)cert_len, md, NULL, EVP_sha256(), NULL);
	b64u_encode_to(md, 32, want);
	assert_string_equal(json_string_value(json_object_get(p.header, "x5t#S256")), want);
	x5c = malloc((size_t)cert_len * 2);
	EVP_EncodeBlock((unsigned char *)x5c, cert_der, cert_len);
	assert_string_equal(json_string_value(json_array_get(json_object_get(p.header, "x5c"), 0)),
			    x5c);
	free(x5c);
	jws_parsed_clear(&p);
	json_decref(v);
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"include\":[\"x5t\"]}", "bad_request",
		 "no certificate");
}

/* A client's own certificate members are governed by the policy's include
 * like the ones the agent adds, and never signed as given. */
static void test_client_certificate_members(void **state)
{
	kr_key *k = kr.keys[0]; /* rsa, with a certificate */
	pol_key pol;
	json_t *v, *keys;
	jws_parsed p = { 0 };
	uint8_t md[32];
	char want[64];

	(void)state;
	assert_string_equal(k->name, "rsa");
	/* default policy (include = all): the agent's value replaces the client's */
	v = call("{\"op\":\"sign\",\"key\":\"rsa\",\"header\":{\"x5t\":\"bogus\",\"x5c\":[\"QUFB\"]}}");
	assert_true(json_is_true(json_object_get(v, "ok")));
	assert_int_equal(jws_parse(json_string_value(json_object_get(v, "jwt")), &p), 0);
	EVP_Digest(cert_der, (size_t)cert_len, md, NULL, EVP_sha1(), NULL);
	b64u_encode_to(md, 20, want);
	assert_string_equal(json_string_value(json_object_get(p.header, "x5t")), want);
	assert_string_not_equal(json_string_value(json_array_get(json_object_get(p.header, "x5c"), 0)),
				"QUFB");
	jws_parsed_clear(&p);
	json_decref(v);
	/* a key without a certificate: no certificate member at all */
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"header\":{\"x5t#S256\":\"bogus\"}}",
		 "bad_request", "no certificate");

	/* include = none, algs = RS512, PS256 */
	pol_key_init(&pol);
	pol.include = 0;
	pol.algs = JWA_BIT(JWA_RS512) | JWA_BIT(JWA_PS256);
	assert_int_equal(kr_key_configure(k, &pol, JWA_NONE, NULL), 0);
	err_case("{\"op\":\"sign\",\"key\":\"rsa\",\"alg\":\"RS512\",\"header\":{\"x5c\":[\"QUFB\"]}}",
		 "policy_violation", "header parameter x5c may not be set (policy include)");
	err_case("{\"op\":\"sign\",\"key\":\"rsa\",\"alg\":\"RS512\",\"header\":{\"x5t\":\"a\"}}",
		 "policy_violation", "header parameter x5t may not be set");
	err_case("{\"op\":\"sign\",\"key\":\"rsa\",\"alg\":\"RS512\",\"header\":{\"x5t#S256\":\"a\"}}",
		 "policy_violation", "header parameter x5t#S256 may not be set");
	/* keys shows what the policy lets a client sign with, not all the
	 * token can do, and a default among them */
	v = call("{\"op\":\"keys\"}");
	keys = json_object_get(v, "keys");
	for (size_t i = 0; i < json_array_size(keys); i++) {
		json_t *e = json_array_get(keys, i);

		if (strcmp(json_string_value(json_object_get(e, "name")), "rsa") != 0)
			continue;
		assert_int_equal(json_array_size(json_object_get(e, "algs")), 2);
		assert_string_equal(json_string_value(json_array_get(json_object_get(e, "algs"), 0)),
				    "RS512");
		assert_string_equal(json_string_value(json_array_get(json_object_get(e, "algs"), 1)),
				    "PS256");
		assert_string_equal(json_string_value(json_object_get(e, "alg")), "RS512");
	}
	json_decref(v);
	/* back to the defaults for the other tests */
	assert_int_equal(kr_key_configure(k, NULL, JWA_RS256, NULL), 0);
	v = call("{\"op\":\"keys\"}");
	keys = json_object_get(v, "keys");
	for (size_t i = 0; i < json_array_size(keys); i++) {
		json_t *e = json_array_get(keys, i);

		if (strcmp(json_string_value(json_object_get(e, "name")), "rsa") == 0)
			assert_int_equal(json_array_size(json_object_get(e, "algs")), 6);
	}
	json_decref(v);
	pol_key_clear(&pol);
}

static void test_bad_requests(void **state)
{
	char *deep, *big;

	(void)state;
	err_case("this is not json", "bad_request", "not valid JSON");
	err_case("", "bad_request", "not valid JSON");
	err_case("[1,2]", "bad_request", "JSON object");
	err_case("\"hello\"", "bad_request", "not valid JSON");
	err_case("{\"id\":1}", "bad_request", "missing field 'op'");
	err_case("{\"op\":5}", "bad_request", "'op' must be a string");
	err_case("{\"op\":\"fly\"}", "unknown_op", "fly");
	err_case("{\"op\":\"hello\",\"op\":\"keys\"}", "bad_request", "not valid JSON");
	err_case("{\"op\":\"sign\"}", "bad_request", "missing field 'key'");
	err_case("{\"op\":\"sign\",\"key\":[]}", "bad_request", "'key' must be a string");
	err_case("{\"op\":\"sign\",\"key\":\"nope\"}", "unknown_key", "nope");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"lifetme\":5}", "bad_request", "lifetme");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"alg\":\"HS256\"}", "unsupported_alg", "HS256");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"alg\":\"none\"}", "unsupported_alg", "none");
	err_case("{\"op\":\"sign\",\"key\":\"p384\",\"alg\":\"ES256\"}", "unsupported_alg", "ES384");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"alg\":1}", "bad_request", "'alg'");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"alg\":\"ES256\",\"header\":{\"alg\":\"ES384\"}}",
		 "bad_request", "differ");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"header\":{\"alg\":7}}", "bad_request", "alg");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"header\":[]}", "bad_request", "'header'");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"claims\":\"x\"}", "bad_request", "'claims'");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"lifetime\":-5}", "bad_request", "lifetime");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"lifetime\":0}", "bad_request", "lifetime");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"lifetime\":1e300}", "bad_request", "integer");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"lifetime\":9007199254740993}", "bad_request",
		 "lifetime");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"lifetime\":1.5}", "bad_request", "integer");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"lifetime\":\"300\"}", "bad_request", "integer");
	/* beyond int64: Jansson refuses to parse it */
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"lifetime\":99999999999999999999999}",
		 "bad_request", "not valid JSON");
	err_case("{\"op\":\"sign\",\"key\":\"rsa\",\"include\":\"x5t\"}", "bad_request", "array");
	err_case("{\"op\":\"sign\",\"key\":\"rsa\",\"include\":[\"x5u\"]}", "bad_request", "x5u");
	err_case("{\"op\":\"sign\",\"key\":\"rsa\",\"include\":[\"x5t\",\"x5t\"]}", "bad_request",
		 "twice");
	err_case("{\"op\":\"sign\",\"key\":\"rsa\",\"include\":[1]}", "bad_request", "strings");
	err_case("{\"op\":\"sign\",\"key\":\"p256\",\"claims\":{\"iat\":9223372036854775807}}",
		 "bad_request", "iat");

	/* 10,000 include entries */
	big = malloc(10000 * 6 + 64);
	strcpy(big, "{\"op\":\"sign\",\"key\":\"rsa\",\"include\":[");
	for (int i = 0; i < 10000; i++)
		strcat(big, i ? ",\"x5t\"" : "\"x5t\"");
	strcat(big, "]}");
	err_case(big, "bad_request", "at most 3");
	free(big);

	/* deep nesting */
	deep = malloc(20001);
	memset(deep, '[', 10000);
	memset(deep + 10000, ']', 10000);
	deep[20000] = '\0';
	err_case(deep, "bad_request", "not valid JSON");
	free(deep);
}

static void test_nul_utf8_and_size(void **state)
{
	static const char raw_nul[] = "{\"op\":\"he\0llo\"}";
	static const char bad_utf8[] = "{\"op\":\"h\xff\xfello\"}";
	json_t *v;
	char *big;

	(void)state;
	err_case("{\"op\":\"hel\\u0000lo\"}", "bad_request", "not valid JSON");
	v = call_raw(&me, raw_nul, sizeof(raw_nul) - 1);
	expect_error(v, "bad_request", "not valid JSON");
	json_decref(v);
	v = call_raw(&me, bad_utf8, sizeof(bad_utf8) - 1);
	expect_error(v, "bad_request", "not valid JSON");
	json_decref(v);
	big = malloc(PROTO_MAX_LINE + 2);
	memset(big, ' ', PROTO_MAX_LINE + 1);
	v = call_raw(&me, big, PROTO_MAX_LINE + 1);
	expect_error(v, "request_too_large", NULL);
	json_decref(v);
	free(big);
}

static void test_id_echoed_on_errors(void **state)
{
	json_t *v = call("{\"id\":{\"a\":[1,\"x\"]},\"op\":\"sign\",\"key\":\"zz\"}");
	json_t *want = json_loads("{\"a\":[1,\"x\"]}", 0, NULL);

	(void)state;
	expect_error(v, "unknown_key", NULL);
	assert_true(json_equal(json_object_get(v, "id"), want));
	json_decref(v);
	v = call("{\"id\":\"s\",\"op\":\"nope\"}");
	assert_string_equal(json_string_value(json_object_get(v, "id")), "s");
	json_decref(v);
	json_decref(want);
}

static void test_forbidden_peer(void **state)
{
	const proto_peer other = { .uid = 65534, .gid = 65534, .pid = 9 };
	const proto_peer root = { .uid = 0 };
	json_t *v;

	(void)state;
	v = call_raw(&other, "{\"id\":3,\"op\":\"keys\"}", 20);
	expect_error(v, "forbidden", "65534");
	assert_int_equal(json_integer_value(json_object_get(v, "id")), 3);
	json_decref(v);
	v = call_raw(&other, "garbage", 7);
	expect_error(v, "forbidden", NULL);
	json_decref(v);
	v = call_raw(&root, "{\"op\":\"hello\"}", 14);
	assert_true(json_is_true(json_object_get(v, "ok")));
	json_decref(v);
}

static void test_error_line_helper(void **state)
{
	char *line = NULL;
	size_t len = 0;

	(void)state;
	assert_int_equal(proto_error_line(NULL, P11J_E_BUSY, "too many", &line, &len), 0);
	assert_string_equal(line,
			    "{\"id\":null,\"ok\":false,\"error\":{\"code\":\"busy\",\"message\":\"too many\"}}\n");
	free(line);
}

/* DPoP proofs (op "dpop", RFC 9449). */
static const char dpop_ath_ex[] = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo";

static void test_dpop_off_by_default(void **state)
{
	(void)state;
	assert_false(env.dpop_default);
	err_case("{\"op\":\"dpop\",\"key\":\"p256\",\"htm\":\"POST\",\"htu\":\"https://a.example/t\"}",
		 "policy_violation", "key p256 may not make DPoP proofs (policy dpop; start the "
		 "agent with --allow-dpop)");
}

/* Check one proof as a verifier would: typ, alg, the key's public jwk and
 * nothing else in the header, the signature with that jwk, the claims. */
static void check_proof(const kr_key *k, json_t *v, const char *alg, const char *htm,
			const char *htu, const char *nonce, const char *ath, char *jti_out)
{
	const char *jwt = json_string_value(json_object_get(v, "jwt"));
	jws_parsed p = { 0 };
	const json_t *hj;
	json_t *pub;
	EVP_PKEY *vk = NULL;
	char *tp = NULL;
	const char *jti;
	uint8_t *raw = NULL;
	size_t rawn = 0;

	if (!json_is_true(json_object_get(v, "ok")))
		fail_msg("%s/%s: %s", k->name, alg,
			 json_string_value(json_object_get(json_object_get(v, "error"), "message")));
	assert_non_null(jwt);
	assert_int_equal(jws_parse(jwt, &p), 0);
	assert_string_equal(json_string_value(json_object_get(p.header, "typ")), "dpop+jwt");
	assert_string_equal(json_string_value(json_object_get(p.header, "alg")), alg);
	assert_int_equal(json_object_size(p.header), 3);
	hj = json_object_get(p.header, "jwk");
	pub = dpop_public_jwk(k->jwk);
	assert_true(json_equal(hj, pub));
	assert_null(json_object_get(hj, "kid"));
	assert_null(json_object_get(hj, "d"));
	assert_int_equal(jwk_to_pkey(hj, &vk), 0);
	assert_int_equal(jws_verify_sig(p.alg, vk, (const uint8_t *)jwt, p.signing_input_len, p.sig,
					p.sig_len), 0);
	/* jkt: the thumbprint of the header's jwk */
	assert_int_equal(jwk_thumbprint(hj, &tp), 0);
	assert_string_equal(json_string_value(json_object_get(v, "jkt")), tp);
	assert_string_equal(json_string_value(json_object_get(v, "alg")), alg);
	assert_string_equal(json_string_value(json_object_get(p.claims, "htm")), htm);
	assert_string_equal(json_string_value(json_object_get(p.claims, "htu")), htu);
	assert_string_equal(json_string_value(json_object_get(v, "htu")), htu);
	assert_int_equal(json_integer_value(json_object_get(p.claims, "iat")), PROTOENV_NOW);
	assert_int_equal(json_integer_value(json_object_get(v, "iat")), PROTOENV_NOW);
	jti = json_string_value(json_object_get(p.claims, "jti"));
	assert_non_null(jti);
	assert_string_equal(json_string_value(json_object_get(v, "jti")), jti);
	assert_int_equal(b64u_decode(jti, strlen(jti), &raw, &rawn), 0);
	assert_true(rawn >= 16); /* 128 bits at least */
	free(raw);
	if (jti_out != NULL)
		strcpy(jti_out, jti);
	if (nonce != NULL)
		assert_string_equal(json_string_value(json_object_get(p.claims, "nonce")), nonce);
	else
		assert_null(json_object_get(p.claims, "nonce"));
	if (ath != NULL)
		assert_string_equal(json_string_value(json_object_get(p.claims, "ath")), ath);
	else
		assert_null(json_object_get(p.claims, "ath"));
	/* no exp, no kid, nothing else */
	assert_int_equal(json_object_size(p.claims), 4 + (nonce != NULL) + (ath != NULL));
	free(tp);
	EVP_PKEY_free(vk);
	json_decref(pub);
	jws_parsed_clear(&p);
}

static void test_dpop_every_pair(void **state)
{
	char line[512], jti[64], prev[64] = "";
	json_t *v;

	(void)state;
	env.dpop_default = true;
	for (size_t i = 0; i < kr.n; i++) {
		const kr_key *k = kr.keys[i];

		for (int a = JWA_NONE + 1; a < JWA__COUNT; a++) {
			if (!(k->algs & JWA_BIT(a)))
				continue;
			snprintf(line, sizeof(line), "{\"op\":\"dpop\",\"key\":\"%s\",\"alg\":\"%s\","
				 "\"htm\":\"POST\",\"htu\":\"HTTPS://Server.Example:443/token?x=1#f\"}",
				 k->name, jwa_name((jwa_alg)a));
			v = call(line);
			check_proof(k, v, jwa_name((jwa_alg)a), "POST", "https://server.example/token",
				    NULL, NULL, jti);
			assert_string_not_equal(jti, prev);
			strcpy(prev, jti);
			json_decref(v);
		}
	}
	/* without alg: the key's default; nonce and ath when given */
	v = call("{\"id\":9,\"op\":\"dpop\",\"key\":\"p384\",\"htm\":\"GET\","
		 "\"htu\":\"http://127.0.0.1:8080/api\",\"nonce\":\"eyJ7S_zG.eyJH0-Z.HX4w-7v\"}");
	assert_int_equal(json_integer_value(json_object_get(v, "id")), 9);
	check_proof(kr_find(&kr, "p384"), v, "ES384", "GET", "http://127.0.0.1:8080/api",
		    "eyJ7S_zG.eyJH0-Z.HX4w-7v", NULL, NULL);
	json_decref(v);
	snprintf(line, sizeof(line), "{\"op\":\"dpop\",\"key\":\"ed\",\"htm\":\"DELETE\","
		 "\"htu\":\"https://r.example/x\",\"ath\":\"%s\"}", dpop_ath_ex);
	v = call(line);
	check_proof(kr_find(&kr, "ed"), v, "EdDSA", "DELETE", "https://r.example/x", NULL,
		    dpop_ath_ex, NULL);
	json_decref(v);
	snprintf(line, sizeof(line), "{\"op\":\"dpop\",\"key\":\"rsa\",\"alg\":\"PS256\",\"htm\":"
		 "\"POST\",\"htu\":\"https://r.example/x\",\"nonce\":\"n\",\"ath\":\"%s\"}",
		 dpop_ath_ex);
	v = call(line);
	check_proof(kr_find(&kr, "rsa"), v, "PS256", "POST", "https://r.example/x", "n",
		    dpop_ath_ex, NULL);
	json_decref(v);
	env.dpop_default = false;
}

static void test_dpop_bad_requests(void **state)
{
	static const char pre[] = "{\"op\":\"dpop\",\"key\":\"p256\",";
	static const struct {
		const char *rest, *code, *msg;
	} cases[] = {
		/* the header is the agent's: no jwk, header, typ, kid of the client's */
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"jwk\":{\"kty\":\"EC\"}}", "bad_request",
		  "field 'jwk' cannot be set" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"header\":{}}", "bad_request",
		  "field 'header' cannot be set" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"typ\":\"JWT\"}", "bad_request", "'typ'" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"kid\":\"x\"}", "bad_request", "'kid'" },
		/* nor the access token */
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"access_token\":\"t\"}", "bad_request",
		  "never the token" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"claims\":{}}", "bad_request", "'ath'" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"lifetime\":5}", "bad_request",
		  "unknown field 'lifetime'" },
		/* htm */
		{ "\"htu\":\"https://a/\"}", "bad_request", "missing field 'htm'" },
		{ "\"htm\":1,\"htu\":\"https://a/\"}", "bad_request", "'htm' must be a string" },
		{ "\"htm\":\"\",\"htu\":\"https://a/\"}", "bad_request", "htm" },
		{ "\"htm\":\"post\",\"htu\":\"https://a/\"}", "bad_request", "case-sensitive" },
		{ "\"htm\":\"PO ST\",\"htu\":\"https://a/\"}", "bad_request", "token" },
		{ "\"htm\":\"PO\\u0000ST\",\"htu\":\"https://a/\"}", "bad_request", "NUL" },
		/* htu */
		{ "\"htm\":\"POST\"}", "bad_request", "missing field 'htu'" },
		{ "\"htm\":\"POST\",\"htu\":[]}", "bad_request", "'htu' must be a string" },
		{ "\"htm\":\"POST\",\"htu\":\"/token\"}", "bad_request", "absolute" },
		{ "\"htm\":\"POST\",\"htu\":\"ftp://a/\"}", "bad_request", "http or https" },
		{ "\"htm\":\"POST\",\"htu\":\"https://u:p@a/\"}", "bad_request", "userinfo" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a:70000/\"}", "bad_request", "65535" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\\u00e9\"}", "bad_request", "non-ASCII" },
		/* nonce */
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"nonce\":\"\"}", "bad_request", "nonce" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"nonce\":5}", "bad_request",
		  "'nonce' must be a string" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"nonce\":\"a b\"}", "bad_request", "nonce" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"nonce\":\"a\\\"b\"}", "bad_request",
		  "nonce" },
		/* ath */
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"ath\":\"abc\"}", "bad_request", "ath" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"ath\":null}", "bad_request",
		  "'ath' must be a string" },
		{ "\"htm\":\"POST\",\"htu\":\"https://a/\",\"ath\":"
		  "\"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQ+o\"}", "bad_request", "base64url" },
		/* alg */
		{ "\"alg\":\"ES384\",\"htm\":\"POST\",\"htu\":\"https://a/\"}", "unsupported_alg",
		  "ES384 does not fit key 'p256'" },
		{ "\"alg\":\"none\",\"htm\":\"POST\",\"htu\":\"https://a/\"}", "unsupported_alg",
		  "none" },
		{ "\"alg\":\"HS256\",\"htm\":\"POST\",\"htu\":\"https://a/\"}", "unsupported_alg",
		  "HS256" },
		{ "\"alg\":7,\"htm\":\"POST\",\"htu\":\"https://a/\"}", "bad_request", "'alg'" },
	};
	char line[1024];

	(void)state;
	env.dpop_default = true;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(line, sizeof(line), "%s%s", pre, cases[i].rest);
		err_case(line, cases[i].code, cases[i].msg);
	}
	err_case("{\"op\":\"dpop\",\"htm\":\"POST\",\"htu\":\"https://a/\"}", "bad_request",
		 "missing field 'key'");
	err_case("{\"op\":\"dpop\",\"key\":\"zz\",\"htm\":\"POST\",\"htu\":\"https://a/\"}",
		 "unknown_key", "zz");
	env.dpop_default = false;
}

static void test_dpop_policy(void **state)
{
	kr_key *k = kr.keys[0]; /* rsa */
	const proto_peer other = { .uid = 2000, .gid = 2000, .pid = 5 };
	pol_key pol;
	json_t *v;
	char *resp = NULL;
	size_t rlen = 0;
	proto_audit aud = { 0 };
	uid_t uids[1] = { 2000 };
	static const char q_rsa[] = "{\"op\":\"dpop\",\"key\":\"rsa\",\"htm\":\"GET\","
				    "\"htu\":\"https://a/\"}";
	static const char q_p256[] = "{\"op\":\"dpop\",\"key\":\"p256\",\"htm\":\"GET\","
				     "\"htu\":\"https://a/\"}";
	static const char q_refused[] = "{\"op\":\"dpop\",\"key\":\"p256\",\"htm\":\"POST\","
					"\"htu\":\"https://b/\"}";

	(void)state;
	assert_string_equal(k->name, "rsa");
	pol_key_init(&pol);
	assert_false(pol.dpop);
	pol.algs = JWA_BIT(JWA_PS256);
	pol.uids = uids;
	pol.nuids = 1;
	assert_int_equal(kr_key_configure(k, &pol, JWA_NONE, "fixed-kid"), 0);
	/* a key with a policy follows its dpop rule, not --allow-dpop */
	env.dpop_default = true;
	err_case("{\"op\":\"dpop\",\"key\":\"rsa\",\"htm\":\"POST\",\"htu\":\"https://a/\"}",
		 "policy_violation", "key rsa may not make DPoP proofs (policy dpop; set dpop = yes");
	env.dpop_default = false;
	pol.dpop = true;
	/* the policy's algs: the default follows them, others are refused */
	err_case("{\"op\":\"dpop\",\"key\":\"rsa\",\"alg\":\"RS256\",\"htm\":\"POST\","
		 "\"htu\":\"https://a/\"}", "policy_violation", "alg RS256 not allowed for key rsa");
	v = call("{\"op\":\"dpop\",\"key\":\"rsa\",\"htm\":\"POST\",\"htu\":\"https://a/\"}");
	check_proof(k, v, "PS256", "POST", "https://a/", NULL, NULL, NULL);
	/* jkt is the thumbprint, whatever the configured kid */
	assert_string_equal(json_string_value(json_object_get(v, "jkt")), k->jkt);
	assert_string_not_equal(k->jkt, k->kid);
	json_decref(v);
	/* uids apply as for sign; a uid the policy names may make proofs */
	v = call_raw(&other, q_rsa, strlen(q_rsa));
	check_proof(k, v, "PS256", "GET", "https://a/", NULL, NULL, NULL);
	json_decref(v);
	v = call_raw(&other, q_p256, strlen(q_p256));
	expect_error(v, "forbidden", "policy uids");
	json_decref(v);

	/* the audit record: op, key, alg, jkt, htm, htu, jti, iat; never ath */
	{
		static const char req[] = "{\"op\":\"dpop\",\"key\":\"rsa\",\"htm\":\"POST\","
					  "\"htu\":\"HTTPS://A.example/t?secret=1\",\"nonce\":\"nn\","
					  "\"ath\":\"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo\"}";
		char *al = NULL;
		size_t alen = 0;
		json_t *a, *r;
		const char *name;
		json_t *val;

		assert_int_equal(proto_handle_ex(&env, &me, req, sizeof(req) - 1, &aud, &resp, &rlen),
				 0);
		r = json_loadb(resp, rlen, 0, NULL);
		assert_true(json_is_true(json_object_get(r, "ok")));
		assert_int_equal(aud.result, 0);
		assert_int_equal(audit_line(&aud, &me, PROTOENV_NOW * 1000, &al, &alen), 0);
		a = json_loadb(al, alen, 0, NULL);
		assert_non_null(a);
		{
			static const char *const want[] = { "time", "uid", "gid", "pid", "op", "key",
							    "alg", "jkt", "htm", "htu", "jti", "iat",
							    "result", NULL };
			size_t i = 0;

			json_object_foreach(a, name, val) {
				assert_non_null(want[i]);
				assert_string_equal(name, want[i]);
				i++;
			}
			assert_null(want[i]);
		}
		assert_string_equal(json_string_value(json_object_get(a, "op")), "dpop");
		assert_string_equal(json_string_value(json_object_get(a, "alg")), "PS256");
		assert_string_equal(json_string_value(json_object_get(a, "jkt")), k->jkt);
		assert_string_equal(json_string_value(json_object_get(a, "htu")), "https://a.example/t");
		assert_string_equal(json_string_value(json_object_get(a, "jti")),
				    json_string_value(json_object_get(r, "jti")));
		assert_int_equal(json_integer_value(json_object_get(a, "iat")), PROTOENV_NOW);
		assert_null(strstr(al, "fUHyO2r2"));
		assert_null(strstr(al, "secret"));
		assert_null(strstr(al, "eyJ"));
		json_decref(a);
		json_decref(r);
		free(al);
		free(resp);
		proto_audit_clear(&aud);
		/* a refused one: what was asked, and the code */
		assert_int_equal(proto_handle_ex(&env, &me, q_refused, strlen(q_refused), &aud, &resp,
						 &rlen), 0);
		assert_int_equal(aud.result, P11J_E_POLICY);
		assert_string_equal(json_string_value(json_object_get(aud.fields, "op")), "dpop");
		assert_string_equal(json_string_value(json_object_get(aud.fields, "htu")),
				    "https://b/");
		assert_string_equal(json_string_value(json_object_get(aud.fields, "jkt")),
				    kr_find(&kr, "p256")->jkt);
		assert_null(json_object_get(aud.fields, "jti"));
		free(resp);
		proto_audit_clear(&aud);
	}
	/* back to the defaults for the other tests */
	pol.uids = NULL;
	pol.nuids = 0;
	assert_int_equal(kr_key_configure(k, NULL, JWA_RS256, k->jkt), 0);
	pol_key_clear(&pol);
}

/* dpop = yes|no in a [key] section (agent/config.c) */
static void test_dpop_config(void **state)
{
	static const char good[] = "[key a]\nobject = a\ndpop = yes\n[key b]\nobject = b\n";
	static const char bad[] = "[key a]\nobject = a\ndpop = maybe\n[key b]\nobject = b\n"
				  "dpop = no\ndpop = no\n";
	cfg_config *cfg = NULL;
	char *errs = NULL;

	(void)state;
	assert_int_equal(cfg_load_string("t.conf", good, strlen(good), &cfg, &errs), 0);
	assert_true(cfg_find_key(cfg, "a")->pol.dpop);
	assert_false(cfg_find_key(cfg, "b")->pol.dpop);
	cfg_free(cfg);
	cfg = NULL;
	assert_int_equal(cfg_load_string("t.conf", bad, strlen(bad), &cfg, &errs),
			 P11J_E_BAD_REQUEST);
	assert_non_null(strstr(errs, "t.conf:3: 'dpop' must be yes or no, not 'maybe'"));
	assert_non_null(strstr(errs, "t.conf:7: 'dpop' given twice in [key b]"));
	free(errs);
}


/* ---- rotation: key states, reload, rescan of unknown keys ------------ */

static void test_rotation_config(void **state)
{
	static const char good[] = "[key a]\nobject = a\nstate = next\n"
				   "[key b]\nobject = b\nstate = retiring\n"
				   "retire_after = 2026-12-31T12:00:00+01:00\n"
				   "[key c]\nobject = c\n[key d]\nobject = d\nstate = active\n";
	static const char bad[] = "[key a]\nobject = a\nstate = old\n"
				  "[key b]\nobject = b\nstate = retiring\n"
				  "[key c]\nobject = c\nretire_after = 2026-12-31\n"
				  "[key d]\nobject = d\nstate = retiring\nretire_after = 31/12/2026\n"
				  "[key e]\nobject = e\nstate = next\nstate = next\n";
	cfg_config *cfg = NULL;
	char *errs = NULL;

	(void)state;
	assert_int_equal(cfg_load_string("t.conf", good, strlen(good), &cfg, &errs), 0);
	assert_int_equal(cfg_find_key(cfg, "a")->pol.state, POL_STATE_NEXT);
	assert_int_equal(cfg_find_key(cfg, "b")->pol.state, POL_STATE_RETIRING);
	assert_int_equal(cfg_find_key(cfg, "b")->pol.retire_after, 1798714800); /* 11:00Z */
	assert_int_equal(cfg_find_key(cfg, "c")->pol.state, POL_STATE_ACTIVE);
	assert_int_equal(cfg_find_key(cfg, "d")->pol.state, POL_STATE_ACTIVE);
	cfg_free(cfg);
	cfg = NULL;
	assert_int_equal(cfg_load_string("t.conf", bad, strlen(bad), &cfg, &errs),
			 P11J_E_BAD_REQUEST);
	assert_null(cfg);
	assert_non_null(strstr(errs, "t.conf:3: unknown state 'old' (active, next, retiring)"));
	assert_non_null(strstr(errs, "t.conf:6: [key b]: state = retiring needs retire_after"));
	assert_non_null(strstr(errs, "t.conf:9: [key c]: retire_after is only for state = "
				     "retiring"));
	assert_non_null(strstr(errs, "t.conf:13: retire_after: '31/12/2026' is not a date"));
	assert_non_null(strstr(errs, "t.conf:17: 'state' given twice in [key e]"));
	free(errs);
}

static void test_parse_time(void **state)
{
	static const struct {
		const char *s;
		int64_t t;
	} good[] = {
		{ "1970-01-01", 0 },
		{ "2026-12-31", 1798675200 },
		{ "2026-12-31T00:00:00Z", 1798675200 },
		{ "2026-12-31t00:00:00z", 1798675200 },
		{ "2026-12-31T01:00:00+01:00", 1798675200 },
		{ "2026-12-30T23:30:00-00:30", 1798675200 },
		{ "2026-12-31T00:00:00.987Z", 1798675200 },
		{ "2024-02-29", 1709164800 },
	};
	static const char *const bad[] = { "", "2026", "2026-12-31T00:00:00", "2026-13-01",
					   "2026-02-30", "2025-02-29", "2026-12-31T24:00:00Z",
					   "2026-12-31T00:00:00+1:00", "2026-12-31T00:00Z",
					   "2026-12-31 junk", "1969-12-31", "2026-12-31T00:00:00.Z",
					   "yesterday" };
	char buf[32];
	int64_t t;

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		t = -1;
		if (pol_parse_time(good[i].s, &t) != 0 || t != good[i].t)
			fail_msg("'%s': %lld, want %lld", good[i].s, (long long)t,
				 (long long)good[i].t);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (pol_parse_time(bad[i], &t) != P11J_E_BAD_REQUEST)
			fail_msg("'%s' parsed", bad[i]);
		assert_non_null(strstr(err_msg(), "is not a date"));
	}
	pol_format_time(1798675200, buf, sizeof(buf));
	assert_string_equal(buf, "2026-12-31T00:00:00Z");
	assert_string_equal(pol_state_name(POL_STATE_NEXT), "next");
	assert_int_equal(pol_state_from_name("retiring"), POL_STATE_RETIRING);
	assert_int_equal(pol_state_from_name("Active"), -1);
}

static const char *key_state(json_t *keys, const char *name)
{
	size_t i;
	json_t *k;

	json_array_foreach(keys, i, k)
		if (strcmp(json_string_value(json_object_get(k, "name")), name) == 0)
			return json_string_value(json_object_get(k, "state"));
	return NULL;
}

static void test_key_states(void **state)
{
	kr_key *nx = (kr_key *)kr_find(&kr, "p256"), *rt = (kr_key *)kr_find(&kr, "p384");
	pol_key pn, pr;
	json_t *v, *keys;

	(void)state;
	pol_key_init(&pn);
	pol_key_init(&pr);
	pn.state = POL_STATE_NEXT;
	pn.dpop = pr.dpop = true;
	pr.state = POL_STATE_RETIRING;
	pr.retire_after = PROTOENV_NOW + 60;
	assert_int_equal(kr_key_configure(nx, &pn, JWA_NONE, NULL), 0);
	assert_int_equal(kr_key_configure(rt, &pr, JWA_NONE, NULL), 0);

	v = call("{\"op\":\"keys\"}");
	keys = json_object_get(v, "keys");
	assert_string_equal(key_state(keys, "rsa"), "active");
	assert_string_equal(key_state(keys, "p256"), "next");
	assert_string_equal(key_state(keys, "p384"), "retiring");
	json_decref(v);
	v = call("{\"op\":\"keys\"}");
	{
		size_t i;
		json_t *k;

		json_array_foreach(json_object_get(v, "keys"), i, k)
			if (strcmp(json_string_value(json_object_get(k, "name")), "p384") == 0)
				assert_string_equal(json_string_value(json_object_get(k, "retire_after")),
						    "2023-11-14T22:14:20Z");
			else
				assert_null(json_object_get(k, "retire_after"));
	}
	json_decref(v);
	/* the JWKS publishes active, next and retiring keys alike */
	v = call("{\"op\":\"jwks\"}");
	assert_int_equal(json_array_size(json_object_get(v, "keys")), kr.n);
	json_decref(v);

	/* a next key signs when a request names it; a retiring one until its date */
	v = call("{\"op\":\"sign\",\"key\":\"p256\"}");
	assert_true(json_is_true(json_object_get(v, "ok")));
	json_decref(v);
	v = call("{\"op\":\"sign\",\"key\":\"p384\",\"claims\":{\"sub\":\"x\"}}");
	assert_true(json_is_true(json_object_get(v, "ok")));
	json_decref(v);
	v = call("{\"op\":\"dpop\",\"key\":\"p384\",\"htm\":\"POST\",\"htu\":\"https://a.example/t\"}");
	assert_true(json_is_true(json_object_get(v, "ok")));
	json_decref(v);

	/* after retire_after: refused, naming the date and the rule */
	pr.retire_after = PROTOENV_NOW;
	err_case("{\"op\":\"sign\",\"key\":\"p384\"}", "policy_violation",
		 "key p384 is retiring and signs nothing after 2023-11-14T22:13:20Z (policy "
		 "state = retiring, retire_after)");
	err_case("{\"op\":\"dpop\",\"key\":\"p384\",\"htm\":\"POST\",\"htu\":\"https://a.example/t\"}",
		 "policy_violation", "is retiring and signs nothing after");
	/* still published */
	v = call("{\"op\":\"jwks\",\"key\":\"p384\"}");
	assert_int_equal(json_array_size(json_object_get(v, "keys")), 1);
	json_decref(v);

	assert_int_equal(kr_key_configure(nx, NULL, JWA_NONE, NULL), 0);
	assert_int_equal(kr_key_configure(rt, NULL, JWA_NONE, NULL), 0);
	v = call("{\"op\":\"keys\"}");
	assert_string_equal(key_state(json_object_get(v, "keys"), "p384"), "active");
	json_decref(v);
	err_clear();
	/* the policies were on the stack: nothing points at them now */
	assert_null(nx->pol);
	assert_null(rt->pol);
}

static int reload_calls;

static int fake_reload(void *ud, json_t *resp)
{
	(void)ud;
	reload_calls++;
	json_object_set_new(resp, "added", json_pack("[s]", "new-key"));
	json_object_set_new(resp, "removed", json_array());
	return 0;
}

static void test_reload_op(void **state)
{
	static const proto_peer other = { .uid = 2000, .gid = 2000, .pid = 7 };
	kr_key *k = (kr_key *)kr_find(&kr, "ed");
	uid_t uids[1] = { 2000 };
	pol_key p;
	json_t *v;

	(void)state;
	err_case("{\"op\":\"reload\"}", "unknown_op", "this agent cannot reload");
	env.reload = fake_reload;
	v = call("{\"id\":9,\"op\":\"reload\"}");
	assert_true(json_is_true(json_object_get(v, "ok")));
	assert_int_equal(json_integer_value(json_object_get(v, "id")), 9);
	assert_string_equal(json_string_value(json_array_get(json_object_get(v, "added"), 0)),
			    "new-key");
	json_decref(v);
	assert_int_equal(reload_calls, 1);
	err_case("{\"op\":\"reload\",\"force\":true}", "bad_request", "unknown field 'force'");
	/* another uid that may use a key may still not reload */
	pol_key_init(&p);
	p.uids = uids;
	p.nuids = 1;
	k->pol = &p;
	v = call_raw(&other, "{\"op\":\"reload\"}", strlen("{\"op\":\"reload\"}"));
	expect_error(v, "forbidden", "only uid 1000 and root may reload the agent");
	json_decref(v);
	k->pol = NULL;
	assert_int_equal(reload_calls, 1);
	/* unknown_op lists reload */
	err_case("{\"op\":\"relaod\"}", "unknown_op", "status, reload)");
	env.reload = NULL;
}

static int rescans;
static EVP_PKEY *late_pk;
static int rescan_answer;

/* A rescan that finds key "late" on the token. */
static int fake_unknown_key(void *ud, const char *name)
{
	(void)ud;
	rescans++;
	if (rescan_answer == 1 && strcmp(name, "late") == 0 && kr_find(&kr, "late") == NULL) {
		late_pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		assert_int_equal(kr_add(&kr, "late", NULL, late_pk, NULL, 0, 0, softsign_fn, late_pk),
				 0);
	}
	return rescan_answer == 1 && kr_find(&kr, name) != NULL;
}

static void test_unknown_key_rescan(void **state)
{
	json_t *v;

	(void)state;
	/* without the callback: unknown_key, no rescan */
	err_case("{\"op\":\"sign\",\"key\":\"late\"}", "unknown_key", "no key named 'late'");
	env.unknown_key = fake_unknown_key;
	/* the rescan finds nothing: the first message stands */
	rescan_answer = 0;
	err_case("{\"op\":\"sign\",\"key\":\"late\"}", "unknown_key", "no key named 'late'");
	assert_int_equal(rescans, 1);
	/* role names and other ops do not ask for a rescan */
	err_case("{\"op\":\"sign\",\"key\":\"@active\"}", "unknown_key", "no key named '@active'");
	v = call("{\"op\":\"keys\"}");
	json_decref(v);
	assert_int_equal(rescans, 1);
	/* the rescan finds it: the same request is answered with it */
	rescan_answer = 1;
	v = call("{\"op\":\"sign\",\"key\":\"late\",\"claims\":{\"iss\":\"me\"}}");
	assert_true(json_is_true(json_object_get(v, "ok")));
	{
		jws_parsed jp = { 0 };

		assert_int_equal(jws_parse(json_string_value(json_object_get(v, "jwt")), &jp), 0);
		assert_string_equal(json_string_value(json_object_get(jp.header, "alg")), "ES256");
		jws_parsed_clear(&jp);
	}
	json_decref(v);
	assert_int_equal(rescans, 2);
	/* then it is known: no rescan */
	v = call("{\"op\":\"dpop\",\"key\":\"late\",\"htm\":\"GET\",\"htu\":\"https://a.example/\"}");
	expect_error(v, "policy_violation", "may not make DPoP proofs");
	json_decref(v);
	assert_int_equal(rescans, 2);
	env.unknown_key = NULL;
	/* drop "late" again (last in the list) */
	assert_string_equal(kr.keys[kr.n - 1]->name, "late");
	{
		keyring one = { .keys = &kr.keys[kr.n - 1], .n = 1 };
		kr_key **keep = kr.keys;

		kr.n--;
		one.keys = malloc(sizeof(*one.keys));
		one.keys[0] = keep[kr.n];
		kr_free(&one);
	}
	EVP_PKEY_free(late_pk);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hello),
		cmocka_unit_test(test_keys_and_jwks),
		cmocka_unit_test(test_sign_every_pair),
		cmocka_unit_test(test_claim_defaults_and_control),
		cmocka_unit_test(test_preserialised_header),
		cmocka_unit_test(test_include_certificate),
		cmocka_unit_test(test_client_certificate_members),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_nul_utf8_and_size),
		cmocka_unit_test(test_id_echoed_on_errors),
		cmocka_unit_test(test_forbidden_peer),
		cmocka_unit_test(test_error_line_helper),
		cmocka_unit_test(test_dpop_off_by_default),
		cmocka_unit_test(test_dpop_every_pair),
		cmocka_unit_test(test_dpop_bad_requests),
		cmocka_unit_test(test_dpop_policy),
		cmocka_unit_test(test_dpop_config),
		cmocka_unit_test(test_rotation_config),
		cmocka_unit_test(test_parse_time),
		cmocka_unit_test(test_key_states),
		cmocka_unit_test(test_reload_op),
		cmocka_unit_test(test_unknown_key_rescan),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
