/* SPDX-License-Identifier: MIT */
/*
 * Token layer against a real SoftHSM2 token made by softhsm-conf/mktoken in
 * the build directory. Signatures are checked with OpenSSL directly (not
 * through jose/), so a bug shared by both sides cannot hide.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/pem.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#include "common/err.h"
#include "common/util.h"
#include "pkcs11/tok.h"
#include "pkcs11/tok-test.h"
#include "support/testtoken.h"

#define MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define URI "pkcs11:token=p11jwt-test"

static char tokdir[1024];
static char pinfile[1100];
static char pin[64];
static char tmpdir[1100];

/* SoftHSM 2.6.1 leaks an ASN1 string in C_SignInit with Ed25519 keys. With
 * ASan's default fast unwinding the leak's stack stops inside libcrypto, so
 * tests/lsan.supp cannot see that libsofthsm2.so called it; unwind fully. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "fast_unwind_on_malloc=0";
}

/* ---- helpers ---------------------------------------------------------- */

static void run_ok(const char *cmd)
{
	int rc = system(cmd);

	if (rc != 0)
		fail_msg("command failed (%d): %s", rc, cmd);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd;

	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
	assert_true(fd >= 0);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

struct logrec {
	int warnings;
	char last[512];
	char all[4096];
};

static void log_cb(int level, const char *msg, void *ud)
{
	struct logrec *l = ud;

	if (level == TOK_LOG_WARNING)
		l->warnings++;
	snprintf(l->last, sizeof(l->last), "%s", msg);
	if (strlen(l->all) + strlen(msg) + 2 < sizeof(l->all)) {
		strcat(l->all, msg);
		strcat(l->all, "\n");
	}
}

static tok_config base_cfg(void)
{
	tok_config c = {0};

	c.module_path = MODULE;
	c.uri = URI;
	c.pin_file = pinfile;
	return c;
}

#define open_ok testtoken_open_ok

static const EVP_MD *md_of(jwa_alg a)
{
	switch (a) {
	case JWA_RS256:
	case JWA_PS256:
	case JWA_ES256:
		return EVP_sha256();
	case JWA_RS384:
	case JWA_PS384:
	case JWA_ES384:
		return EVP_sha384();
	case JWA_RS512:
	case JWA_PS512:
	case JWA_ES512:
		return EVP_sha512();
	default:
		return NULL;
	}
}

/* Independent JWS signature check with OpenSSL: 1 good, 0 bad. */
static int verify(EVP_PKEY *pk, jwa_alg a, const uint8_t *in, size_t inlen, const uint8_t *sig,
                  size_t siglen)
{
	EVP_MD_CTX *mc = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pc = NULL;
	unsigned char *der = NULL;
	const uint8_t *s = sig;
	int len = 0, ok = 0;

	assert_non_null(mc);
	if (a >= JWA_ES256 && a <= JWA_ES512) {
		ECDSA_SIG *es = ECDSA_SIG_new();
		size_t half = siglen / 2;

		assert_non_null(es);
		assert_int_equal(ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)half, NULL),
		                                BN_bin2bn(sig + half, (int)half, NULL)),
		                 1);
		len = i2d_ECDSA_SIG(es, &der);
		ECDSA_SIG_free(es);
		assert_true(len > 0);
		s = der;
		siglen = (size_t)len;
	}
	assert_int_equal(EVP_DigestVerifyInit(mc, &pc, md_of(a), NULL, pk), 1);
	if (a >= JWA_PS256 && a <= JWA_PS512) {
		assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING), 1);
		assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST), 1);
		assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md(pc, md_of(a)), 1);
	}
	ok = EVP_DigestVerify(mc, s, siglen, in, inlen) == 1;
	OPENSSL_free(der);
	EVP_MD_CTX_free(mc);
	return ok;
}

static void sign_verify(tok_ctx *ctx, const tok_key *k, jwa_alg a, const char *msg)
{
	uint8_t sig[1024];
	size_t siglen = sizeof(sig);
	int r;

	r = tok_sign(ctx, k, a, (const uint8_t *)msg, strlen(msg), sig, &siglen);
	if (r != 0)
		fail_msg("%s with %s: %d %s", jwa_name(a), tok_key_name(k), r, err_msg());
	if (jwa_sig_len(a) != 0)
		assert_int_equal(siglen, jwa_sig_len(a));
	else
		assert_int_equal(siglen, (size_t)EVP_PKEY_get_size(tok_key_pubkey(k)));
	if (!verify(tok_key_pubkey(k), a, (const uint8_t *)msg, strlen(msg), sig, siglen))
		fail_msg("%s signature by %s does not verify", jwa_name(a), tok_key_name(k));
	/* The verifier can fail: a flipped bit must be caught. */
	sig[siglen / 2] ^= 0x01;
	if (verify(tok_key_pubkey(k), a, (const uint8_t *)msg, strlen(msg), sig, siglen))
		fail_msg("tampered %s signature by %s verifies", jwa_name(a), tok_key_name(k));
}

/* ---- group setup ------------------------------------------------------ */

static int group_setup(void **state)
{
	const char *build = getenv("P11JWT_BUILDDIR");
	char cmd[4096];

	(void)state;
	if (testtoken_make("tok-token", tokdir, sizeof(tokdir), pinfile, sizeof(pinfile), pin,
			   sizeof(pin)) < 0)
		return -1;
	/* A sixth key that breaks the rules: extractable. */
	if (testtoken_keypairgen(pin, "--key-type EC:prime256v1 --label unsafe-ec --id 0f "
				      "--usage-sign --extractable") < 0) {
		fprintf(stderr, "# cannot add the extractable key\n");
		return -1;
	}
	/* And one of a kind p11jwt does not serve: RSA under 2048 bits. */
	if (testtoken_keypairgen(pin, "--key-type rsa:1024 --label rsa-1024 --id 0e "
				      "--usage-sign") < 0) {
		fprintf(stderr, "# cannot add the RSA-1024 key\n");
		return -1;
	}
	if (build == NULL)
		build = ".";
	snprintf(tmpdir, sizeof(tmpdir), "%s/tests/tok-tmp", build);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", tmpdir, tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- tests ------------------------------------------------------------ */

static void test_open_lists_keys(void **state)
{
	static const struct {
		const char *name;
		jwa_keykind kind;
		uint8_t id;
	} want[] = {
	    {"rsa-2048", KEYKIND_RSA, 1},    {"ec-p256", KEYKIND_P256, 2},
	    {"ec-p384", KEYKIND_P384, 3},    {"ec-p521", KEYKIND_P521, 4},
	    {"ed25519", KEYKIND_ED25519, 5},
	};
	struct logrec lr = {0};
	tok_config c = base_cfg();
	tok_ctx *ctx;
	size_t i, idlen;

	(void)state;
	c.log = log_cb;
	c.log_ud = &lr;
	ctx = open_ok(&c);
	assert_string_equal(tok_label(ctx), "p11jwt-test");
	assert_int_equal(tok_key_count(ctx), 5);
	for (i = 0; i < ARRAY_SIZE(want); i++) {
		const tok_key *k = tok_key_find(ctx, want[i].name);
		const uint8_t *id;
		char buf[128];

		assert_non_null(k);
		assert_string_equal(tok_key_name(k), want[i].name);
		assert_int_equal(tok_key_kind(k), want[i].kind);
		assert_false(tok_key_unsafe(k));
		assert_non_null(tok_key_pubkey(k));
		id = tok_key_id(k, &idlen);
		assert_int_equal(idlen, 1);
		assert_int_equal(id[0], want[i].id);
		assert_int_equal(tok_key_algs(k), jwa_algs_for_kind(want[i].kind));
		snprintf(buf, sizeof(buf), "object=%s", want[i].name);
		assert_non_null(strstr(tok_key_uri(k), buf));
		assert_non_null(strstr(tok_key_uri(k), "token=p11jwt-test"));
		assert_non_null(strstr(tok_key_uri(k), "type=private"));
		snprintf(buf, sizeof(buf), "id=%%%02X", want[i].id);
		assert_non_null(strstr(tok_key_uri(k), buf));
	}
	assert_null(tok_key_find(ctx, "unsafe-ec"));
	assert_null(tok_key_find(ctx, "nope"));
	assert_null(tok_key_at(ctx, 5));
	/* The extractable key was skipped, and said so. */
	assert_true(lr.warnings >= 1);
	assert_non_null(strstr(lr.all, "unsafe-ec"));
	assert_non_null(strstr(lr.all, "extractable"));
	assert_null(tok_key_find(ctx, "rsa-1024"));
	assert_non_null(strstr(lr.all, "skipping key 'rsa-1024': unsupported kind"));
	assert_int_equal(tok_test_open_sessions(ctx), 1);
	tok_close(ctx);
}

static void test_sign_every_alg(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = open_ok(&c);
	size_t i, n = 0;
	int a;

	(void)state;
	for (i = 0; i < tok_key_count(ctx); i++) {
		const tok_key *k = tok_key_at(ctx, i);

		for (a = JWA_NONE + 1; a < JWA__COUNT; a++) {
			if (!(jwa_algs_for_kind(tok_key_kind(k)) & JWA_BIT(a)))
				continue;
			sign_verify(ctx, k, (jwa_alg)a, "eyJhbGciOiJ0ZXN0In0.eyJzdWIiOiJ4In0");
			sign_verify(ctx, k, (jwa_alg)a, "");
			n++;
		}
	}
	/* RSA: 6, three EC keys: 1 each, Ed25519: 1 */
	assert_int_equal(n, 10);
	tok_close(ctx);
}

static void test_rsa_raw_fallback(void **state)
{
	static const jwa_alg rs[] = {JWA_RS256, JWA_RS384, JWA_RS512};
	tok_config c = base_cfg();
	tok_ctx *ctx = open_ok(&c);
	const tok_key *k = tok_key_find(ctx, "rsa-2048");
	const char *msg = "header.payload";
	uint8_t a[512], b[512];
	size_t i, alen, blen;

	(void)state;
	assert_non_null(k);
	for (i = 0; i < ARRAY_SIZE(rs); i++) {
		alen = sizeof(a);
		blen = sizeof(b);
		tok_test_force_raw_rsa(ctx, false);
		assert_int_equal(
		    tok_sign(ctx, k, rs[i], (const uint8_t *)msg, strlen(msg), a, &alen), 0);
		tok_test_force_raw_rsa(ctx, true);
		assert_int_equal(
		    tok_sign(ctx, k, rs[i], (const uint8_t *)msg, strlen(msg), b, &blen), 0);
		assert_true(
		    verify(tok_key_pubkey(k), rs[i], (const uint8_t *)msg, strlen(msg), b, blen));
		/* PKCS#1 v1.5 is deterministic: the DigestInfo path must give
		 * the very bytes CKM_SHA*_RSA_PKCS gives. */
		assert_int_equal(alen, blen);
		assert_memory_equal(a, b, alen);
	}
	tok_close(ctx);
}

static void test_wrong_alg(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = open_ok(&c);
	uint8_t sig[1024];
	size_t siglen = sizeof(sig);
	const uint8_t m[] = "x";

	(void)state;
	assert_int_equal(tok_sign(ctx, tok_key_find(ctx, "ec-p384"), JWA_ES256, m, 1, sig, &siglen),
	                 P11J_E_UNSUPPORTED_ALG);
	assert_string_equal(err_msg(), "ES256 does not fit key 'ec-p384' (P-384); use ES384");
	assert_int_equal(tok_sign(ctx, tok_key_find(ctx, "ec-p256"), JWA_RS256, m, 1, sig, &siglen),
	                 P11J_E_UNSUPPORTED_ALG);
	assert_int_equal(
	    tok_sign(ctx, tok_key_find(ctx, "rsa-2048"), JWA_EDDSA, m, 1, sig, &siglen),
	    P11J_E_UNSUPPORTED_ALG);
	assert_non_null(strstr(err_msg(), "use RS256"));
	assert_int_equal(tok_sign(ctx, tok_key_find(ctx, "ed25519"), JWA_ES256, m, 1, sig, &siglen),
	                 P11J_E_UNSUPPORTED_ALG);
	assert_int_equal(tok_sign(ctx, tok_key_find(ctx, "ec-p521"), JWA_NONE, m, 1, sig, &siglen),
	                 P11J_E_UNSUPPORTED_ALG);
	assert_int_equal(
	    tok_sign(ctx, tok_key_find(ctx, "ec-p521"), JWA__COUNT, m, 1, sig, &siglen),
	    P11J_E_UNSUPPORTED_ALG);
	/* Buffer smaller than the signature: refused before touching the token. */
	siglen = 63;
	assert_int_equal(tok_sign(ctx, tok_key_find(ctx, "ec-p256"), JWA_ES256, m, 1, sig, &siglen),
	                 P11J_E_INTERNAL);
	assert_int_equal(siglen, 63);
	siglen = sizeof(sig);
	assert_int_equal(tok_sign(ctx, NULL, JWA_ES256, m, 1, sig, &siglen), P11J_E_BAD_REQUEST);
	tok_close(ctx);
}

static void test_signer_fn(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = open_ok(&c);
	tok_signer s = {ctx, tok_key_find(ctx, "ed25519")};
	uint8_t sig[64];
	size_t siglen = sizeof(sig);

	(void)state;
	assert_int_equal(tok_signer_fn(&s, JWA_EDDSA, (const uint8_t *)"abc", 3, sig, &siglen), 0);
	assert_int_equal(siglen, 64);
	assert_true(verify(tok_key_pubkey(s.key), JWA_EDDSA, (const uint8_t *)"abc", 3, sig, 64));
	assert_int_equal(tok_signer_fn(NULL, JWA_EDDSA, (const uint8_t *)"abc", 3, sig, &siglen),
	                 P11J_E_BAD_REQUEST);
	tok_close(ctx);
}

static void test_wrong_pin(void **state)
{
	char path[1200];
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;

	(void)state;
	snprintf(path, sizeof(path), "%s/wrong-pin", tmpdir);
	write_file(path, "not-the-pin\n", 0600);
	c.pin_file = path;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_PIN_INCORRECT);
	assert_null(ctx);
	assert_string_equal(err_msg(), "C_Login on token 'p11jwt-test' failed: CKR_PIN_INCORRECT");
	/* The same wrong PIN is not sent to the token a second time. */
	assert_int_equal(tok_open(&c, &ctx), P11J_E_PIN_INCORRECT);
	assert_non_null(strstr(err_msg(), "already rejected this PIN"));
	/* The right PIN still works afterwards (nothing was locked). */
	c.pin_file = pinfile;
	tok_close(open_ok(&c));
}

static void test_no_pin(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;

	(void)state;
	c.pin_file = NULL;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_PIN_REQUIRED);
	assert_null(ctx);
	assert_non_null(strstr(err_msg(), "needs a PIN"));
	/* P11JWT_PIN is the last resort. */
	setenv("P11JWT_PIN", pin, 1);
	tok_close(open_ok(&c));
	unsetenv("P11JWT_PIN");
}

static void test_pin_from_uri(void **state)
{
	char uri[1400];
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;

	(void)state;
	c.pin_file = NULL;
	snprintf(uri, sizeof(uri), "pkcs11:token=p11jwt-test?pin-source=file:%s", pinfile);
	c.uri = uri;
	tok_close(open_ok(&c));
	snprintf(uri, sizeof(uri), "pkcs11:token=p11jwt-test?pin-source=%s", pinfile);
	tok_close(open_ok(&c));
	snprintf(uri, sizeof(uri), "pkcs11:token=p11jwt-test?pin-value=%s", pin);
	tok_close(open_ok(&c));
	/* A wrong pin-value never reaches an error message. */
	c.uri = "pkcs11:token=p11jwt-test;object=nope?pin-value=s3cr3t-value";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_PIN_INCORRECT);
	assert_null(strstr(err_msg(), "s3cr3t"));
	c.uri = "pkcs11:token=p11jwt-test?pin-source=https://example.com/pin";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_BAD_REQUEST);
	assert_null(ctx);
}

static void test_pin_file_checks(void **state)
{
	char path[1200];
	char text[80];
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;

	(void)state;
	snprintf(path, sizeof(path), "%s/pin-0644", tmpdir);
	snprintf(text, sizeof(text), "%s\n", pin);
	write_file(path, text, 0644);
	c.pin_file = path;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_INSECURE);
	assert_null(ctx);
	assert_non_null(strstr(err_msg(), "chmod 600"));

	snprintf(path, sizeof(path), "%s/pin-missing", tmpdir);
	unlink(path);
	assert_int_equal(tok_open(&c, &ctx), P11J_E_NOT_FOUND);

	snprintf(path, sizeof(path), "%s/pin-empty", tmpdir);
	write_file(path, "\n", 0600);
	assert_int_equal(tok_open(&c, &ctx), P11J_E_BAD_REQUEST);

	/* Only the first line counts; CRLF is fine. */
	snprintf(path, sizeof(path), "%s/pin-crlf", tmpdir);
	snprintf(text, sizeof(text), "%s\r\nsecond line\n", pin);
	write_file(path, text, 0600);
	tok_close(open_ok(&c));
}

static void test_module_allowlist(void **state)
{
	char dir[1200], copy[1300], cmd[3000], link[1300];
	const char *allow[] = {NULL, NULL};
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/mods", tmpdir);
	snprintf(copy, sizeof(copy), "%s/libsofthsm2.so", dir);
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && cp %s '%s'", dir, MODULE, copy);
	run_ok(cmd);
	c.module_path = copy;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_MODULE);
	assert_null(ctx);
	assert_non_null(strstr(err_msg(), "--module-allow"));
	assert_non_null(strstr(err_msg(), copy));

	allow[0] = dir;
	c.module_allow = allow;
	ctx = open_ok(&c);
	assert_int_equal(tok_key_count(ctx), 5);
	tok_close(ctx);
	ctx = NULL;

	/* The check is on the resolved path: a link into /usr/lib is fine,
	 * a link out of an allowed directory is not. */
	c.module_allow = NULL;
	snprintf(link, sizeof(link), "%s/link.so", dir);
	unlink(link);
	assert_int_equal(symlink(MODULE, link), 0);
	c.module_path = link;
	tok_close(open_ok(&c));
	unlink(link);
	assert_int_equal(symlink(copy, link), 0);
	allow[0] = "/usr/lib";
	c.module_allow = allow;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_MODULE);

	c.module_path = "/nonexistent/libnothing.so";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_MODULE);
	assert_non_null(strstr(err_msg(), "/nonexistent/libnothing.so"));

	/* Allowed but not a PKCS#11 module. */
	snprintf(cmd, sizeof(cmd), "cp /bin/true '%s/notamodule.so'", dir);
	run_ok(cmd);
	snprintf(copy, sizeof(copy), "%s/notamodule.so", dir);
	allow[0] = dir;
	c.module_path = copy;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_MODULE);
	assert_null(ctx);
}

static void test_uri_selects(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;

	(void)state;
	c.uri = "pkcs11:token=p11jwt-test;object=ec-p256";
	ctx = open_ok(&c);
	assert_int_equal(tok_key_count(ctx), 1);
	assert_string_equal(tok_key_name(tok_key_at(ctx, 0)), "ec-p256");
	tok_close(ctx);

	c.uri = "pkcs11:token=p11jwt-test;id=%03;type=private";
	ctx = open_ok(&c);
	assert_int_equal(tok_key_count(ctx), 1);
	assert_string_equal(tok_key_name(tok_key_at(ctx, 0)), "ec-p384");
	tok_close(ctx);

	/* The module can come from the URI. */
	c.module_path = NULL;
	c.uri = "pkcs11:token=p11jwt-test;object=ed25519?module-path=" MODULE;
	ctx = open_ok(&c);
	assert_int_equal(tok_key_count(ctx), 1);
	tok_close(ctx);
	c.module_path = MODULE;

	/* Or from p11-kit's registry (Debian's softhsm2 registers itself). */
	c.module_path = NULL;
	c.uri = "pkcs11:token=p11jwt-test?module-name=softhsm2";
	ctx = open_ok(&c);
	assert_int_equal(tok_key_count(ctx), 5);
	tok_close(ctx);
	ctx = NULL;
	c.uri = "pkcs11:token=p11jwt-test?module-name=no-such-module";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_MODULE);
	assert_null(ctx);
	assert_non_null(strstr(err_msg(), "'no-such-module'"));
	c.module_path = MODULE;

	c.uri = "pkcs11:token=p11jwt-test;object=no-such-key";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_NOT_FOUND);
	assert_non_null(strstr(err_msg(), "no usable signing key"));
}

static void test_uri_errors(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;

	(void)state;
	c.uri = "pkcs11:token=no-such-token";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_NOT_FOUND);
	assert_null(ctx);
	assert_non_null(
	    strstr(err_msg(), "no initialised token matches 'pkcs11:token=no-such-token'"));
	assert_non_null(strstr(err_msg(), "'p11jwt-test'"));

	c.uri = "https://example.com/";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_BAD_REQUEST);
	c.uri = "pkcs11:tokn=typo";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_BAD_REQUEST);
	c.uri = "pkcs11:token=%zz";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_BAD_REQUEST);
	assert_int_equal(tok_open(NULL, &ctx), P11J_E_BAD_REQUEST);
	assert_null(ctx);
	tok_close(NULL);
}

static void test_rsa_cert(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = open_ok(&c);
	const tok_key *k = tok_key_find(ctx, "rsa-2048");
	const uint8_t *der, *p;
	size_t len = 99, i;
	X509 *x, *fromfile;
	char path[1200];
	FILE *f;
	unsigned char *der2 = NULL;
	int len2;

	(void)state;
	der = tok_key_cert(k, &len);
	assert_non_null(der);
	assert_true(len > 100);
	p = der;
	x = d2i_X509(NULL, &p, (long)len);
	assert_non_null(x);
	assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), tok_key_pubkey(k)), 1);
	/* Self-signed by the token key. */
	assert_int_equal(X509_verify(x, tok_key_pubkey(k)), 1);
	/* The same certificate mktoken exported. */
	snprintf(path, sizeof(path), "%s/rsa-2048.crt", tokdir);
	f = fopen(path, "r");
	assert_non_null(f);
	fromfile = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(fromfile);
	len2 = i2d_X509(fromfile, &der2);
	assert_int_equal((size_t)len2, len);
	assert_memory_equal(der2, der, len);
	OPENSSL_free(der2);
	X509_free(fromfile);
	X509_free(x);
	for (i = 0; i < tok_key_count(ctx); i++) {
		const tok_key *o = tok_key_at(ctx, i);

		if (o != k)
			assert_null(tok_key_cert(o, &len));
	}
	assert_int_equal(len, 0);
	tok_close(ctx);
}

struct thr {
	tok_ctx *ctx;
	int id;
	int good;
	int bad;
};

static void *thr_main(void *arg)
{
	static const char *const names[] = {"ec-p256", "rsa-2048", "ed25519", "ec-p384"};
	static const jwa_alg algs[] = {JWA_ES256, JWA_PS256, JWA_EDDSA, JWA_ES384};
	struct thr *t = arg;
	int i;

	for (i = 0; i < 50; i++) {
		int w = (t->id + i) % 4;
		const tok_key *k = tok_key_find(t->ctx, names[w]);
		char msg[64];
		uint8_t sig[512];
		size_t siglen = sizeof(sig);

		snprintf(msg, sizeof(msg), "thread %d message %d", t->id, i);
		if (tok_sign(t->ctx, k, algs[w], (const uint8_t *)msg, strlen(msg), sig, &siglen) ==
		        0 &&
		    verify(tok_key_pubkey(k), algs[w], (const uint8_t *)msg, strlen(msg), sig,
		           siglen))
			t->good++;
		else
			t->bad++;
	}
	return NULL;
}

static void test_concurrent_signing(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = open_ok(&c);
	pthread_t th[8];
	struct thr t[8];
	int i, good = 0, bad = 0;
	size_t open_after;

	(void)state;
	for (i = 0; i < 8; i++) {
		t[i] = (struct thr){ctx, i, 0, 0};
		assert_int_equal(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
	}
	for (i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		good += t[i].good;
		bad += t[i].bad;
	}
	assert_int_equal(bad, 0);
	assert_int_equal(good, 400);
	/* Sessions were reused, not one per signature. */
	open_after = tok_test_open_sessions(ctx);
	assert_true(open_after >= 1 && open_after <= 8);
	tok_close(ctx);
}

static void test_unsafe_key(void **state)
{
	struct logrec lr = {0};
	tok_config c = base_cfg();
	tok_ctx *ctx;
	const tok_key *k;

	(void)state;
	c.allow_unsafe_keys = true;
	c.log = log_cb;
	c.log_ud = &lr;
	ctx = open_ok(&c);
	assert_int_equal(tok_key_count(ctx), 6);
	k = tok_key_find(ctx, "unsafe-ec");
	assert_non_null(k);
	assert_true(tok_key_unsafe(k));
	assert_false(tok_key_unsafe(tok_key_find(ctx, "ec-p256")));
	assert_true(lr.warnings >= 1);
	assert_non_null(strstr(lr.all, "serving key 'unsafe-ec'"));
	sign_verify(ctx, k, JWA_ES256, "served with a warning");
	tok_close(ctx);

	/* Selected explicitly but refused: nothing usable is left. */
	c.allow_unsafe_keys = false;
	c.uri = "pkcs11:token=p11jwt-test;object=unsafe-ec";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_NOT_FOUND);
}

static void test_no_login(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx;
	const tok_key *k;
	uint8_t sig[64];
	size_t siglen = sizeof(sig);

	(void)state;
	c.pin_file = NULL;
	c.no_login = true;
	ctx = open_ok(&c);
	/* Public halves (the extractable key's public key included). */
	assert_true(tok_key_count(ctx) >= 5);
	k = tok_key_find(ctx, "ec-p521");
	assert_non_null(k);
	assert_int_equal(tok_key_kind(k), KEYKIND_P521);
	assert_non_null(tok_key_cert(tok_key_find(ctx, "rsa-2048"), NULL));
	assert_int_equal(tok_sign(ctx, tok_key_find(ctx, "ed25519"), JWA_EDDSA,
	                          (const uint8_t *)"x", 1, sig, &siglen),
	                 P11J_E_PIN_REQUIRED);
	tok_close(ctx);
}

/* The keys mktoken made are really protected by the token: checked with
 * raw PKCS#11, not through tok. */
static void test_private_key_attributes(void **state)
{
	static const char *const labels[] = {"rsa-2048", "ec-p256", "ec-p384", "ec-p521",
	                                     "ed25519"};
	CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slots[8];
	CK_ULONG ns = 8, j, found = 0;
	CK_SESSION_HANDLE s = 0;
	size_t i;

	(void)state;
	f = p11_kit_module_load(MODULE, 0);
	assert_non_null(f);
	assert_int_equal(f->C_Initialize(&args), CKR_OK);
	assert_int_equal(f->C_GetSlotList(CK_TRUE, slots, &ns), CKR_OK);
	for (j = 0; j < ns; j++) {
		CK_TOKEN_INFO ti;

		assert_int_equal(f->C_GetTokenInfo(slots[j], &ti), CKR_OK);
		if (memcmp(ti.label, "p11jwt-test ", 12) == 0)
			break;
	}
	assert_true(j < ns);
	assert_int_equal(f->C_OpenSession(slots[j], CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
	assert_int_equal(f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin)), CKR_OK);
	for (i = 0; i < ARRAY_SIZE(labels); i++) {
		CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
		CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)},
		                     {CKA_LABEL, (void *)labels[i], strlen(labels[i])}};
		CK_OBJECT_HANDLE o;
		CK_ULONG n = 0;
		CK_BBOOL sens = 0, extr = 1, asens = 0, nextr = 0, sign = 0;
		CK_ATTRIBUTE a[5] = {{CKA_SENSITIVE, &sens, 1},
		                     {CKA_EXTRACTABLE, &extr, 1},
		                     {CKA_ALWAYS_SENSITIVE, &asens, 1},
		                     {CKA_NEVER_EXTRACTABLE, &nextr, 1},
		                     {CKA_SIGN, &sign, 1}};
		uint8_t val[1024];
		CK_ATTRIBUTE v = {i == 0 ? CKA_PRIVATE_EXPONENT : CKA_VALUE, val, sizeof(val)};

		assert_int_equal(f->C_FindObjectsInit(s, t, 2), CKR_OK);
		assert_int_equal(f->C_FindObjects(s, &o, 1, &n), CKR_OK);
		f->C_FindObjectsFinal(s);
		assert_int_equal(n, 1);
		assert_int_equal(f->C_GetAttributeValue(s, o, a, 5), CKR_OK);
		assert_true(sens);
		assert_false(extr);
		assert_true(asens);
		assert_true(nextr);
		assert_true(sign);
		/* The private value cannot be read. */
		assert_int_equal(f->C_GetAttributeValue(s, o, &v, 1), CKR_ATTRIBUTE_SENSITIVE);
		found++;
	}
	assert_int_equal(found, 5);
	f->C_Logout(s);
	f->C_CloseSession(s);
	f->C_Finalize(NULL);
	p11_kit_module_release(f);
}

/* ---- other modules' shapes: fewer mechanisms, init parameters --------- */

/* The fault module in front of SoftHSM (tests/faultmod), allowed. */
static char fault_dir[1100], fault_path[1200];

static tok_config fault_cfg(const char **allow)
{
	const char *build = getenv("P11JWT_BUILDDIR");
	tok_config c = base_cfg();

	snprintf(fault_dir, sizeof(fault_dir), "%s/tests/faultmod", build ? build : ".");
	snprintf(fault_path, sizeof(fault_path), "%s/libp11jfault.so", fault_dir);
	if (access(fault_path, R_OK) != 0)
		fail_msg("the fault module %s is not built", fault_path);
	allow[0] = fault_dir;
	allow[1] = NULL;
	c.module_allow = allow;
	c.module_path = fault_path;
	return c;
}

/* A token that lists CKM_RSA_PKCS_PSS but no CKM_SHA*_RSA_PKCS_PSS (NSS
 * softoken, p11-kit-client 0.24): PS* hash here and the token signs the
 * digest; the hidden mechanisms answer CKR_MECHANISM_INVALID, so a
 * signature can only come from the fallback. OpenSSL verifies each. */
static void test_pss_raw_fallback(void **state)
{
	static const jwa_alg ps[] = {JWA_PS256, JWA_PS384, JWA_PS512};
	const char *allow[2];
	tok_config c = fault_cfg(allow);
	const char *msg = "eyJhbGciOiJQUzI1NiJ9.eyJzdWIiOiJwc3MifQ";
	const tok_key *k;
	tok_ctx *ctx;
	size_t i;

	(void)state;
	setenv("P11JWT_FAULT_HIDE_MECHS",
	       "CKM_SHA256_RSA_PKCS_PSS,CKM_SHA384_RSA_PKCS_PSS,CKM_SHA512_RSA_PKCS_PSS", 1);
	ctx = open_ok(&c);
	k = tok_key_find(ctx, "rsa-2048");
	assert_non_null(k);
	for (i = 0; i < ARRAY_SIZE(ps); i++) {
		assert_true(tok_key_algs(k) & JWA_BIT(ps[i]));
		sign_verify(ctx, k, ps[i], msg);
	}
	/* PSS is randomised: two signatures differ, both verify */
	{
		uint8_t a[512], b[512];
		size_t al = sizeof(a), bl = sizeof(b);

		assert_int_equal(tok_sign(ctx, k, JWA_PS256, (const uint8_t *)msg, strlen(msg), a,
		                          &al), 0);
		assert_int_equal(tok_sign(ctx, k, JWA_PS256, (const uint8_t *)msg, strlen(msg), b,
		                          &bl), 0);
		assert_int_equal(al, bl);
		assert_memory_not_equal(a, b, al);
		assert_true(verify(tok_key_pubkey(k), JWA_PS256, (const uint8_t *)msg, strlen(msg),
		                   b, bl));
	}
	tok_close(ctx);
	unsetenv("P11JWT_FAULT_HIDE_MECHS");
}

/* A token that allows few sessions (a smartcard's 1, a network HSM's 16;
 * tests/faultmod "max_sessions"): 8 threads signing at once queue for the
 * pool's sessions, none fails with CKR_SESSION_COUNT, and the pool opens no
 * more than the token allows, whether the token says so in
 * ulMaxSessionCount or only answers CKR_SESSION_COUNT ("hidden"). */
static void pool_limit_case(const char *ctl_text, size_t want_max)
{
	const char *allow[2];
	tok_config c = fault_cfg(allow);
	char ctl[1200];
	pthread_t th[8];
	struct thr t[8];
	int i, good = 0, bad = 0;
	tok_ctx *ctx;

	snprintf(ctl, sizeof(ctl), "%s/pool-limit.ctl", tmpdir);
	write_file(ctl, ctl_text, 0600);
	setenv("P11JWT_FAULT_CTL", ctl, 1);
	ctx = open_ok(&c);
	for (i = 0; i < 8; i++) {
		t[i] = (struct thr){ctx, i, 0, 0};
		assert_int_equal(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
	}
	for (i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		good += t[i].good;
		bad += t[i].bad;
	}
	assert_int_equal(bad, 0);
	assert_int_equal(good, 400);
	assert_true(tok_test_open_sessions(ctx) >= 1);
	assert_true(tok_test_open_sessions(ctx) <= want_max);
	tok_close(ctx);
	unsetenv("P11JWT_FAULT_CTL");
	unlink(ctl);
}

static void test_pool_session_limit(void **state)
{
	(void)state;
	pool_limit_case("max_sessions 1\nlatency 1\n", 1);
	pool_limit_case("max_sessions 3\nlatency 0-2\n", 3);
	pool_limit_case("max_sessions 1 hidden\nlatency 1\n", 1);
	pool_limit_case("max_sessions 2 hidden\nlatency 1 serial\n", 2);
}

/* Forcing the raw mechanisms on SoftHSM (which has both) gives PS*
 * signatures that verify too. */
static void test_pss_forced_raw(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = open_ok(&c);
	const tok_key *k = tok_key_find(ctx, "rsa-2048");

	(void)state;
	tok_test_force_raw_rsa(ctx, true);
	sign_verify(ctx, k, JWA_PS256, "a.b");
	sign_verify(ctx, k, JWA_PS384, "a.b");
	sign_verify(ctx, k, JWA_PS512, "a.b");
	tok_close(ctx);
}

/* No PSS mechanism at all, no CKM_EDDSA: the key stays, without those
 * algs, and signing with one blames the token, not the key. */
static void test_no_mechanism(void **state)
{
	const char *allow[2];
	tok_config c = fault_cfg(allow);
	uint8_t sig[1024];
	size_t siglen = sizeof(sig);
	const tok_key *k;
	tok_ctx *ctx;

	(void)state;
	setenv("P11JWT_FAULT_HIDE_MECHS",
	       "CKM_SHA256_RSA_PKCS_PSS CKM_SHA384_RSA_PKCS_PSS CKM_SHA512_RSA_PKCS_PSS "
	       "CKM_RSA_PKCS_PSS CKM_EDDSA",
	       1);
	ctx = open_ok(&c);
	k = tok_key_find(ctx, "rsa-2048");
	assert_non_null(k);
	assert_false(tok_key_algs(k) & (JWA_BIT(JWA_PS256) | JWA_BIT(JWA_PS384) |
	                                JWA_BIT(JWA_PS512)));
	assert_true(tok_key_algs(k) & JWA_BIT(JWA_RS256));
	assert_int_equal(tok_sign(ctx, k, JWA_PS256, (const uint8_t *)"x", 1, sig, &siglen),
	                 P11J_E_UNSUPPORTED_ALG);
	assert_string_equal(err_msg(),
	                    "token 'p11jwt-test' has no mechanism for PS256 (its mechanism list "
	                    "has no CKM_SHA256_RSA_PKCS_PSS or CKM_RSA_PKCS_PSS), so key "
	                    "'rsa-2048' cannot sign PS256 there");
	sign_verify(ctx, k, JWA_RS256, "still.signs");
	k = tok_key_find(ctx, "ed25519");
	assert_non_null(k);
	assert_int_equal(tok_key_algs(k), 0);
	siglen = sizeof(sig);
	assert_int_equal(tok_sign(ctx, k, JWA_EDDSA, (const uint8_t *)"x", 1, sig, &siglen),
	                 P11J_E_UNSUPPORTED_ALG);
	assert_non_null(strstr(err_msg(), "token 'p11jwt-test' has no mechanism for EdDSA"));
	assert_non_null(strstr(err_msg(), "CKM_EDDSA"));
	tok_close(ctx);
	unsetenv("P11JWT_FAULT_HIDE_MECHS");
}

/* module_init_args reaches C_Initialize as pReserved: SoftHSM refuses any
 * pReserved with CKR_ARGUMENTS_BAD, so the string must have got there; the
 * error names the module. Without a module path it is refused. */
static void test_module_init_args(void **state)
{
	tok_config c = base_cfg();
	tok_ctx *ctx = NULL;

	(void)state;
	c.module_init_args = "configdir='sql:/nonexistent'";
	assert_int_equal(tok_open(&c, &ctx), P11J_E_MODULE);
	assert_null(ctx);
	/* the module is named by its real path */
	assert_non_null(strstr(err_msg(), "PKCS#11 module /usr/lib/"));
	assert_non_null(strstr(err_msg(), "/libsofthsm2.so: C_Initialize failed: "
	                                  "CKR_ARGUMENTS_BAD (check its initialisation "
	                                  "parameters)"));

	c.module_path = NULL;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "need a module path"));
	c.uri = URI "?module-path=" MODULE;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_MODULE);
	assert_non_null(strstr(err_msg(), "C_Initialize failed: CKR_ARGUMENTS_BAD"));
	assert_null(ctx);

	/* without: opens as always */
	c.module_init_args = NULL;
	tok_close(open_ok(&c));
}

static void test_mktoken_files(void **state)
{
	const char *src = getenv("P11JWT_SRCDIR");
	char cmd[3000];
	struct stat st;
	int rc;

	(void)state;
	if (src == NULL)
		src = "..";
	assert_int_equal(stat(pinfile, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_true(strlen(pin) >= 8);
	/* An existing token is not overwritten without --force. */
	snprintf(cmd, sizeof(cmd), "'%s/softhsm-conf/mktoken' '%s' >/dev/null 2>&1", src, tokdir);
	rc = system(cmd);
	assert_true(WIFEXITED(rc));
	assert_int_equal(WEXITSTATUS(rc), 2);
	snprintf(cmd, sizeof(cmd), "'%s/softhsm-conf/mktoken' >/dev/null 2>&1", src);
	rc = system(cmd);
	assert_int_equal(WEXITSTATUS(rc), 2);
}

static void test_ckr_names(void **state)
{
	(void)state;
	assert_string_equal(tok_ckr_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
	assert_string_equal(tok_ckr_name(CKR_OK), "CKR_OK");
	assert_string_equal(tok_ckr_name(CKR_DEVICE_REMOVED), "CKR_DEVICE_REMOVED");
	assert_string_equal(tok_ckr_name(CKR_BUFFER_TOO_SMALL), "CKR_BUFFER_TOO_SMALL");
	assert_string_equal(tok_ckr_name(CKR_VENDOR_DEFINED + 5), "CKR_VENDOR_DEFINED+0x5");
	assert_string_equal(tok_ckr_name(0x7777), "CKR_0x00007777");
	assert_int_equal(tok_ckr_to_err(CKR_OK), 0);
	assert_int_equal(tok_ckr_to_err(CKR_USER_ALREADY_LOGGED_IN), 0);
	assert_int_equal(tok_ckr_to_err(CKR_DEVICE_REMOVED), P11J_E_TOKEN_UNAVAILABLE);
	assert_int_equal(tok_ckr_to_err(CKR_DEVICE_ERROR), P11J_E_TOKEN_UNAVAILABLE);
	assert_int_equal(tok_ckr_to_err(CKR_TOKEN_NOT_PRESENT), P11J_E_TOKEN_UNAVAILABLE);
	assert_int_equal(tok_ckr_to_err(CKR_SESSION_HANDLE_INVALID), P11J_E_TOKEN_UNAVAILABLE);
	assert_int_equal(tok_ckr_to_err(CKR_SESSION_CLOSED), P11J_E_TOKEN_UNAVAILABLE);
	assert_int_equal(tok_ckr_to_err(CKR_USER_NOT_LOGGED_IN), P11J_E_TOKEN_UNAVAILABLE);
	assert_int_equal(tok_ckr_to_err(CKR_PIN_INCORRECT), P11J_E_PIN_INCORRECT);
	assert_int_equal(tok_ckr_to_err(CKR_PIN_LOCKED), P11J_E_PIN_INCORRECT);
	assert_int_equal(tok_ckr_to_err(CKR_MECHANISM_INVALID), P11J_E_UNSUPPORTED_ALG);
	assert_int_equal(tok_ckr_to_err(CKR_HOST_MEMORY), P11J_E_NOMEM);
	assert_int_equal(tok_ckr_to_err(CKR_GENERAL_ERROR), P11J_E_PKCS11);
	assert_int_equal(tok_ckr_to_err(CKR_VENDOR_DEFINED + 1), P11J_E_PKCS11);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ckr_names),
	    cmocka_unit_test(test_mktoken_files),
	    cmocka_unit_test(test_open_lists_keys),
	    cmocka_unit_test(test_sign_every_alg),
	    cmocka_unit_test(test_rsa_raw_fallback),
	    cmocka_unit_test(test_pss_raw_fallback),
	    cmocka_unit_test(test_pss_forced_raw),
	    cmocka_unit_test(test_pool_session_limit),
	    cmocka_unit_test(test_no_mechanism),
	    cmocka_unit_test(test_module_init_args),
	    cmocka_unit_test(test_wrong_alg),
	    cmocka_unit_test(test_signer_fn),
	    cmocka_unit_test(test_wrong_pin),
	    cmocka_unit_test(test_no_pin),
	    cmocka_unit_test(test_pin_from_uri),
	    cmocka_unit_test(test_pin_file_checks),
	    cmocka_unit_test(test_module_allowlist),
	    cmocka_unit_test(test_uri_selects),
	    cmocka_unit_test(test_uri_errors),
	    cmocka_unit_test(test_rsa_cert),
	    cmocka_unit_test(test_concurrent_signing),
	    cmocka_unit_test(test_unsafe_key),
	    cmocka_unit_test(test_no_login),
	    cmocka_unit_test(test_private_key_attributes),
	};

	return cmocka_run_group_tests(tests, group_setup, NULL);
}
