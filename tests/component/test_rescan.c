/* SPDX-License-Identifier: MIT */
/*
 * tok_rescan() (pkcs11/tok-keys.c) against a real SoftHSM2 token: a key
 * generated after tok_open is found and signs (checked with OpenSSL), a
 * key destroyed is marked gone and no longer listed, keys still there keep
 * their tok_key, the URI's object= filter holds in a rescan, and a thread
 * signing in a loop sees no failure while the list changes under it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>

#include <p11-kit/pkcs11.h>

#include "common/err.h"
#include "pkcs11/admin.h"
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "support/testtoken.h"

static char tokdir[1024];
static char pinfile[1100];

const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "fast_unwind_on_malloc=0";
}

static tok_config base_cfg(const char *uri)
{
	tok_config c = {0};

	c.module_path = TESTTOKEN_MODULE;
	c.uri = uri ? uri : TESTTOKEN_URI;
	c.pin_file = pinfile;
	return c;
}

/* An administrator's keygen, in a context of its own. */
static void keygen(const char *label, adm_keytype type)
{
	tok_config c = base_cfg(NULL);
	tok_ctx *adm = NULL;
	adm_key k = {0};
	int r;

	if ((r = adm_open(&c, &adm)) != 0)
		fail_msg("adm_open: %d %s", r, err_msg());
	if ((r = adm_keygen(adm, type, label, NULL, 0, &k)) != 0)
		fail_msg("adm_keygen %s: %d %s", label, r, err_msg());
	adm_key_clear(&k);
	tok_close(adm);
}

/* Destroy every object labelled label, by raw PKCS#11 on a logged-in
 * context's module. */
static void destroy_label(tok_ctx *ctx, const char *label)
{
	CK_SLOT_ID slot;
	CK_FUNCTION_LIST *f = tok_module(ctx, &slot);
	CK_SESSION_HANDLE s;
	CK_ATTRIBUTE t = {CKA_LABEL, (void *)label, strlen(label)};
	CK_OBJECT_HANDLE h[16];
	CK_ULONG n = 0;

	assert_int_equal(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
	                                  &s),
	                 CKR_OK);
	assert_int_equal(f->C_FindObjectsInit(s, &t, 1), CKR_OK);
	assert_int_equal(f->C_FindObjects(s, h, 16, &n), CKR_OK);
	f->C_FindObjectsFinal(s);
	assert_true(n >= 2); /* private and public key */
	for (CK_ULONG i = 0; i < n; i++)
		assert_int_equal(f->C_DestroyObject(s, h[i]), CKR_OK);
	f->C_CloseSession(s);
}

/* ES256 over msg with k, verified by OpenSSL: 1 good. */
static int sign_es256(tok_ctx *ctx, const tok_key *k, const char *msg)
{
	uint8_t sig[132], *der = NULL;
	size_t siglen = sizeof(sig);
	ECDSA_SIG *es;
	EVP_MD_CTX *mc;
	int len, ok;

	if (tok_sign(ctx, k, JWA_ES256, (const uint8_t *)msg, strlen(msg), sig, &siglen) != 0)
		return 0;
	es = ECDSA_SIG_new();
	ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
	len = i2d_ECDSA_SIG(es, &der);
	ECDSA_SIG_free(es);
	mc = EVP_MD_CTX_new();
	ok = len > 0 && EVP_DigestVerifyInit(mc, NULL, EVP_sha256(), NULL, tok_key_pubkey(k)) == 1 &&
	     EVP_DigestVerify(mc, der, (size_t)len, (const uint8_t *)msg, strlen(msg)) == 1;
	EVP_MD_CTX_free(mc);
	OPENSSL_free(der);
	return ok;
}

static int group_setup(void **state)
{
	(void)state;
	return testtoken_make("rescan-token", tokdir, sizeof(tokdir), pinfile, sizeof(pinfile),
	                      NULL, 0);
}

static void test_rescan_adds_and_removes(void **state)
{
	tok_config c = base_cfg(NULL);
	tok_ctx *ctx = testtoken_open_ok(&c);
	const tok_key *ec, *nk;
	size_t n0, added = 99, removed = 99;

	(void)state;
	n0 = tok_key_count(ctx);
	ec = tok_key_find(ctx, "ec-p256");
	assert_non_null(ec);
	assert_null(tok_key_find(ctx, "rot-new"));

	/* nothing changed: nothing added or removed, same pointers */
	assert_int_equal(tok_rescan(ctx, &added, &removed), 0);
	assert_int_equal(added, 0);
	assert_int_equal(removed, 0);
	assert_ptr_equal(tok_key_find(ctx, "ec-p256"), ec);
	assert_int_equal(tok_key_count(ctx), n0);

	keygen("rot-new", ADM_KT_P256);
	assert_null(tok_key_find(ctx, "rot-new")); /* not before a rescan */
	assert_int_equal(tok_rescan(ctx, &added, &removed), 0);
	assert_int_equal(added, 1);
	assert_int_equal(removed, 0);
	assert_int_equal(tok_key_count(ctx), n0 + 1);
	nk = tok_key_find(ctx, "rot-new");
	assert_non_null(nk);
	assert_false(tok_key_gone(nk));
	assert_true(sign_es256(ctx, nk, "signed by the new key"));
	assert_ptr_equal(tok_key_find(ctx, "ec-p256"), ec);
	assert_true(sign_es256(ctx, ec, "signed by the old key"));

	destroy_label(ctx, "rot-new");
	assert_int_equal(tok_rescan(ctx, &added, &removed), 0);
	assert_int_equal(added, 0);
	assert_int_equal(removed, 1);
	assert_null(tok_key_find(ctx, "rot-new"));
	assert_true(tok_key_gone(nk)); /* still readable: freed at tok_close */
	assert_string_equal(tok_key_name(nk), "rot-new");
	assert_int_equal(tok_key_count(ctx), n0);
	for (size_t i = 0; i < tok_key_count(ctx); i++)
		assert_string_not_equal(tok_key_name(tok_key_at(ctx, i)), "rot-new");
	assert_null(tok_key_at(ctx, n0));

	/* the same label again, a new key pair: a new tok_key */
	keygen("rot-new", ADM_KT_P256);
	assert_int_equal(tok_rescan(ctx, &added, &removed), 0);
	assert_int_equal(added, 1);
	assert_non_null(tok_key_find(ctx, "rot-new"));
	assert_ptr_not_equal(tok_key_find(ctx, "rot-new"), nk);
	assert_true(sign_es256(ctx, tok_key_find(ctx, "rot-new"), "the second rot-new"));
	destroy_label(ctx, "rot-new");
	assert_int_equal(tok_rescan(ctx, NULL, NULL), 0);
	tok_close(ctx);
}

static void test_rescan_keeps_uri_filter(void **state)
{
	tok_config c = base_cfg("pkcs11:token=p11jwt-test;object=ec-p256");
	tok_ctx *ctx = testtoken_open_ok(&c);
	size_t added = 99, removed = 99;

	(void)state;
	assert_int_equal(tok_key_count(ctx), 1);
	keygen("rot-filtered", ADM_KT_P256);
	assert_int_equal(tok_rescan(ctx, &added, &removed), 0);
	assert_int_equal(added, 0);
	assert_int_equal(removed, 0);
	assert_int_equal(tok_key_count(ctx), 1);
	assert_null(tok_key_find(ctx, "rot-filtered"));
	destroy_label(ctx, "rot-filtered");
	tok_close(ctx);
}

static void test_rescan_locked(void **state)
{
	tok_config c = base_cfg(NULL);
	tok_ctx *ctx = NULL;
	size_t added = 0, removed = 0;
	const tok_key *k;
	int r;

	(void)state;
	c.pin_file = NULL;
	c.allow_locked = true;
	unsetenv("P11JWT_PIN");
	r = tok_open(&c, &ctx);
	assert_int_equal(r, 0);
	assert_int_equal(tok_get_state(ctx), TOK_LOCKED);
	keygen("rot-locked", ADM_KT_P256);
	/* locked: the new key is listed from its public key object */
	assert_int_equal(tok_rescan(ctx, &added, &removed), 0);
	assert_int_equal(added, 1);
	assert_int_equal(removed, 0);
	k = tok_key_find(ctx, "rot-locked");
	assert_non_null(k);
	assert_false(sign_es256(ctx, k, "locked"));
	assert_int_equal(err_code_from_name("pin_required"), P11J_E_PIN_REQUIRED);
	tok_close(ctx);
	/* then a logged-in context signs with it */
	c = base_cfg(NULL);
	ctx = testtoken_open_ok(&c);
	k = tok_key_find(ctx, "rot-locked");
	assert_non_null(k);
	assert_true(sign_es256(ctx, k, "logged in"));
	destroy_label(ctx, "rot-locked");
	tok_close(ctx);
}

struct loop {
	tok_ctx *ctx;
	const tok_key *k;
	atomic_bool stop;
	atomic_int ok, failed;
};

static void *sign_loop(void *arg)
{
	struct loop *l = arg;

	while (!atomic_load(&l->stop)) {
		if (sign_es256(l->ctx, l->k, "in flight"))
			atomic_fetch_add(&l->ok, 1);
		else
			atomic_fetch_add(&l->failed, 1);
	}
	return NULL;
}

static void test_rescan_while_signing(void **state)
{
	tok_config c = base_cfg(NULL);
	struct loop l = {0};
	pthread_t th[3];
	char label[32];

	(void)state;
	l.ctx = testtoken_open_ok(&c);
	l.k = tok_key_find(l.ctx, "ec-p256");
	assert_non_null(l.k);
	for (int i = 0; i < 3; i++)
		assert_int_equal(pthread_create(&th[i], NULL, sign_loop, &l), 0);
	for (int round = 0; round < 4; round++) {
		size_t added = 0, removed = 0;

		snprintf(label, sizeof(label), "rot-loop-%d", round);
		keygen(label, ADM_KT_P256);
		assert_int_equal(tok_rescan(l.ctx, &added, &removed), 0);
		assert_int_equal(added, 1);
		assert_non_null(tok_key_find(l.ctx, label));
		destroy_label(l.ctx, label);
		assert_int_equal(tok_rescan(l.ctx, &added, &removed), 0);
		assert_int_equal(removed, 1);
	}
	atomic_store(&l.stop, true);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	print_message("# %d signatures during the rescans, %d failed\n", atomic_load(&l.ok),
	              atomic_load(&l.failed));
	assert_true(atomic_load(&l.ok) > 0);
	assert_int_equal(atomic_load(&l.failed), 0);
	tok_close(l.ctx);
}

/* A key deleted from the token before any rescan: its signature fails with
 * unknown_key and the token stays ready, so other keys' requests are not
 * failed by a recovery; the rescan then drops the key. */
static void test_deleted_key_before_rescan(void **state)
{
	tok_config c = base_cfg(NULL);
	tok_ctx *ctx = testtoken_open_ok(&c);
	const tok_key *ec = tok_key_find(ctx, "ec-p256"), *del;
	uint8_t sig[132];
	size_t siglen = sizeof(sig), added = 9, removed = 9;
	int r;

	(void)state;
	keygen("rot-deleted", ADM_KT_P256);
	assert_int_equal(tok_rescan(ctx, &added, &removed), 0);
	del = tok_key_find(ctx, "rot-deleted");
	assert_non_null(del);
	assert_true(sign_es256(ctx, del, "before"));
	destroy_label(ctx, "rot-deleted");
	r = tok_sign(ctx, del, JWA_ES256, (const uint8_t *)"after", 5, sig, &siglen);
	assert_int_equal(r, P11J_E_UNKNOWN_KEY);
	assert_non_null(strstr(err_msg(), "key 'rot-deleted' is no longer on token"));
	assert_int_equal(tok_get_state(ctx), TOK_READY);
	assert_true(sign_es256(ctx, ec, "another key, undisturbed"));
	assert_int_equal(tok_rescan(ctx, &added, &removed), 0);
	assert_int_equal(removed, 1);
	assert_null(tok_key_find(ctx, "rot-deleted"));
	tok_close(ctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rescan_adds_and_removes),
	    cmocka_unit_test(test_rescan_keeps_uri_filter),
	    cmocka_unit_test(test_rescan_locked),
	    cmocka_unit_test(test_rescan_while_signing),
	    cmocka_unit_test(test_deleted_key_before_rescan),
	};

	return cmocka_run_group_tests(tests, group_setup, NULL);
}
