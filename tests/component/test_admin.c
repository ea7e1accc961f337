/* SPDX-License-Identifier: MIT */
/*
 * Key lifecycle (pkcs11/admin.c) against a real SoftHSM2 token made by
 * softhsm-conf/mktoken in the build directory: key generation of every type
 * with the attributes read back through raw PKCS#11, refusals, and requests
 * and certificates checked with OpenSSL directly.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11-kit/pkcs11.h>

#include "common/err.h"
#include "common/util.h"
#include "pkcs11/admin.h"
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "support/testtoken.h"

#define MODULE TESTTOKEN_MODULE
#define URI TESTTOKEN_URI

static char tokdir[1024];
static char pinfile[1100];

/* SoftHSM 2.6.1 leaks in C_SignInit with Ed25519 keys; let LSan see the
 * whole stack so that tests/lsan.supp can match libsofthsm2.so. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "fast_unwind_on_malloc=0";
}

static const struct {
	adm_keytype type;
	const char *name;
	jwa_keykind kind;
	int sig_nid;
} types[] = {
    {ADM_KT_RSA2048, "rsa:2048", KEYKIND_RSA, NID_sha256WithRSAEncryption},
    {ADM_KT_RSA3072, "rsa:3072", KEYKIND_RSA, NID_sha256WithRSAEncryption},
    {ADM_KT_RSA4096, "rsa:4096", KEYKIND_RSA, NID_sha256WithRSAEncryption},
    {ADM_KT_P256, "ec:P-256", KEYKIND_P256, NID_ecdsa_with_SHA256},
    {ADM_KT_P384, "ec:P-384", KEYKIND_P384, NID_ecdsa_with_SHA384},
    {ADM_KT_P521, "ec:P-521", KEYKIND_P521, NID_ecdsa_with_SHA512},
    {ADM_KT_ED25519, "ed25519", KEYKIND_ED25519, NID_ED25519},
};

/* ---- helpers ---------------------------------------------------------- */

static tok_config base_cfg(void)
{
	tok_config c = {0};

	c.module_path = MODULE;
	c.uri = URI;
	c.pin_file = pinfile;
	return c;
}

static tok_ctx *open_any(void)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;
	int r = tok_open_any(&c, &ctx);

	if (r != 0)
		fail_msg("tok_open_any: %d %s", r, err_msg());
	return ctx;
}

static tok_ctx *open_keys(void)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;
	int r = tok_open(&c, &ctx);

	if (r != 0)
		fail_msg("tok_open: %d %s", r, err_msg());
	return ctx;
}

/* Objects on the token with this CKA_LABEL (any class), by raw PKCS#11. */
static size_t count_label(tok_ctx *ctx, const char *label)
{
	CK_SLOT_ID slot;
	CK_FUNCTION_LIST *f = tok_module(ctx, &slot);
	CK_SESSION_HANDLE s;
	CK_ATTRIBUTE t = {CKA_LABEL, (void *)label, strlen(label)};
	CK_OBJECT_HANDLE h[16];
	CK_ULONG n = 0;

	assert_int_equal(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
	assert_int_equal(f->C_FindObjectsInit(s, &t, 1), CKR_OK);
	assert_int_equal(f->C_FindObjects(s, h, 16, &n), CKR_OK);
	f->C_FindObjectsFinal(s);
	f->C_CloseSession(s);
	return n;
}

/* The public key object's flags, and that the private key's secret part
 * cannot be read. */
static void check_objects(tok_ctx *ctx, const char *label, bool rsa)
{
	CK_SLOT_ID slot;
	CK_FUNCTION_LIST *f = tok_module(ctx, &slot);
	CK_SESSION_HANDLE s;
	CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
	CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)},
	                     {CKA_LABEL, (void *)label, strlen(label)}};
	CK_OBJECT_HANDLE o;
	CK_ULONG n = 0;
	CK_BBOOL tokn = 0, priv = 1, verify = 0, enc = 1, wrap = 1;
	CK_ATTRIBUTE a[5] = {{CKA_TOKEN, &tokn, 1},
	                     {CKA_PRIVATE, &priv, 1},
	                     {CKA_VERIFY, &verify, 1},
	                     {CKA_ENCRYPT, &enc, 1},
	                     {CKA_WRAP, &wrap, 1}};
	uint8_t val[1024];
	CK_ATTRIBUTE v = {rsa ? CKA_PRIVATE_EXPONENT : CKA_VALUE, val, sizeof(val)};

	assert_int_equal(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
	assert_int_equal(f->C_FindObjectsInit(s, t, 2), CKR_OK);
	assert_int_equal(f->C_FindObjects(s, &o, 1, &n), CKR_OK);
	f->C_FindObjectsFinal(s);
	assert_int_equal(n, 1);
	assert_int_equal(f->C_GetAttributeValue(s, o, a, 5), CKR_OK);
	assert_true(tokn);
	assert_false(priv);
	assert_true(verify);
	assert_false(enc);
	assert_false(wrap);

	cls = CKO_PRIVATE_KEY;
	n = 0;
	assert_int_equal(f->C_FindObjectsInit(s, t, 2), CKR_OK);
	assert_int_equal(f->C_FindObjects(s, &o, 1, &n), CKR_OK);
	f->C_FindObjectsFinal(s);
	assert_int_equal(n, 1);
	assert_int_equal(f->C_GetAttributeValue(s, o, &v, 1), CKR_ATTRIBUTE_SENSITIVE);
	f->C_CloseSession(s);
}

/* ---- group setup ------------------------------------------------------ */

static int group_setup(void **state)
{
	(void)state;
	return testtoken_make("admin-token", tokdir, sizeof(tokdir), pinfile, sizeof(pinfile),
			      NULL, 0);
}

/* ---- parsing ---------------------------------------------------------- */

static void test_keytype_parse(void **state)
{
	static const char *const bad[] = {"rsa:1024", "rsa:2047", "ec:P-192", "ec:secp256k1",
	                                  "ed448",    "rsa",      "",         "rsa:2048 "};
	adm_keytype t = ADM_KT_NONE;
	size_t i;

	(void)state;
	for (i = 0; i < ARRAY_SIZE(types); i++) {
		t = ADM_KT_NONE;
		assert_int_equal(adm_keytype_parse(types[i].name, &t), 0);
		assert_int_equal(t, types[i].type);
		assert_string_equal(adm_keytype_name(t), types[i].name);
	}
	assert_int_equal(adm_keytype_parse("EC:p-384", &t), 0);
	assert_int_equal(t, ADM_KT_P384);
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		t = ADM_KT_NONE;
		assert_int_equal(adm_keytype_parse(bad[i], &t), P11J_E_BAD_REQUEST);
		assert_int_equal(t, ADM_KT_NONE);
		assert_non_null(strstr(err_msg(), "ed25519"));
	}
	assert_int_equal(adm_keytype_parse(NULL, &t), P11J_E_BAD_REQUEST);
}

static void test_id_parse(void **state)
{
	static const char *const bad[] = {"", "0", "abc", "0g", "zz", "0x01", "01 "};
	char longhex[2 * ADM_ID_MAX + 3];
	uint8_t *id = NULL;
	size_t len = 0, i;

	(void)state;
	assert_int_equal(adm_id_parse("0aFf10", &id, &len), 0);
	assert_int_equal(len, 3);
	assert_int_equal(id[0], 0x0a);
	assert_int_equal(id[1], 0xff);
	assert_int_equal(id[2], 0x10);
	free(id);
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		id = NULL;
		assert_int_equal(adm_id_parse(bad[i], &id, &len), P11J_E_BAD_REQUEST);
		assert_null(id);
	}
	memset(longhex, 'a', sizeof(longhex) - 1);
	longhex[2 * ADM_ID_MAX] = '\0';
	assert_int_equal(adm_id_parse(longhex, &id, &len), 0);
	assert_int_equal(len, ADM_ID_MAX);
	free(id);
	id = NULL;
	longhex[2 * ADM_ID_MAX] = 'a';
	longhex[2 * ADM_ID_MAX + 1] = 'a';
	longhex[2 * ADM_ID_MAX + 2] = '\0';
	assert_int_equal(adm_id_parse(longhex, &id, &len), P11J_E_BAD_REQUEST);
	assert_null(id);
}

static void test_subject_parse(void **state)
{
	static const char *const bad[] = {"", "CN=x", "/", "/CN=", "/CN", "/NOPE=x", "/=x"};
	X509_NAME *n = NULL;
	char buf[256];
	size_t i;

	(void)state;
	assert_int_equal(adm_subject_parse("/CN=svc one/O=Acme Ltd/C=GB", &n), 0);
	assert_int_equal(X509_NAME_entry_count(n), 3);
	assert_true(X509_NAME_get_text_by_NID(n, NID_commonName, buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "svc one");
	assert_true(X509_NAME_get_text_by_NID(n, NID_organizationName, buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "Acme Ltd");
	X509_NAME_free(n);
	n = NULL;
	assert_int_equal(adm_subject_parse("/CN=a\\/b", &n), 0);
	assert_true(X509_NAME_get_text_by_NID(n, NID_commonName, buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "a/b");
	X509_NAME_free(n);
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		n = NULL;
		assert_int_equal(adm_subject_parse(bad[i], &n), P11J_E_BAD_REQUEST);
		assert_null(n);
	}
}

/* ---- keygen ----------------------------------------------------------- */

static void test_open_any(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;

	(void)state;
	/* A URI that selects no key: tok_open refuses, tok_open_any (for key
	 * generation on an empty token) does not. */
	c.uri = "pkcs11:token=p11jwt-test;object=no-such-key";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_NOT_FOUND);
	assert_null(ctx);
	assert_int_equal(tok_open_any(&c, &ctx), 0);
	assert_non_null(ctx);
	assert_int_equal(tok_key_count(ctx), 0);
	tok_close(ctx);
}

static void test_keygen_every_type(void **state)
{
	char label[64], want[80];
	size_t i;

	(void)state;
	for (i = 0; i < ARRAY_SIZE(types); i++) {
		tok_ctx *ctx = open_any(), *ctx2;
		const tok_key *k;
		adm_key key = {0};
		adm_priv_flags fl;
		uint8_t sig[1024];
		size_t siglen = sizeof(sig), id_len = 0;
		EVP_MD_CTX *mc;
		const uint8_t *id;
		jwa_alg alg = jwa_default_for_kind(types[i].kind);
		int r;

		snprintf(label, sizeof(label), "gen-%zu", i);
		r = adm_keygen(ctx, types[i].type, label, NULL, 0, &key);
		if (r != 0)
			fail_msg("keygen %s: %d %s", types[i].name, r, err_msg());
		assert_non_null(key.pub);
		assert_int_equal(jwa_keykind_of(key.pub), types[i].kind);
		if (types[i].kind == KEYKIND_RSA)
			assert_int_equal(EVP_PKEY_get_bits(key.pub), atoi(types[i].name + 4));
		assert_int_equal(key.id_len, 8);
		snprintf(want, sizeof(want), "object=%s", label);
		assert_non_null(strstr(key.uri, want));
		assert_non_null(strstr(key.uri, "token=p11jwt-test"));
		assert_non_null(strstr(key.uri, "type=private"));

		/* what the token applied, read back */
		assert_int_equal(adm_priv_flags_get(ctx, label, &fl), 0);
		assert_true(fl.token);
		assert_true(fl.private_);
		assert_true(fl.sensitive);
		assert_false(fl.extractable);
		assert_true(fl.always_sensitive);
		assert_true(fl.never_extractable);
		assert_true(fl.sign);
		assert_false(fl.decrypt);
		assert_false(fl.unwrap);
		assert_false(fl.derive);
		check_objects(ctx, label, types[i].kind == KEYKIND_RSA);
		assert_int_equal(count_label(ctx, label), 2);
		tok_close(ctx);

		/* The token layer serves the new key with the same public key and
		 * CKA_ID, and its signatures verify with OpenSSL. */
		ctx2 = open_keys();
		k = tok_key_find(ctx2, label);
		assert_non_null(k);
		assert_false(tok_key_unsafe(k));
		assert_int_equal(EVP_PKEY_eq(tok_key_pubkey(k), key.pub), 1);
		id = tok_key_id(k, &id_len);
		assert_int_equal(id_len, key.id_len);
		assert_memory_equal(id, key.id, id_len);
		assert_int_equal(tok_sign(ctx2, k, alg, (const uint8_t *)"hello", 5, sig, &siglen),
		                 0);
		if (types[i].kind == KEYKIND_RSA || types[i].kind == KEYKIND_ED25519) {
			mc = EVP_MD_CTX_new();
			assert_int_equal(
			    EVP_DigestVerifyInit(mc, NULL,
			                         types[i].kind == KEYKIND_RSA ? EVP_sha256() : NULL,
			                         NULL, key.pub),
			    1);
			assert_int_equal(
			    EVP_DigestVerify(mc, sig, siglen, (const uint8_t *)"hello", 5), 1);
			assert_int_equal(
			    EVP_DigestVerifyInit(mc, NULL,
			                         types[i].kind == KEYKIND_RSA ? EVP_sha256() : NULL,
			                         NULL, key.pub),
			    1);
			assert_int_not_equal(
			    EVP_DigestVerify(mc, sig, siglen, (const uint8_t *)"hellO", 5), 1);
			EVP_MD_CTX_free(mc);
		}
		tok_close(ctx2);
		/* SoftHSM is no TPM: the template is the full one, no warning */
		assert_null(key.warning);
		adm_key_clear(&key);
		assert_null(key.pub);
	}
}

static void pad(CK_UTF8CHAR *f, size_t len, const char *s)
{
	memset(f, ' ', len);
	memcpy(f, s, strlen(s) < len ? strlen(s) : len);
}

/* The TPM test (tests/integration/test_tpm.py) runs on swtpm; these are the
 * other strings a TPM or a token that is none reports. */
static void test_info_says_tpm(void **state)
{
	CK_INFO mi;
	CK_TOKEN_INFO ti;

	(void)state;
	memset(&mi, 0, sizeof(mi));
	memset(&ti, 0, sizeof(ti));
	/* tpm2-pkcs11 1.9 on swtpm */
	pad(mi.manufacturerID, sizeof(mi.manufacturerID), "tpm2-software.github.io");
	pad(mi.libraryDescription, sizeof(mi.libraryDescription), "TPM2.0 Cryptoki");
	pad(ti.manufacturerID, sizeof(ti.manufacturerID), "IBM");
	pad(ti.model, sizeof(ti.model), "SW   TPM");
	assert_true(adm_info_says_tpm(&mi, &ti));
	/* a hardware TPM whose model names only the chip: the module says it */
	pad(ti.manufacturerID, sizeof(ti.manufacturerID), "Infineon");
	pad(ti.model, sizeof(ti.model), "SLB9670");
	assert_true(adm_info_says_tpm(&mi, &ti));
	assert_false(adm_info_says_tpm(NULL, &ti));
	/* another module on a TPM (opencryptoki's TPM token) */
	pad(ti.model, sizeof(ti.model), "IBM TPM");
	assert_true(adm_info_says_tpm(NULL, &ti));
	/* SoftHSM and NSS are not TPMs; "tpm" must stand inside one field */
	pad(mi.manufacturerID, sizeof(mi.manufacturerID), "SoftHSM");
	pad(mi.libraryDescription, sizeof(mi.libraryDescription), "Implementation of PKCS11");
	pad(ti.manufacturerID, sizeof(ti.manufacturerID), "SoftHSM project");
	pad(ti.model, sizeof(ti.model), "SoftHSM v2");
	assert_false(adm_info_says_tpm(&mi, &ti));
	pad(ti.manufacturerID, sizeof(ti.manufacturerID), "Mozilla Foundation");
	pad(ti.model, sizeof(ti.model), "NSS 3");
	assert_false(adm_info_says_tpm(&mi, &ti));
	mi.libraryDescription[sizeof(mi.libraryDescription) - 2] = 'T';
	mi.libraryDescription[sizeof(mi.libraryDescription) - 1] = 'P';
	assert_false(adm_info_says_tpm(&mi, &ti));
	assert_false(adm_info_says_tpm(NULL, NULL));
}

static void test_keygen_explicit_id(void **state)
{
	static const uint8_t id[] = {0xc0, 0xff, 0xee};
	tok_ctx *ctx = open_any();
	adm_key key = {0};

	(void)state;
	assert_int_equal(adm_keygen(ctx, ADM_KT_P256, "with-id", id, sizeof(id), &key), 0);
	assert_int_equal(key.id_len, sizeof(id));
	assert_memory_equal(key.id, id, sizeof(id));
	assert_non_null(strstr(key.uri, "id=%C0%FF%EE"));
	adm_key_clear(&key);
	tok_close(ctx);
}

static void test_keygen_duplicate_label(void **state)
{
	static const uint8_t id[] = {0x7a, 0x7a};
	tok_ctx *ctx = open_any();
	adm_key key = {0};

	(void)state;
	/* rsa-2048 is mktoken's key (and certificate) */
	assert_int_equal(count_label(ctx, "rsa-2048"), 3);
	assert_int_equal(adm_keygen(ctx, ADM_KT_P256, "rsa-2048", id, sizeof(id), &key),
	                 P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "labelled 'rsa-2048'"));
	assert_null(key.pub);
	assert_int_equal(count_label(ctx, "rsa-2048"), 3);
	/* a label made by keygen itself is refused the second time */
	assert_int_equal(adm_keygen(ctx, ADM_KT_ED25519, "twice", NULL, 0, &key), 0);
	adm_key_clear(&key);
	assert_int_equal(adm_keygen(ctx, ADM_KT_ED25519, "twice", NULL, 0, &key),
	                 P11J_E_BAD_REQUEST);
	assert_int_equal(count_label(ctx, "twice"), 2);
	tok_close(ctx);
}

static void test_keygen_duplicate_id(void **state)
{
	static const uint8_t id01[] = {0x01}, id05[] = {0x05}, fresh[] = {0x5e, 0x5e};
	tok_ctx *ctx = open_any();
	adm_key key = {0};

	(void)state;
	assert_int_equal(adm_keygen(ctx, ADM_KT_RSA2048, "dup-id", id01, 1, &key),
	                 P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "CKA_ID 01"));
	assert_int_equal(adm_keygen(ctx, ADM_KT_ED25519, "dup-id", id05, 1, &key),
	                 P11J_E_BAD_REQUEST);
	assert_int_equal(count_label(ctx, "dup-id"), 0);
	/* an id keygen made itself */
	assert_int_equal(adm_keygen(ctx, ADM_KT_P384, "id-first", fresh, sizeof(fresh), &key), 0);
	adm_key_clear(&key);
	assert_int_equal(adm_keygen(ctx, ADM_KT_P384, "id-second", fresh, sizeof(fresh), &key),
	                 P11J_E_BAD_REQUEST);
	assert_int_equal(count_label(ctx, "id-second"), 0);
	tok_close(ctx);
}

static void test_keygen_bad_args(void **state)
{
	static const uint8_t id[] = {0x6b};
	tok_ctx *ctx = open_any();
	adm_key key = {0};
	char longlabel[200];

	(void)state;
	assert_int_equal(adm_keygen(ctx, ADM_KT_NONE, "bad-type", NULL, 0, &key),
	                 P11J_E_BAD_REQUEST);
	assert_int_equal(adm_keygen(ctx, (adm_keytype)99, "bad-type", NULL, 0, &key),
	                 P11J_E_BAD_REQUEST);
	assert_int_equal(count_label(ctx, "bad-type"), 0);
	assert_int_equal(adm_keygen(ctx, ADM_KT_P256, "", NULL, 0, &key), P11J_E_BAD_REQUEST);
	assert_int_equal(adm_keygen(ctx, ADM_KT_P256, NULL, NULL, 0, &key), P11J_E_BAD_REQUEST);
	assert_int_equal(adm_keygen(ctx, ADM_KT_P256, "a\nb", NULL, 0, &key), P11J_E_BAD_REQUEST);
	assert_int_equal(adm_keygen(ctx, ADM_KT_P256, "tab\there", NULL, 0, &key),
	                 P11J_E_BAD_REQUEST);
	memset(longlabel, 'x', sizeof(longlabel) - 1);
	longlabel[sizeof(longlabel) - 1] = '\0';
	assert_int_equal(adm_keygen(ctx, ADM_KT_P256, longlabel, NULL, 0, &key),
	                 P11J_E_BAD_REQUEST);
	assert_int_equal(adm_keygen(ctx, ADM_KT_P256, "zero-id", id, 0, &key), P11J_E_BAD_REQUEST);
	assert_null(key.pub);
	tok_close(ctx);
}

/* ---- csr and cert ----------------------------------------------------- */

static void check_csr(tok_ctx *ctx, const tok_key *k, int nid)
{
	X509_NAME *subj = NULL;
	X509_REQ *req = NULL;
	const X509_ALGOR *alg = NULL;
	const ASN1_OBJECT *obj = NULL;
	unsigned char *der = NULL;
	const unsigned char *p;
	EVP_PKEY *pk;
	int len;

	assert_int_equal(adm_subject_parse("/CN=csr test/O=p11jwt", &subj), 0);
	if (adm_csr(ctx, k, subj, &req) != 0)
		fail_msg("csr for %s: %s", tok_key_name(k), err_msg());
	/* through DER and back, as a CA would read it */
	len = i2d_X509_REQ(req, &der);
	assert_true(len > 0);
	X509_REQ_free(req);
	p = der;
	req = d2i_X509_REQ(NULL, &p, len);
	assert_non_null(req);
	pk = X509_REQ_get0_pubkey(req);
	assert_int_equal(EVP_PKEY_eq(pk, tok_key_pubkey(k)), 1);
	assert_int_equal(X509_REQ_verify(req, pk), 1);
	X509_REQ_get0_signature(req, NULL, &alg);
	X509_ALGOR_get0(&obj, NULL, NULL, alg);
	assert_int_equal(OBJ_obj2nid(obj), nid);
	assert_int_equal(X509_NAME_cmp(X509_REQ_get_subject_name(req), subj), 0);
	/* the verifier can fail: a changed byte in the signed part */
	der[10] ^= 0x01;
	p = der;
	X509_REQ_free(req);
	req = d2i_X509_REQ(NULL, &p, len);
	assert_true(req == NULL || X509_REQ_verify(req, tok_key_pubkey(k)) != 1);
	X509_REQ_free(req);
	OPENSSL_free(der);
	X509_NAME_free(subj);
}

static void check_cert(tok_ctx *ctx, const tok_key *k, int nid)
{
	X509_NAME *subj = NULL;
	X509 *x = NULL;
	const X509_ALGOR *alg = NULL;
	const ASN1_OBJECT *obj = NULL;
	const ASN1_INTEGER *serial;
	BIGNUM *bn;
	int pday = 0, psec = 0;

	assert_int_equal(adm_subject_parse("/CN=cert test/O=p11jwt", &subj), 0);
	if (adm_cert(ctx, k, subj, 90, &x) != 0)
		fail_msg("cert for %s: %s", tok_key_name(k), err_msg());
	assert_int_equal(X509_get_version(x), X509_VERSION_3);
	assert_int_equal(X509_verify(x, tok_key_pubkey(k)), 1);
	assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), tok_key_pubkey(k)), 1);
	X509_get0_signature(NULL, &alg, x);
	X509_ALGOR_get0(&obj, NULL, NULL, alg);
	assert_int_equal(OBJ_obj2nid(obj), nid);
	X509_ALGOR_get0(&obj, NULL, NULL, X509_get0_tbs_sigalg(x));
	assert_int_equal(OBJ_obj2nid(obj), nid);
	assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), subj), 0);
	assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(x), subj), 0);
	/* positive 128-bit serial */
	serial = X509_get0_serialNumber(x);
	bn = ASN1_INTEGER_to_BN(serial, NULL);
	assert_non_null(bn);
	assert_false(BN_is_negative(bn));
	assert_int_equal(BN_num_bytes(bn), 16);
	BN_free(bn);
	/* 90 days from now */
	assert_int_equal(
	    ASN1_TIME_diff(&pday, &psec, X509_get0_notBefore(x), X509_get0_notAfter(x)), 1);
	assert_int_equal(pday, 90);
	assert_int_equal(psec, 0);
	assert_true(X509_cmp_current_time(X509_get0_notBefore(x)) <= 0);
	/* extensions: CA:FALSE and digitalSignature, both critical; SKI */
	assert_true(X509_get_extension_flags(x) & EXFLAG_BCONS);
	assert_false(X509_get_extension_flags(x) & EXFLAG_CA);
	assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE);
	assert_int_equal(X509_EXTENSION_get_critical(
	                     X509_get_ext(x, X509_get_ext_by_NID(x, NID_basic_constraints, -1))),
	                 1);
	assert_int_equal(
	    X509_EXTENSION_get_critical(X509_get_ext(x, X509_get_ext_by_NID(x, NID_key_usage, -1))),
	    1);
	assert_non_null(X509_get0_subject_key_id(x));
	assert_int_equal(adm_cert(ctx, k, subj, 0, &x), P11J_E_BAD_REQUEST);
	X509_free(x);
	X509_NAME_free(subj);
}

static void test_csr_and_cert(void **state)
{
	static const struct {
		const char *label;
		int nid;
	} keys[] = {
	    {"gen-0", NID_sha256WithRSAEncryption},
	    {"gen-3", NID_ecdsa_with_SHA256},
	    {"gen-4", NID_ecdsa_with_SHA384},
	    {"gen-5", NID_ecdsa_with_SHA512},
	    {"gen-6", NID_ED25519},
	    {"rsa-2048", NID_sha256WithRSAEncryption},
	};
	tok_ctx *ctx = open_keys();
	size_t i;

	(void)state;
	for (i = 0; i < ARRAY_SIZE(keys); i++) {
		const tok_key *k = tok_key_find(ctx, keys[i].label);

		if (k == NULL)
			fail_msg("key %s not found (test_keygen_every_type makes it)",
			         keys[i].label);
		check_csr(ctx, k, keys[i].nid);
		check_cert(ctx, k, keys[i].nid);
	}
	tok_close(ctx);
}

static void test_cert_store(void **state)
{
	tok_ctx *ctx = open_keys(), *ctx2;
	const tok_key *k, *other;
	X509_NAME *subj = NULL;
	X509 *x = NULL, *xo = NULL;
	unsigned char *der = NULL;
	const uint8_t *stored;
	size_t stored_len = 0;
	int len;

	(void)state;
	k = tok_key_find(ctx, "gen-3");
	other = tok_key_find(ctx, "gen-6");
	assert_non_null(k);
	assert_non_null(other);
	assert_null(tok_key_cert(k, NULL));
	assert_int_equal(adm_subject_parse("/CN=stored", &subj), 0);
	assert_int_equal(adm_cert(ctx, k, subj, 30, &x), 0);
	assert_int_equal(adm_cert(ctx, other, subj, 30, &xo), 0);
	/* a certificate for another key is refused */
	assert_int_equal(adm_cert_store(ctx, k, xo), P11J_E_BAD_REQUEST);
	assert_int_equal(adm_cert_store(ctx, k, x), 0);
	assert_int_equal(count_label(ctx, "gen-3"), 3);
	/* a second one for the same CKA_ID is refused */
	assert_int_equal(adm_cert_store(ctx, k, x), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "already holds a certificate"));
	/* rsa-2048 has mktoken's certificate */
	assert_int_equal(adm_cert_store(ctx, tok_key_find(ctx, "rsa-2048"), x), P11J_E_BAD_REQUEST);
	assert_int_equal(count_label(ctx, "gen-3"), 3);
	tok_close(ctx);

	/* the token layer pairs the certificate with the key */
	ctx2 = open_keys();
	k = tok_key_find(ctx2, "gen-3");
	assert_non_null(k);
	stored = tok_key_cert(k, &stored_len);
	assert_non_null(stored);
	len = i2d_X509(x, &der);
	assert_int_equal((size_t)len, stored_len);
	assert_memory_equal(der, stored, stored_len);
	tok_close(ctx2);
	OPENSSL_free(der);
	X509_free(x);
	X509_free(xo);
	X509_NAME_free(subj);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_keytype_parse),
	    cmocka_unit_test(test_info_says_tpm),
	    cmocka_unit_test(test_id_parse),
	    cmocka_unit_test(test_subject_parse),
	    cmocka_unit_test(test_open_any),
	    cmocka_unit_test(test_keygen_every_type),
	    cmocka_unit_test(test_keygen_explicit_id),
	    cmocka_unit_test(test_keygen_duplicate_label),
	    cmocka_unit_test(test_keygen_duplicate_id),
	    cmocka_unit_test(test_keygen_bad_args),
	    cmocka_unit_test(test_csr_and_cert),
	    cmocka_unit_test(test_cert_store),
	};

	return cmocka_run_group_tests(tests, group_setup, NULL);
}
