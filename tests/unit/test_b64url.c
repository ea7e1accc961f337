/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "jose/b64url.h"
#include "jose/jwa.h"

/* RFC 4648 section 10 vectors; base64url without the '=' padding. */
static const struct {
	const char *plain, *enc, *std;
} vectors[] = {
	{ "", "", "" },
	{ "f", "Zg", "Zg==" },
	{ "fo", "Zm8", "Zm8=" },
	{ "foo", "Zm9v", "Zm9v" },
	{ "foob", "Zm9vYg", "Zm9vYg==" },
	{ "fooba", "Zm9vYmE", "Zm9vYmE=" },
	{ "foobar", "Zm9vYmFy", "Zm9vYmFy" },
};

static void test_rfc4648_vectors(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(vectors); i++) {
		size_t n = strlen(vectors[i].plain), outlen = 99;
		char *s = NULL, buf[32];
		uint8_t *d = NULL;

		assert_int_equal(b64u_enc_len(n), strlen(vectors[i].enc));
		assert_int_equal(b64u_encode((const uint8_t *)vectors[i].plain, n, &s), 0);
		assert_string_equal(s, vectors[i].enc);
		free(s);
		assert_int_equal(b64u_encode_to((const uint8_t *)vectors[i].plain, n, buf),
				 strlen(vectors[i].enc));
		assert_string_equal(buf, vectors[i].enc);
		assert_int_equal(b64_std_encode((const uint8_t *)vectors[i].plain, n, &s), 0);
		assert_string_equal(s, vectors[i].std);
		free(s);
		assert_int_equal(b64u_decode(vectors[i].enc, strlen(vectors[i].enc), &d, &outlen),
				 0);
		assert_non_null(d);
		assert_int_equal(outlen, n);
		assert_memory_equal(d, vectors[i].plain, n);
		free(d);
	}
}

static void test_url_alphabet(void **state)
{
	static const uint8_t in[] = { 0xfb, 0xff, 0xbf };
	char *s = NULL;
	uint8_t *d = NULL;
	size_t n = 0;

	(void)state;
	assert_int_equal(b64u_encode(in, sizeof(in), &s), 0);
	assert_string_equal(s, "-_-_");
	free(s);
	assert_int_equal(b64_std_encode(in, sizeof(in), &s), 0);
	assert_string_equal(s, "+/+/");
	free(s);
	assert_int_equal(b64u_decode("-_-_", 4, &d, &n), 0);
	assert_int_equal(n, 3);
	assert_memory_equal(d, in, 3);
	free(d);
}

static void test_all_bytes_roundtrip(void **state)
{
	uint8_t all[256], *d = NULL;
	size_t n = 0;
	char *s = NULL;

	(void)state;
	for (int i = 0; i < 256; i++)
		all[i] = (uint8_t)i;
	/* Every prefix length exercises each tail case. */
	for (size_t len = 0; len <= 256; len++) {
		assert_int_equal(b64u_encode(all, len, &s), 0);
		assert_int_equal(strlen(s), b64u_enc_len(len));
		assert_int_equal(b64u_decode(s, strlen(s), &d, &n), 0);
		assert_int_equal(n, len);
		if (len > 0)
			assert_memory_equal(d, all, len);
		free(s);
		free(d);
	}
}

static void expect_reject(const char *in, const char *msg_part)
{
	uint8_t *d = (uint8_t *)0x1;
	size_t n = 77;

	err_clear();
	assert_int_equal(b64u_decode(in, strlen(in), &d, &n), P11J_E_BAD_JWT);
	/* ret_* untouched on failure */
	assert_ptr_equal(d, (uint8_t *)0x1);
	assert_int_equal(n, 77);
	if (strstr(err_msg(), msg_part) == NULL)
		fail_msg("\"%s\": message \"%s\" lacks \"%s\"", in, err_msg(), msg_part);
}

static void test_strict_rejects(void **state)
{
	(void)state;
	expect_reject("Zg==", "padded");
	expect_reject("Zm8=", "padded");
	expect_reject("Zm9v\n", "invalid character 0x0a");
	expect_reject("Zm 9v", "invalid character 0x20");
	expect_reject("Zm9 vY", "invalid character 0x20");
	expect_reject("Zm9\nvYg", "invalid character 0x0a");
	expect_reject("Zm9+", "invalid character 0x2b");
	expect_reject("Zm9/", "invalid character 0x2f");
	expect_reject("Zm9v*A", "invalid character 0x2a");
	expect_reject("A", "impossible length");
	expect_reject("Zm9vY", "impossible length");
	/* "Zh" decodes to 'f' but has non-zero unused bits (canonical is "Zg") */
	expect_reject("Zh", "trailing bits");
	expect_reject("Zm9", "trailing bits");
}

static void test_high_bytes_rejected(void **state)
{
	uint8_t *d = NULL;
	size_t n = 0;

	(void)state;
	assert_int_equal(b64u_decode("Zm\xc3\xa9", 4, &d, &n), P11J_E_BAD_JWT);
	/* An embedded NUL is an invalid character, not an end of string. */
	assert_int_equal(b64u_decode("Zm\0v", 4, &d, &n), P11J_E_BAD_JWT);
}

static void test_jwa_table(void **state)
{
	static const char *const names[] = { "RS256", "RS384", "RS512", "PS256", "PS384",
		"PS512", "ES256", "ES384", "ES512", "EdDSA" };

	(void)state;
	for (int a = JWA_RS256; a < JWA__COUNT; a++) {
		assert_string_equal(jwa_name((jwa_alg)a), names[a - 1]);
		assert_int_equal(jwa_from_name(names[a - 1]), a);
	}
	assert_string_equal(jwa_name(JWA_NONE), "none");
	assert_int_equal(jwa_from_name("none"), JWA_NONE);
	assert_int_equal(jwa_from_name("rs256"), JWA_NONE);
	assert_int_equal(jwa_from_name("HS256"), JWA_NONE);
	assert_int_equal(jwa_from_name(NULL), JWA_NONE);
	/* fetched implementations (not the EVP_shaNNN() stubs), the same one
	 * every time */
	assert_true(EVP_MD_is_a(jwa_md(JWA_RS256), "SHA256"));
	assert_true(EVP_MD_is_a(jwa_md(JWA_PS384), "SHA384"));
	assert_true(EVP_MD_is_a(jwa_md(JWA_ES512), "SHA512"));
	assert_ptr_equal(jwa_md(JWA_ES256), jwa_md(JWA_RS256));
	assert_ptr_not_equal(jwa_md(JWA_RS256), EVP_sha256());
	assert_int_equal(EVP_MD_get_size(jwa_md(JWA_PS512)), 64);
	assert_null(jwa_md(JWA_EDDSA));
	assert_null(jwa_md(JWA_NONE));
	assert_true(jwa_is_rsa(JWA_PS512));
	assert_false(jwa_is_rsa(JWA_ES256));
	assert_true(jwa_is_pss(JWA_PS256));
	assert_false(jwa_is_pss(JWA_RS512));
	assert_true(jwa_is_ec(JWA_ES384));
	assert_false(jwa_is_ec(JWA_EDDSA));
	assert_int_equal(jwa_sig_len(JWA_ES256), 64);
	assert_int_equal(jwa_sig_len(JWA_ES384), 96);
	assert_int_equal(jwa_sig_len(JWA_ES512), 132);
	assert_int_equal(jwa_sig_len(JWA_EDDSA), 64);
	assert_int_equal(jwa_sig_len(JWA_RS256), 0);
	assert_int_equal(jwa_algs_for_kind(KEYKIND_P256), JWA_BIT(JWA_ES256));
	assert_int_equal(jwa_algs_for_kind(KEYKIND_ED25519), JWA_BIT(JWA_EDDSA));
	assert_int_equal(jwa_algs_for_kind(KEYKIND_RSA) & JWA_BIT(JWA_ES256), 0);
	assert_true(jwa_algs_for_kind(KEYKIND_RSA) & JWA_BIT(JWA_PS512));
	assert_int_equal(jwa_algs_for_kind(KEYKIND_UNKNOWN), 0);
	assert_int_equal(jwa_default_for_kind(KEYKIND_RSA), JWA_RS256);
	assert_int_equal(jwa_default_for_kind(KEYKIND_P384), JWA_ES384);
	assert_int_equal(jwa_default_for_kind(KEYKIND_P521), JWA_ES512);
	assert_int_equal(jwa_default_for_kind(KEYKIND_ED25519), JWA_EDDSA);
	assert_int_equal(jwa_default_for_kind(KEYKIND_UNKNOWN), JWA_NONE);
}

static void test_jwa_keykind(void **state)
{
	EVP_PKEY *k;

	(void)state;
	k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	assert_non_null(k);
	assert_int_equal(jwa_keykind_of(k), KEYKIND_UNKNOWN);
	assert_int_equal(jwa_max_sig_len(k), 0);
	EVP_PKEY_free(k);
	k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	assert_int_equal(jwa_keykind_of(k), KEYKIND_RSA);
	assert_int_equal(jwa_max_sig_len(k), 256);
	EVP_PKEY_free(k);
	k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	assert_int_equal(jwa_keykind_of(k), KEYKIND_P384);
	assert_int_equal(jwa_max_sig_len(k), 96);
	EVP_PKEY_free(k);
	k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "secp256k1");
	assert_int_equal(jwa_keykind_of(k), KEYKIND_UNKNOWN);
	EVP_PKEY_free(k);
	k = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	assert_int_equal(jwa_keykind_of(k), KEYKIND_UNKNOWN);
	EVP_PKEY_free(k);
	assert_int_equal(jwa_keykind_of(NULL), KEYKIND_UNKNOWN);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc4648_vectors),
		cmocka_unit_test(test_url_alphabet),
		cmocka_unit_test(test_all_bytes_roundtrip),
		cmocka_unit_test(test_strict_rejects),
		cmocka_unit_test(test_high_bytes_rejected),
		cmocka_unit_test(test_jwa_table),
		cmocka_unit_test(test_jwa_keykind),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
