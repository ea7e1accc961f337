/* SPDX-License-Identifier: MIT */
/* The context's state (READY, LOCKED, UNAVAILABLE) and the recovery from a
 * lost device or session: fail fast, try again after a back-off, log in
 * with the cached PIN, find the keys again. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "pkcs11/tok-test.h"
#include "common/err.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

uint64_t tok_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void tok_state_set(tok_ctx *ctx, tok_state st)
{
	pthread_mutex_lock(&ctx->state_mu);
	ctx->tstate = st;
	pthread_mutex_unlock(&ctx->state_mu);
}

tok_state tok_get_state(tok_ctx *ctx)
{
	return atomic_load(&ctx->tstate);
}

const char *tok_state_name(tok_state st)
{
	switch (st) {
	case TOK_READY:
		return "ready";
	case TOK_LOCKED:
		return "locked";
	default:
		return "unavailable";
	}
}

/* A call failed in a way that says the device or our sessions are gone:
 * from now on callers fail fast until a recovery succeeds. Logged once. */
void tok_mark_unavailable(tok_ctx *ctx, const char *why)
{
	bool was;

	pthread_mutex_lock(&ctx->state_mu);
	was = ctx->tstate == TOK_UNAVAILABLE;
	ctx->tstate = TOK_UNAVAILABLE;
	pthread_mutex_unlock(&ctx->state_mu);
	if (!was)
		tok_log(ctx, TOK_LOG_WARNING,
		        "%s; signing answers token_unavailable until the token is back "
		        "(checked at most every %d ms)",
		        why, TOK_RECOVER_MS);
}

void tok_recover_later(tok_ctx *ctx)
{
	pthread_mutex_lock(&ctx->state_mu);
	ctx->next_try_ms = tok_now_ms() + TOK_RECOVER_MS;
	pthread_mutex_unlock(&ctx->state_mu);
}

/* One attempt to get back to a logged-in token with usable handles; the
 * caller holds op_lock exclusively. Sets the state. */
static int reopen_once(tok_ctx *ctx, bool *ret_absent)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	int r;

	*ret_absent = false;
	r = tok_slot_refind(ctx);
	if (r < 0)
		return r;
	if (r == 0) {
		*ret_absent = true;
		return err_set(P11J_E_TOKEN_UNAVAILABLE, "token '%s' is not present", ctx->label);
	}
	if ((r = tok_pool_get(ctx, &s)) < 0)
		return r;
	ctx->logged_in = false;
	tok_keys_forget(ctx);
	if (ctx->pin_cached || ctx->pinpad) {
		r = tok_pin_login(ctx, s, ctx->pinpad ? NULL : ctx->pin, ctx->pin_len);
		if (r == P11J_E_PIN_INCORRECT) {
			/* The PIN was changed meanwhile: never send it again. */
			tok_log(ctx, TOK_LOG_WARNING,
			        "token '%s' is back but refused the cached PIN (%s); locked",
			        ctx->label, err_msg());
			tok_pin_store_wipe(ctx);
			tok_pool_put(ctx, s);
			tok_state_set(ctx, TOK_LOCKED);
			return 0;
		}
		if (r < 0)
			goto fail;
	}
	if (ctx->logged_in || !(ctx->ti.flags & CKF_LOGIN_REQUIRED)) {
		r = tok_keys_resolve(ctx, s);
		if (r < 0)
			goto fail;
		tok_pool_put(ctx, s);
		tok_state_set(ctx, TOK_READY);
		return 0;
	}
	/* No PIN kept (locked while the token was away): make sure the
	 * token's login state agrees with ours. */
	(void)ctx->f->C_Logout(s);
	tok_pool_put(ctx, s);
	tok_state_set(ctx, TOK_LOCKED);
	return 0;
fail:
	tok_pool_drop(ctx, s);
	return r;
}

/* Exclusive op_lock held. A module whose transport broke (p11-kit-client
 * after its server went away) answers every call with CKR_DEVICE_ERROR or
 * CKR_DEVICE_REMOVED until it is initialised again, and initialised while
 * its server is away it shows no slot until the next C_Initialize: one we
 * initialised ourselves is finalized and initialised again, and again at
 * each attempt until the token is back. A module that merely shows the
 * token absent (a card pulled out) is left alone. */
static int reopen(tok_ctx *ctx)
{
	bool absent = false, ours = ctx->state[ctx->mod_idx] == MOD_OURS;
	int r;

	tok_pool_flush(ctx);
	if (!ctx->reinit_pending) {
		r = reopen_once(ctx, &absent);
		if (r >= 0 || r != P11J_E_TOKEN_UNAVAILABLE || absent || !ours)
			return r;
		tok_log(ctx, TOK_LOG_INFO, "initialising the PKCS#11 module again (%s)", err_msg());
	}
	ctx->f->C_Finalize(NULL);
	pthread_mutex_lock(&ctx->mu);
	ctx->nopen = 0; /* C_Finalize closed every session */
	pthread_mutex_unlock(&ctx->mu);
	ctx->reinit_pending = true;
	if (tok_module_init(ctx, ctx->mod_idx) < 0)
		return P11J_E_TOKEN_UNAVAILABLE;
	r = reopen_once(ctx, &absent);
	if (r >= 0)
		ctx->reinit_pending = false;
	return r;
}

/* Try to recover if nobody else is and the back-off allows (force: login
 * asks, back-off ignored). Returns 0 when the state changed from
 * UNAVAILABLE (to READY or LOCKED), else P11J_E_TOKEN_UNAVAILABLE at once. */
int tok_recover(tok_ctx *ctx, bool force, bool have_wrlock)
{
	uint64_t now = tok_now_ms();
	int r;

	pthread_mutex_lock(&ctx->state_mu);
	if (ctx->tstate != TOK_UNAVAILABLE) {
		pthread_mutex_unlock(&ctx->state_mu);
		return 0;
	}
	if (ctx->recovering || (!force && now < ctx->next_try_ms)) {
		pthread_mutex_unlock(&ctx->state_mu);
		return err_set(P11J_E_TOKEN_UNAVAILABLE,
		               "token '%s' is unavailable (removed, or its device or sessions "
		               "failed); trying again shortly",
		               ctx->label);
	}
	ctx->recovering = true;
	pthread_mutex_unlock(&ctx->state_mu);

	if (!have_wrlock)
		pthread_rwlock_wrlock(&ctx->op_lock);
	r = reopen(ctx);
	if (r >= 0)
		tok_proc_recovered(ctx); /* signing processes, if any */
	if (!have_wrlock)
		pthread_rwlock_unlock(&ctx->op_lock);

	pthread_mutex_lock(&ctx->state_mu);
	ctx->recovering = false;
	ctx->next_try_ms = tok_now_ms() + TOK_RECOVER_MS;
	pthread_mutex_unlock(&ctx->state_mu);
	if (r < 0)
		return err_set(P11J_E_TOKEN_UNAVAILABLE, "token '%s' is unavailable: %s",
		               ctx->label, err_msg());
	tok_log(ctx, TOK_LOG_INFO, "token '%s' is back (%s)", ctx->label,
	        tok_state_name(tok_get_state(ctx)));
	return 0;
}

void tok_test_recover_now(tok_ctx *ctx)
{
	pthread_mutex_lock(&ctx->state_mu);
	ctx->next_try_ms = 0;
	pthread_mutex_unlock(&ctx->state_mu);
}
