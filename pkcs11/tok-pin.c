/* SPDX-License-Identifier: MIT */
/* The PIN: where it comes from, the PINs a token rejected, the cached PIN
 * in its locked page, C_Login, and tok_login() / tok_lock(). */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

static int pin_from_file(const char *path, char **ret)
{
	char *buf = NULL, *pin = NULL;
	size_t len = 0;
	int r;

	r = util_read_file(path, TOK_PIN_MAX, true, &buf, &len);
	if (r < 0)
		return r;
	buf[strcspn(buf, "\n")] = '\0';
	util_chomp(buf);
	if (buf[0] == '\0') {
		r = err_set(P11J_E_BAD_REQUEST, "PIN file '%s' is empty", path);
		goto out;
	}
	pin = strdup(buf);
	if (pin == NULL) {
		r = err_nomem();
		goto out;
	}
	*ret = pin;
out:
	freezero_buf(buf, len);
	return r;
}

/* PIN from the config's file, systemd's credential "pin", the URI's
 * pin-source or pin-value, or P11JWT_PIN. *ret is NULL when there is none. */
static int pin_get(const tok_config *cfg, P11KitUri *uri, const char *uri_pin, char **ret)
{
	const char *src, *creds = getenv("CREDENTIALS_DIRECTORY");
	char *pin = NULL;

	*ret = NULL;
	if (cfg->no_pin_sources)
		return 0; /* a signing process: the PIN comes over its socket */
	if (cfg->pin_file != NULL)
		return pin_from_file(cfg->pin_file, ret);
	/* LoadCredential=pin:... or SetCredentialEncrypted=pin:...; another
	 * credential directory without a "pin" falls through. */
	if (creds != NULL && creds[0] == '/') {
		char path[PATH_MAX];

		if (snprintf(path, sizeof(path), "%s/pin", creds) < (int)sizeof(path) &&
		    access(path, F_OK) == 0)
			return pin_from_file(path, ret);
	}
	src = p11_kit_uri_get_pin_source(uri);
	if (src != NULL) {
		if (strncmp(src, "file:", 5) == 0) {
			src += 5;
			if (strncmp(src, "//", 2) == 0)
				src += 2;
		} else if (src[0] != '/' && strchr(src, ':') != NULL) {
			return err_set(
			    P11J_E_BAD_REQUEST,
			    "pin-source '%s' is not supported; use a file path or a file: URI",
			    src);
		}
		return pin_from_file(src, ret);
	}
	if (uri_pin != NULL)
		pin = strdup(uri_pin);
	else if (getenv("P11JWT_PIN") != NULL && getenv("P11JWT_PIN")[0] != '\0')
		pin = strdup(getenv("P11JWT_PIN"));
	else
		return 0;
	if (pin == NULL)
		return err_nomem();
	*ret = pin;
	return 0;
}

/* PINs a token has rejected in this process, as SHA-256(salt, serial,
 * label, PIN) with a random salt per process (so the list is no dictionary
 * target): the same wrong PIN is never sent twice (pkcs11-provider does the
 * same), because every wrong try brings a smartcard closer to locking. */
#define TOK_BADPIN_MAX 16
static pthread_mutex_t badpin_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t badpin[TOK_BADPIN_MAX][32];
static size_t badpin_n;
static uint8_t badpin_salt[32];
static bool badpin_salted;

static void badpin_digest(const tok_ctx *ctx, const char *pin, size_t pin_len, uint8_t out[32])
{
	EVP_MD_CTX *mc;
	unsigned int len = 0;

	pthread_mutex_lock(&badpin_mu);
	if (!badpin_salted && RAND_bytes(badpin_salt, sizeof(badpin_salt)) == 1)
		badpin_salted = true;
	pthread_mutex_unlock(&badpin_mu);
	memset(out, 0, 32);
	mc = EVP_MD_CTX_new();
	if (mc != NULL && EVP_DigestInit_ex(mc, EVP_sha256(), NULL) &&
	    EVP_DigestUpdate(mc, badpin_salt, sizeof(badpin_salt)) &&
	    EVP_DigestUpdate(mc, ctx->ti.serialNumber, sizeof(ctx->ti.serialNumber)) &&
	    EVP_DigestUpdate(mc, ctx->ti.label, sizeof(ctx->ti.label)) &&
	    EVP_DigestUpdate(mc, pin, pin_len))
		EVP_DigestFinal_ex(mc, out, &len);
	EVP_MD_CTX_free(mc);
}

static bool badpin_known(const uint8_t d[32])
{
	bool found = false;
	size_t i;

	pthread_mutex_lock(&badpin_mu);
	for (i = 0; i < badpin_n && !found; i++)
		found = CRYPTO_memcmp(badpin[i], d, 32) == 0;
	pthread_mutex_unlock(&badpin_mu);
	return found;
}

static void badpin_add(const uint8_t d[32])
{
	pthread_mutex_lock(&badpin_mu);
	memcpy(badpin[badpin_n % TOK_BADPIN_MAX], d, 32);
	badpin_n = badpin_n < TOK_BADPIN_MAX ? badpin_n + 1 : TOK_BADPIN_MAX;
	pthread_mutex_unlock(&badpin_mu);
}

/* The cached PIN lives in its own page: mlock()ed so it is never swapped
 * out, MADV_DONTDUMP so it is in no core dump (the agent is not dumpable
 * anyway). mlock() can fail under a small RLIMIT_MEMLOCK: then it warns. */
int tok_pin_store_init(tok_ctx *ctx)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = TOK_PIN_MAX + 1;
	void *p;

	len = (len + pg - 1) / pg * pg;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return err_set(P11J_E_NOMEM, "cannot map memory for the PIN: %s", strerror(errno));
#ifdef MADV_DONTDUMP
	(void)madvise(p, len, MADV_DONTDUMP);
#endif
	if (mlock(p, len) < 0)
		tok_log(ctx, TOK_LOG_WARNING,
		        "cannot lock the PIN's memory (%s); it could be swapped out",
		        strerror(errno));
	ctx->pin = p;
	return 0;
}

void tok_pin_store_wipe(tok_ctx *ctx)
{
	if (ctx->pin != NULL)
		OPENSSL_cleanse(ctx->pin, TOK_PIN_MAX + 1);
	ctx->pin_len = 0;
	ctx->pin_cached = false;
	ctx->pinpad = false;
}

void tok_pin_store_free(tok_ctx *ctx)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = TOK_PIN_MAX + 1;

	if (ctx->pin == NULL)
		return;
	tok_pin_store_wipe(ctx);
	len = (len + pg - 1) / pg * pg;
	munlock(ctx->pin, len);
	munmap(ctx->pin, len);
	ctx->pin = NULL;
}

/* C_Login(CKU_USER) on session s with pin (NULL: the protected
 * authentication path), never twice with a PIN the token rejected; on
 * success the PIN is cached for logging in again after a fault. */
int tok_pin_login(tok_ctx *ctx, CK_SESSION_HANDLE s, const char *pin, size_t len)
{
	uint8_t digest[32];
	CK_RV rv;
	int r;

	if (pin != NULL && (len == 0 || len > TOK_PIN_MAX))
		return err_set(P11J_E_PIN_INCORRECT, "a PIN must be 1 to %d bytes", TOK_PIN_MAX);
	if (pin == NULL) {
		rv = ctx->f->C_Login(s, CKU_USER, NULL, 0);
		r = tok_ck(ctx, "C_Login", rv);
		if (r < 0)
			return r;
		tok_pin_store_wipe(ctx);
		ctx->pinpad = true;
		ctx->logged_in = true;
		return 0;
	}
	badpin_digest(ctx, pin, len, digest);
	if (badpin_known(digest)) {
		OPENSSL_cleanse(digest, sizeof(digest));
		return err_set(P11J_E_PIN_INCORRECT,
		               "token '%s' already rejected this PIN; not "
		               "trying it again (CKR_PIN_INCORRECT)",
		               ctx->label);
	}
	rv = ctx->f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)pin, (CK_ULONG)len);
	if (rv == CKR_PIN_INCORRECT)
		badpin_add(digest);
	OPENSSL_cleanse(digest, sizeof(digest));
	r = tok_ck(ctx, "C_Login", rv);
	if (r < 0)
		return r;
	if (pin != ctx->pin) {
		tok_pin_store_wipe(ctx);
		memcpy(ctx->pin, pin, len);
		ctx->pin[len] = '\0';
		ctx->pin_len = len;
	}
	ctx->pin_cached = true;
	ctx->logged_in = true;
	return 0;
}

/* Login at open. *ret_locked: no PIN anywhere and cfg->allow_locked. */
int tok_pin_open_login(tok_ctx *ctx, const tok_config *cfg, P11KitUri *uri, const char *uri_pin,
                       CK_SESSION_HANDLE s, bool *ret_locked)
{
	char *pin = NULL;
	int r;

	*ret_locked = false;
	r = pin_get(cfg, uri, uri_pin, &pin);
	if (r < 0)
		return r;
	if (pin == NULL) {
		if (ctx->ti.flags & CKF_PROTECTED_AUTHENTICATION_PATH)
			return tok_pin_login(ctx, s, NULL, 0);
		if (!(ctx->ti.flags & CKF_LOGIN_REQUIRED))
			return 0;
		if (cfg->allow_locked) {
			*ret_locked = true;
			return 0;
		}
		return err_set(P11J_E_PIN_REQUIRED,
		               "token '%s' needs a PIN: give a PIN file, a pin-source in the URI, "
		               "or set P11JWT_PIN",
		               ctx->label);
	}
	r = tok_pin_login(ctx, s, pin, strlen(pin));
	freezero_str(pin);
	return r;
}

int tok_login(tok_ctx *ctx, const char *pin, size_t len)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	bool same;
	int r;

	if (ctx == NULL)
		return err_set(P11J_E_BAD_REQUEST, "tok_login: no token");
	if (pin != NULL && (len == 0 || len > TOK_PIN_MAX))
		return err_set(P11J_E_BAD_REQUEST, "a PIN must be 1 to %d bytes", TOK_PIN_MAX);
	if (pin == NULL && !(ctx->ti.flags & CKF_PROTECTED_AUTHENTICATION_PATH))
		return err_set(P11J_E_BAD_REQUEST,
		               "token '%s' has no PIN pad (protected authentication path): "
		               "give the PIN",
		               ctx->label);
	pthread_rwlock_wrlock(&ctx->op_lock);
	if ((r = tok_recover(ctx, true, true)) < 0)
		goto out;
	switch (tok_get_state(ctx)) {
	case TOK_READY:
		same = pin != NULL && ctx->pin_cached && len == ctx->pin_len &&
		       CRYPTO_memcmp(pin, ctx->pin, len) == 0;
		if (same || (pin == NULL && ctx->pinpad) ||
		    (!ctx->logged_in && !(ctx->ti.flags & CKF_LOGIN_REQUIRED)))
			r = 0;
		else
			r = err_set(P11J_E_BAD_REQUEST,
			            "token '%s' is logged in already with another PIN; lock it "
			            "first (p11jwt lock)",
			            ctx->label);
		goto out;
	case TOK_LOCKED:
		break;
	default:
		r = err_set(P11J_E_TOKEN_UNAVAILABLE, "token '%s' is unavailable", ctx->label);
		goto out;
	}
	if ((r = tok_pool_get(ctx, &s)) < 0)
		goto fault;
	r = tok_pin_login(ctx, s, pin, len);
	if (r == 0)
		r = tok_keys_resolve(ctx, s);
	if (r == 0) {
		tok_pool_put(ctx, s);
		tok_state_set(ctx, TOK_READY);
		tok_log(ctx, TOK_LOG_INFO, "logged in to token '%s'", ctx->label);
		tok_proc_login(ctx); /* signing processes, if any */
		goto out;
	}
	if (r == P11J_E_TOKEN_UNAVAILABLE) {
		tok_pool_drop(ctx, s);
		goto fault;
	}
	tok_pool_put(ctx, s);
	goto out;
fault:
	if (r == P11J_E_TOKEN_UNAVAILABLE)
		tok_mark_unavailable(ctx, err_msg());
out:
	pthread_rwlock_unlock(&ctx->op_lock);
	return r;
}

int tok_lock(tok_ctx *ctx)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_RV rv;
	int r = 0;

	if (ctx == NULL)
		return err_set(P11J_E_BAD_REQUEST, "tok_lock: no token");
	pthread_rwlock_wrlock(&ctx->op_lock);
	tok_pin_store_wipe(ctx);
	tok_keys_forget(ctx);
	if (ctx->logged_in && tok_get_state(ctx) != TOK_UNAVAILABLE) {
		if ((r = tok_pool_get(ctx, &s)) == 0) {
			rv = ctx->f->C_Logout(s);
			if (rv != CKR_OK && rv != CKR_USER_NOT_LOGGED_IN &&
			    tok_ckr_to_err(rv) == P11J_E_TOKEN_UNAVAILABLE) {
				tok_pool_drop(ctx, s);
				tok_mark_unavailable(ctx, "C_Logout failed");
			} else {
				tok_pool_put(ctx, s);
			}
		}
		r = 0; /* locked either way: no PIN is kept */
	}
	ctx->logged_in = false;
	if (tok_get_state(ctx) != TOK_UNAVAILABLE)
		tok_state_set(ctx, TOK_LOCKED);
	tok_proc_lock(ctx); /* signing processes, if any */
	tok_log(ctx, TOK_LOG_INFO, "token '%s' locked: PIN wiped", ctx->label);
	pthread_rwlock_unlock(&ctx->op_lock);
	return r;
}
