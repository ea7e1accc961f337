/* SPDX-License-Identifier: MIT */
/* Signing: the checks before the token is touched, C_SignInit + C_Sign on a
 * pooled session, one retry after a recovery, and the signature's form. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"
#include "jose/jws.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include <p11-kit/pkcs11.h>

static const char *kind_name(jwa_keykind k)
{
	switch (k) {
	case KEYKIND_RSA:
		return "RSA";
	case KEYKIND_P256:
		return "P-256";
	case KEYKIND_P384:
		return "P-384";
	case KEYKIND_P521:
		return "P-521";
	case KEYKIND_ED25519:
		return "Ed25519";
	default:
		return "unknown";
	}
}

/* Wait until signing may start: READY, op_lock held shared on success.
 * LOCKED and UNAVAILABLE answer at once (an UNAVAILABLE token is recovered
 * first when the back-off allows). */
static int sign_begin(tok_ctx *ctx, const tok_key *k)
{
	int i;

	for (i = 0; i < 4; i++) {
		tok_state st = tok_get_state(ctx);

		if (st == TOK_UNAVAILABLE) {
			int r = tok_recover(ctx, false, false);

			if (r < 0)
				return r;
			continue;
		}
		if (st == TOK_LOCKED) {
			if (ctx->no_login)
				return err_set(P11J_E_PIN_REQUIRED,
				               "token '%s' was opened without login; "
				               "cannot sign with key '%s'",
				               ctx->label, k->name);
			return err_set(P11J_E_PIN_REQUIRED,
			               "token '%s' is locked; log in with `p11jwt login` to sign "
			               "with key '%s'",
			               ctx->label, k->name);
		}
		pthread_rwlock_rdlock(&ctx->op_lock);
		if (tok_get_state(ctx) == TOK_READY) {
			if (k->priv != CK_INVALID_HANDLE)
				return 0;
			pthread_rwlock_unlock(&ctx->op_lock);
			return err_set(P11J_E_UNKNOWN_KEY,
			               "key '%s' has no usable private key on token '%s' "
			               "(see the agent's log)",
			               k->name, ctx->label);
		}
		pthread_rwlock_unlock(&ctx->op_lock);
	}
	return err_set(P11J_E_TOKEN_UNAVAILABLE, "token '%s' is unavailable", ctx->label);
}

static bool session_broken(CK_RV rv)
{
	return tok_ckr_to_err(rv) == P11J_E_TOKEN_UNAVAILABLE || rv == CKR_OPERATION_ACTIVE ||
	       rv == CKR_BUFFER_TOO_SMALL;
}

/* Everything that can be refused before the token is touched. */
static int sign_check(const tok_ctx *ctx, const tok_key *k, jwa_alg alg, const uint8_t *in,
                      size_t inlen, const uint8_t *sig, const size_t *siglen)
{
	if (ctx == NULL || k == NULL || sig == NULL || siglen == NULL || (in == NULL && inlen > 0))
		return err_set(P11J_E_BAD_REQUEST, "tok_sign: missing argument");
	if (alg <= JWA_NONE || alg >= JWA__COUNT)
		return err_set(P11J_E_UNSUPPORTED_ALG, "unknown JWS algorithm");
	if (!(jwa_algs_for_kind(k->kind) & JWA_BIT(alg)))
		return err_set(P11J_E_UNSUPPORTED_ALG, "%s does not fit key '%s' (%s); use %s",
		               jwa_name(alg), k->name, kind_name(k->kind),
		               jwa_name(jwa_default_for_kind(k->kind)));
	if (!(k->algs & JWA_BIT(alg)))
		return err_set(P11J_E_UNSUPPORTED_ALG,
		               "token '%s' has no mechanism for %s (its mechanism list has no "
		               "%s), so key '%s' cannot sign %s there",
		               ctx->label, jwa_name(alg), tok_mech_wanted(alg), k->name,
		               jwa_name(alg));
	if (*siglen < k->sig_len)
		return err_set(P11J_E_INTERNAL,
		               "signature buffer of %zu bytes is under the %zu "
		               "that key '%s' needs",
		               *siglen, k->sig_len, k->name);
	if (inlen > ULONG_MAX)
		return err_set(P11J_E_REQUEST_TOO_LARGE, "input too large to sign");
	return 0;
}

/* A key handle refused on a session that still works, on the token it was
 * opened on: the key itself was deleted (by keygen's or an administrator's
 * tool), not the token swapped. Then only that key fails (unknown_key);
 * recovering the whole token would fail everyone else's requests. */
static bool key_deleted(tok_ctx *ctx, CK_SESSION_HANDLE s)
{
	CK_SESSION_INFO info;

	return ctx->f->C_GetSessionInfo(s, &info) == CKR_OK && info.slotID == ctx->slot;
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void tok_sign_stats(tok_ctx *ctx, uint64_t *ret_signatures, uint64_t *ret_samples,
                    uint64_t *ret_sampled_ns)
{
	*ret_samples = atomic_load_explicit(&ctx->cpu_samples, memory_order_relaxed);
	*ret_sampled_ns = atomic_load_explicit(&ctx->cpu_sampled_ns, memory_order_relaxed);
	*ret_signatures = atomic_load_explicit(&ctx->signatures, memory_order_relaxed);
}

/* One C_SignInit (+ context login) + C_Sign on a pooled session; op_lock
 * held shared. *ret_fault: the device or our sessions are gone, or the
 * key's handle is stale: the token must be recovered. */
static int sign_once(tok_ctx *ctx, const tok_key *k, tok_sign_input *si, uint8_t *out,
                     CK_ULONG *outlen, bool *ret_fault)
{
	static _Thread_local unsigned nth;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	const char *fn = "C_SignInit";
	uint64_t cpu0 = 0, clock_cost = 0;
	bool sample;
	CK_RV rv;
	int r;

	*ret_fault = false;
	r = tok_pool_get(ctx, &s);
	if (r < 0) {
		*ret_fault = r == P11J_E_TOKEN_UNAVAILABLE;
		return r;
	}
	if ((sample = ++nth % TOK_CPU_SAMPLE == 0)) {
		/* what one clock read adds to the interval, taken off below */
		clock_cost = thread_cpu_ns();
		cpu0 = thread_cpu_ns();
		clock_cost = cpu0 - clock_cost;
	}
	rv = ctx->f->C_SignInit(s, &si->mech, k->priv);
	if (rv == CKR_OK && k->always_auth) {
		/* CKA_ALWAYS_AUTHENTICATE: the PIN again for this one
		 * operation. */
		fn = "C_Login(CKU_CONTEXT_SPECIFIC)";
		rv = ctx->f->C_Login(s, CKU_CONTEXT_SPECIFIC,
		                     ctx->pinpad ? NULL : (CK_UTF8CHAR *)ctx->pin,
		                     ctx->pinpad ? 0 : (CK_ULONG)ctx->pin_len);
	}
	if (rv == CKR_OK) {
		fn = "C_Sign";
		rv = ctx->f->C_Sign(s, (CK_BYTE *)si->data, si->len, out, outlen);
	}
	if (rv == CKR_OK) {
		if (sample) {
			uint64_t d = thread_cpu_ns() - cpu0;

			d = d > clock_cost ? d - clock_cost : 0;
			atomic_fetch_add_explicit(&ctx->cpu_sampled_ns, d, memory_order_relaxed);
			atomic_fetch_add_explicit(&ctx->cpu_samples, 1, memory_order_relaxed);
		}
		atomic_fetch_add_explicit(&ctx->signatures, 1, memory_order_relaxed);
		tok_pool_put(ctx, s);
		return 0;
	}
	r = tok_ck(ctx, fn, rv);
	*ret_fault = r == P11J_E_TOKEN_UNAVAILABLE;
	if ((rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) &&
	    key_deleted(ctx, s)) {
		tok_pool_put(ctx, s);
		return err_set(P11J_E_UNKNOWN_KEY,
		               "key '%s' is no longer on token '%s' (%s: deleted?); 'p11jwt "
		               "reload' lists the token's keys again",
		               k->name, ctx->label, tok_ckr_name(rv));
	}
	/* A key handle that stopped working: the token was swapped or
	 * re-inserted under our sessions; its objects must be found again. */
	if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) {
		*ret_fault = true;
		r = err_set(P11J_E_TOKEN_UNAVAILABLE, "%s on token '%s' failed: %s", fn, ctx->label,
		            tok_ckr_name(rv));
	}
	if (session_broken(rv))
		tok_pool_drop(ctx, s);
	else
		tok_pool_put(ctx, s);
	return r;
}

/* The token's signature out[0..outlen) as the JWS wants it: raw, of the
 * key's exact length (R||S for ECDSA, from DER if the module gave DER). */
static int sign_output(const tok_ctx *ctx, const tok_key *k, jwa_alg alg, const uint8_t *out,
                       CK_ULONG outlen, uint8_t *sig, size_t *siglen)
{
	int r;

	if (outlen == k->sig_len) {
		memcpy(sig, out, outlen);
	} else if (jwa_is_ec(alg) && outlen > 0 && out[0] == 0x30) {
		/* A module that returns DER for CKM_ECDSA. */
		r = jws_ecdsa_der_to_raw(out, outlen, k->sig_len / 2, sig);
		if (r < 0)
			return r;
	} else {
		return err_set(P11J_E_PKCS11,
		               "C_Sign on token '%s' returned %lu bytes for %s, "
		               "expected %zu",
		               ctx->label, (unsigned long)outlen, jwa_name(alg), k->sig_len);
	}
	*siglen = k->sig_len;
	return 0;
}

/* With signing processes (tok-proc.c): the same checks and states here,
 * the mechanism, C_SignInit and C_Sign there. A fault of their token makes
 * this context UNAVAILABLE too, so that it recovers as above, and they
 * with it (tok_proc_recovered). */
static int sign_routed(tok_ctx *ctx, const tok_key *k, jwa_alg alg, const uint8_t *in,
                       size_t inlen, uint8_t *sig, size_t *siglen)
{
	bool fault = false;
	int r;

	if ((r = sign_begin(ctx, k)) < 0)
		return r;
	r = tok_proc_sign(ctx, k, alg, in, inlen, sig, siglen, &fault);
	if (fault) {
		/* the process has just tried a recovery of its own: the
		 * back-off starts now here too */
		tok_mark_unavailable(ctx, err_msg());
		tok_recover_later(ctx);
	}
	pthread_rwlock_unlock(&ctx->op_lock);
	return r;
}

int tok_sign(tok_ctx *ctx, const tok_key *k, jwa_alg alg, const uint8_t *in, size_t inlen,
             uint8_t *sig, size_t *siglen)
{
	tok_sign_input si;
	uint8_t out[TOK_SIG_MAX];
	CK_ULONG outlen = sizeof(out);
	char first[256];
	bool fault = false;
	int attempt, r;

	if ((r = sign_check(ctx, k, alg, in, inlen, sig, siglen)) < 0)
		return r;
	if (ctx->procs != NULL)
		return sign_routed(ctx, k, alg, in, inlen, sig, siglen);
	if ((r = tok_mech_input(ctx, alg, in, inlen, &si)) < 0)
		goto out;

	/* A fault (device or session lost) makes the token UNAVAILABLE; when
	 * the back-off allows, it is recovered at once and the signature tried
	 * once more, so a dropped session costs the client nothing. */
	for (attempt = 0;; attempt++) {
		if ((r = sign_begin(ctx, k)) < 0)
			goto out;
		outlen = sizeof(out);
		r = sign_once(ctx, k, &si, out, &outlen, &fault);
		if (fault)
			tok_mark_unavailable(ctx, err_msg());
		pthread_rwlock_unlock(&ctx->op_lock);
		if (r == 0)
			break;
		if (!fault || attempt > 0)
			goto out;
		snprintf(first, sizeof(first), "%s", err_msg());
		/* recovered: sign_begin() answers for a LOCKED token */
		if (tok_recover(ctx, false, false) < 0) {
			r = err_set(P11J_E_TOKEN_UNAVAILABLE, "%s", first);
			goto out;
		}
	}
	r = sign_output(ctx, k, alg, out, outlen, sig, siglen);
out:
	OPENSSL_cleanse(si.buf, sizeof(si.buf));
	return r;
}

int tok_signer_fn(void *signer, jwa_alg alg, const uint8_t *in, size_t inlen, uint8_t *sig,
                  size_t *siglen)
{
	tok_signer *ts = signer;

	if (ts == NULL)
		return err_set(P11J_E_BAD_REQUEST, "tok_signer_fn: no signer");
	return tok_sign(ts->ctx, ts->key, alg, in, inlen, sig, siglen);
}
