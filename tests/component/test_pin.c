/* SPDX-License-Identifier: MIT */
/*
 * PIN lifecycle and fault recovery of the token layer (tok_login, tok_lock,
 * locked start, systemd credentials, recovery after the fault module pulls
 * the token out), and the protocol's login and lock ops.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "agent/proto.h"
#include "common/err.h"
#include "common/util.h"
#include "pkcs11/tok.h"
#include "pkcs11/tok-test.h"
#include "support/testtoken.h"

#define MODULE TESTTOKEN_MODULE
#define URI TESTTOKEN_URI

static char tokdir[1024], pinfile[1100], pin[64], tmpdir[1100];
static char faultmod[1200], faultdir[1100], ctlfile[1200];

/* SoftHSM leaks in C_SignInit with Ed25519 keys (see test_tok.c). */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "fast_unwind_on_malloc=0";
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	char tmp[1300];
	int fd;

	snprintf(tmp, sizeof(tmp), "%s.new", path);
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode);
	assert_true(fd >= 0);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	assert_int_equal(rename(tmp, path), 0);
}

static tok_config cfg_locked(void)
{
	tok_config c = {0};

	c.module_path = MODULE;
	c.uri = URI;
	c.allow_locked = true;
	return c;
}

/* Sign with Ed25519 and check the signature with OpenSSL; returns tok_sign's
 * result. */
static int sign_ed(tok_ctx *ctx)
{
	const tok_key *k = tok_key_find(ctx, "ed25519");
	uint8_t sig[64];
	size_t siglen = sizeof(sig);
	EVP_MD_CTX *mc;
	int r;

	assert_non_null(k);
	r = tok_sign(ctx, k, JWA_EDDSA, (const uint8_t *)"payload", 7, sig, &siglen);
	if (r < 0)
		return r;
	assert_int_equal(siglen, 64);
	mc = EVP_MD_CTX_new();
	assert_int_equal(EVP_DigestVerifyInit(mc, NULL, NULL, NULL, tok_key_pubkey(k)), 1);
	assert_int_equal(EVP_DigestVerify(mc, sig, siglen, (const uint8_t *)"payload", 7), 1);
	EVP_MD_CTX_free(mc);
	return 0;
}

static int group_setup(void **state)
{
	const char *build = getenv("P11JWT_BUILDDIR");
	char cmd[4096];

	(void)state;
	if (testtoken_make("pin-token", tokdir, sizeof(tokdir), pinfile, sizeof(pinfile), pin,
			   sizeof(pin)) < 0)
		return -1;
	unsetenv("CREDENTIALS_DIRECTORY");
	/* an extractable key: listed while locked, never usable after login */
	if (testtoken_keypairgen(pin, "--key-type EC:prime256v1 --label unsafe-ec --id 0f "
				      "--usage-sign --extractable") < 0)
		return -1;
	if (build == NULL)
		build = ".";
	snprintf(tmpdir, sizeof(tmpdir), "%s/tests/pin-tmp", build);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", tmpdir, tmpdir);
	if (system(cmd) != 0)
		return -1;
	snprintf(faultdir, sizeof(faultdir), "%s/tests/faultmod", build);
	snprintf(faultmod, sizeof(faultmod), "%s/libp11jfault.so", faultdir);
	snprintf(ctlfile, sizeof(ctlfile), "%s/fault.ctl", tmpdir);
	return 0;
}

static void test_state_names(void **state)
{
	(void)state;
	assert_string_equal(tok_state_name(TOK_READY), "ready");
	assert_string_equal(tok_state_name(TOK_LOCKED), "locked");
	assert_string_equal(tok_state_name(TOK_UNAVAILABLE), "unavailable");
}

static void test_locked_start(void **state)
{
	tok_config c = cfg_locked();
	tok_ctx *ctx = NULL;

	(void)state;
	/* without allow_locked, no PIN is still an error */
	c.allow_locked = false;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_PIN_REQUIRED);
	c.allow_locked = true;
	ctx = testtoken_open_ok(&c);
	assert_int_equal(tok_get_state(ctx), TOK_LOCKED);
	assert_true(tok_key_count(ctx) >= 6);
	assert_non_null(tok_key_find(ctx, "unsafe-ec"));
	assert_int_equal(sign_ed(ctx), P11J_E_PIN_REQUIRED);
	assert_non_null(strstr(err_msg(), "p11jwt login"));
	assert_true(tok_matches(ctx, NULL));
	assert_true(tok_matches(ctx, ""));
	assert_true(tok_matches(ctx, URI));
	assert_false(tok_matches(ctx, "pkcs11:token=other"));
	assert_false(tok_matches(ctx, "not a uri"));
	tok_close(ctx);
}

static void test_login_lock(void **state)
{
	tok_config c = cfg_locked();
	tok_ctx *ctx = testtoken_open_ok(&c);
	const tok_key *unsafe = tok_key_find(ctx, "unsafe-ec");
	uint8_t sig[64];
	size_t siglen = sizeof(sig);

	(void)state;
	assert_int_equal(tok_login(ctx, "bad-one", 7), P11J_E_PIN_INCORRECT);
	assert_non_null(strstr(err_msg(), "CKR_PIN_INCORRECT"));
	assert_null(strstr(err_msg(), "already rejected"));
	assert_int_equal(tok_login(ctx, "bad-one", 7), P11J_E_PIN_INCORRECT);
	assert_non_null(strstr(err_msg(), "already rejected"));
	/* a prefix of a rejected PIN is another PIN */
	assert_int_equal(tok_login(ctx, "bad-one", 6), P11J_E_PIN_INCORRECT);
	assert_null(strstr(err_msg(), "already rejected"));
	assert_int_equal(tok_get_state(ctx), TOK_LOCKED);

	assert_int_equal(tok_login(ctx, pin, strlen(pin)), 0);
	assert_int_equal(tok_get_state(ctx), TOK_READY);
	assert_int_equal(sign_ed(ctx), 0);
	/* the extractable key was listed while locked, but is not signed with */
	assert_int_equal(tok_sign(ctx, unsafe, JWA_ES256, (const uint8_t *)"x", 1, sig, &siglen),
	                 P11J_E_UNKNOWN_KEY);
	/* same PIN again: fine; another one: lock first */
	assert_int_equal(tok_login(ctx, pin, strlen(pin)), 0);
	assert_int_equal(tok_login(ctx, "other-pin", 9), P11J_E_BAD_REQUEST);
	assert_int_equal(tok_get_state(ctx), TOK_READY);

	assert_int_equal(tok_lock(ctx), 0);
	assert_int_equal(tok_get_state(ctx), TOK_LOCKED);
	assert_int_equal(sign_ed(ctx), P11J_E_PIN_REQUIRED);
	assert_int_equal(tok_lock(ctx), 0); /* twice is fine */
	assert_int_equal(tok_login(ctx, pin, strlen(pin)), 0);
	assert_int_equal(sign_ed(ctx), 0);
	tok_close(ctx);
}

static void test_login_args(void **state)
{
	tok_config c = cfg_locked();
	tok_ctx *ctx = testtoken_open_ok(&c);
	char big[300];

	(void)state;
	memset(big, '1', sizeof(big));
	/* SoftHSM has no PIN pad */
	assert_int_equal(tok_login(ctx, NULL, 0), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "PIN pad"));
	assert_int_equal(tok_login(ctx, "", 0), P11J_E_BAD_REQUEST);
	assert_int_equal(tok_login(ctx, big, sizeof(big)), P11J_E_BAD_REQUEST);
	assert_int_equal(tok_login(NULL, pin, strlen(pin)), P11J_E_BAD_REQUEST);
	assert_int_equal(tok_lock(NULL), P11J_E_BAD_REQUEST);
	assert_int_equal(tok_get_state(ctx), TOK_LOCKED);
	tok_close(ctx);
}

static void test_credentials_dir(void **state)
{
	tok_config c = cfg_locked();
	char dir[1200], path[1300], text[80];
	tok_ctx *ctx;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/creds", tmpdir);
	mkdir(dir, 0700);
	setenv("CREDENTIALS_DIRECTORY", dir, 1);
	/* no "pin" credential: falls through to locked */
	ctx = testtoken_open_ok(&c);
	assert_int_equal(tok_get_state(ctx), TOK_LOCKED);
	tok_close(ctx);
	snprintf(path, sizeof(path), "%s/pin", dir);
	snprintf(text, sizeof(text), "%s\n", pin);
	write_file(path, text, 0400);
	ctx = testtoken_open_ok(&c);
	assert_int_equal(tok_get_state(ctx), TOK_READY);
	assert_int_equal(sign_ed(ctx), 0);
	tok_close(ctx);
	/* --pin-file wins over the credential */
	snprintf(path, sizeof(path), "%s/wrong", tmpdir);
	write_file(path, "cred-test-wrong\n", 0600);
	c.pin_file = path;
	assert_int_equal(tok_open(&c, &ctx), P11J_E_PIN_INCORRECT);
	unsetenv("CREDENTIALS_DIRECTORY");
}

static void test_recovery(void **state)
{
	tok_config c = cfg_locked();
	const char *allow[] = {faultdir, NULL};
	tok_ctx *ctx;

	(void)state;
	if (access(faultmod, R_OK) != 0) {
		skip();
		return;
	}
	write_file(ctlfile, "\n", 0600);
	setenv("P11JWT_FAULT_CTL", ctlfile, 1);
	c.module_path = faultmod;
	c.module_allow = allow;
	c.pin_file = pinfile;
	ctx = testtoken_open_ok(&c);
	assert_int_equal(tok_get_state(ctx), TOK_READY);
	assert_int_equal(sign_ed(ctx), 0);

	write_file(ctlfile, "removed on\n", 0600);
	assert_int_equal(sign_ed(ctx), P11J_E_TOKEN_UNAVAILABLE);
	assert_int_equal(tok_get_state(ctx), TOK_UNAVAILABLE);
	/* within the back-off: no attempt, immediate answer */
	assert_int_equal(sign_ed(ctx), P11J_E_TOKEN_UNAVAILABLE);
	assert_non_null(strstr(err_msg(), "trying again shortly"));
	/* still removed at the next attempt */
	tok_test_recover_now(ctx);
	assert_int_equal(sign_ed(ctx), P11J_E_TOKEN_UNAVAILABLE);
	assert_non_null(strstr(err_msg(), "not present"));

	write_file(ctlfile, "removed off\n", 0600);
	tok_test_recover_now(ctx);
	assert_int_equal(sign_ed(ctx), 0);
	assert_int_equal(tok_get_state(ctx), TOK_READY);

	/* a lost session is recovered within the request */
	tok_test_recover_now(ctx);
	write_file(ctlfile, "fail C_Sign CKR_SESSION_HANDLE_INVALID 1\n", 0600);
	assert_int_equal(sign_ed(ctx), 0);

	/* locked while away: back, but locked (no PIN kept) */
	tok_test_recover_now(ctx);
	write_file(ctlfile, "removed on\n\n", 0600);
	assert_int_equal(sign_ed(ctx), P11J_E_TOKEN_UNAVAILABLE);
	assert_int_equal(tok_lock(ctx), 0);
	assert_int_equal(tok_get_state(ctx), TOK_UNAVAILABLE);
	write_file(ctlfile, "removed off\n\n", 0600);
	tok_test_recover_now(ctx);
	assert_int_equal(sign_ed(ctx), P11J_E_PIN_REQUIRED);
	assert_int_equal(tok_get_state(ctx), TOK_LOCKED);
	/* login while the token is away: token_unavailable, then fine */
	write_file(ctlfile, "removed on\n", 0600);
	assert_int_equal(tok_login(ctx, pin, strlen(pin)), P11J_E_TOKEN_UNAVAILABLE);
	write_file(ctlfile, "removed off\n", 0600);
	assert_int_equal(tok_login(ctx, pin, strlen(pin)), 0);
	assert_int_equal(sign_ed(ctx), 0);
	tok_close(ctx);
	unsetenv("P11JWT_FAULT_CTL");
}

/* Signers on several threads while the token comes and goes: every answer
 * is a signature or token_unavailable, nothing hangs, and the pool stays
 * bounded. */
struct worker {
	tok_ctx *ctx;
	int ok, unavailable, other;
	int stop;
};

static void *sign_loop(void *arg)
{
	struct worker *w = arg;
	const tok_key *k = tok_key_find(w->ctx, "ec-p256");
	int i;

	for (i = 0; !__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) || i < 10; i++) {
		uint8_t sig[64];
		size_t siglen = sizeof(sig);
		int r = tok_sign(w->ctx, k, JWA_ES256, (const uint8_t *)"abc", 3, sig, &siglen);

		if (r == 0 && siglen == 64)
			w->ok++;
		else if (r == P11J_E_TOKEN_UNAVAILABLE)
			w->unavailable++;
		else {
			w->other++;
			print_message("# unexpected %d: %s\n", r, err_msg());
		}
	}
	return NULL;
}

static void test_concurrent_faults(void **state)
{
	tok_config c = cfg_locked();
	const char *allow[] = {faultdir, NULL};
	struct worker w[4];
	pthread_t th[4];
	tok_ctx *ctx;
	int i, ok = 0, unavailable = 0;

	(void)state;
	if (access(faultmod, R_OK) != 0) {
		skip();
		return;
	}
	write_file(ctlfile, "\n", 0600);
	setenv("P11JWT_FAULT_CTL", ctlfile, 1);
	c.module_path = faultmod;
	c.module_allow = allow;
	c.pin_file = pinfile;
	ctx = testtoken_open_ok(&c);
	for (i = 0; i < 4; i++) {
		w[i] = (struct worker){.ctx = ctx};
		assert_int_equal(pthread_create(&th[i], NULL, sign_loop, &w[i]), 0);
	}
	for (i = 0; i < 12; i++) {
		usleep(60000);
		write_file(ctlfile, i % 2 ? "removed off\n" : "removed on\n", 0600);
	}
	write_file(ctlfile, "removed off\n\n", 0600);
	for (i = 0; i < 4; i++)
		__atomic_store_n(&w[i].stop, 1, __ATOMIC_RELEASE);
	for (i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(w[i].other, 0);
		ok += w[i].ok;
		unavailable += w[i].unavailable;
	}
	assert_true(ok > 0);
	assert_true(unavailable > 0);
	assert_true(tok_test_open_sessions(ctx) <= 64);
	tok_test_recover_now(ctx);
	assert_int_equal(sign_ed(ctx), 0);
	tok_close(ctx);
	unsetenv("P11JWT_FAULT_CTL");
}

/* ---- the protocol's ops, with a stand-in token ------------------------ */

struct fake {
	char pin[64];
	size_t pin_len;
	bool pin_null;
	char token[64];
	int logins, locks;
};

static int fake_login(void *ud, const char *token, const char *p, size_t len, json_t *resp)
{
	struct fake *f = ud;

	f->logins++;
	f->pin_null = p == NULL;
	if (p != NULL) {
		memcpy(f->pin, p, len < sizeof(f->pin) ? len : sizeof(f->pin));
		f->pin_len = len;
	}
	snprintf(f->token, sizeof(f->token), "%s", token ? token : "");
	if (p != NULL && strcmp(p, "bad") == 0)
		return err_set(P11J_E_PIN_INCORRECT, "C_Login failed: CKR_PIN_INCORRECT");
	json_object_set_new(resp, "state", json_string("ready"));
	return 0;
}

static int fake_lock(void *ud, const char *token, json_t *resp)
{
	struct fake *f = ud;

	f->locks++;
	json_object_set_new(resp, "state", json_string("locked"));
	return 0;
}

static json_t *ask(const proto_env *env, const proto_peer *peer, const char *line)
{
	char *out = NULL;
	size_t len = 0;
	json_t *j;

	assert_int_equal(proto_handle(env, peer, line, strlen(line), &out, &len), 0);
	j = json_loadb(out, len, 0, NULL);
	assert_non_null(j);
	free(out);
	return j;
}

static const char *code_of(json_t *j)
{
	return json_string_value(json_object_get(json_object_get(j, "error"), "code"));
}

static void test_proto_ops(void **state)
{
	keyring kr = {0};
	struct fake f = {0};
	proto_env env = {.kr = &kr,
	                 .owner_uid = 1000,
	                 .version = "t",
	                 .login = fake_login,
	                 .lock = fake_lock,
	                 .pin_ud = &f};
	proto_env bare = {.kr = &kr, .owner_uid = 1000, .version = "t"};
	proto_peer me = {.uid = 1000}, root = {.uid = 0}, other = {.uid = 1001};
	json_t *j;

	(void)state;
	j = ask(&env, &me, "{\"id\":1,\"op\":\"login\",\"pin\":\"12\\u00e93\"}");
	assert_true(json_is_true(json_object_get(j, "ok")));
	assert_string_equal(json_string_value(json_object_get(j, "state")), "ready");
	assert_int_equal(f.pin_len, 5); /* UTF-8 bytes, length exact */
	assert_memory_equal(f.pin,
	                    "12\xc3\xa9"
	                    "3",
	                    5);
	assert_string_equal(f.token, "");
	json_decref(j);
	/* a NUL inside a PIN is refused as JSON already */
	j = ask(&env, &me, "{\"op\":\"login\",\"pin\":\"1\\u00002\"}");
	assert_string_equal(code_of(j), "bad_request");
	json_decref(j);

	j = ask(&env, &root, "{\"op\":\"login\",\"token\":\"pkcs11:token=x\"}");
	assert_true(json_is_true(json_object_get(j, "ok")));
	assert_true(f.pin_null); /* no pin: PIN pad */
	assert_string_equal(f.token, "pkcs11:token=x");
	json_decref(j);

	j = ask(&env, &me, "{\"op\":\"login\",\"pin\":\"bad\"}");
	assert_string_equal(code_of(j), "pin_incorrect");
	json_decref(j);
	j = ask(&env, &me, "{\"op\":\"login\",\"pin\":\"\"}");
	assert_string_equal(code_of(j), "bad_request");
	json_decref(j);
	j = ask(&env, &me, "{\"op\":\"login\",\"pin\":[1]}");
	assert_string_equal(code_of(j), "bad_request");
	json_decref(j);
	j = ask(&env, &me, "{\"op\":\"login\",\"token\":5}");
	assert_string_equal(code_of(j), "bad_request");
	json_decref(j);
	j = ask(&env, &me, "{\"op\":\"lock\",\"pin\":\"x\"}");
	assert_string_equal(code_of(j), "bad_request");
	json_decref(j);
	assert_int_equal(f.locks, 0);

	f.logins = 0;
	j = ask(&env, &other, "{\"op\":\"login\",\"pin\":\"1234\"}");
	assert_string_equal(code_of(j), "forbidden");
	json_decref(j);
	j = ask(&env, &other, "{\"op\":\"lock\"}");
	assert_string_equal(code_of(j), "forbidden");
	json_decref(j);
	assert_int_equal(f.logins, 0);
	assert_int_equal(f.locks, 0);

	j = ask(&env, &me, "{\"op\":\"lock\"}");
	assert_string_equal(json_string_value(json_object_get(j, "state")), "locked");
	json_decref(j);
	assert_int_equal(f.locks, 1);

	j = ask(&bare, &me, "{\"op\":\"login\",\"pin\":\"1234\"}");
	assert_string_equal(code_of(j), "unknown_op");
	json_decref(j);
	j = ask(&bare, &me, "{\"op\":\"lock\"}");
	assert_string_equal(code_of(j), "unknown_op");
	json_decref(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_state_names),       cmocka_unit_test(test_locked_start),
	    cmocka_unit_test(test_login_lock),        cmocka_unit_test(test_login_args),
	    cmocka_unit_test(test_credentials_dir),   cmocka_unit_test(test_recovery),
	    cmocka_unit_test(test_concurrent_faults), cmocka_unit_test(test_proto_ops),
	};

	return cmocka_run_group_tests(tests, group_setup, NULL);
}
