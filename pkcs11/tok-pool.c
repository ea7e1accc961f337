/* SPDX-License-Identifier: MIT */
/* The session pool: one session per concurrent operation, up to
 * TOK_POOL_MAX or the token's own limit, closed rather than reused when its
 * state is unknown. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "pkcs11/tok-test.h"

#include <pthread.h>

#include <p11-kit/pkcs11.h>

/* How many sessions the pool may open; ctx->mu held. A smartcard allows 1,
 * a network HSM a few: ulMaxSessionCount, when the token gives one, else
 * TOK_POOL_MAX (CK_EFFECTIVELY_INFINITE, CK_UNAVAILABLE_INFORMATION). */
static size_t pool_cap(const tok_ctx *ctx)
{
	CK_ULONG m = ctx->ti.ulMaxSessionCount;

	if (m == CK_EFFECTIVELY_INFINITE || m == CK_UNAVAILABLE_INFORMATION || m >= TOK_POOL_MAX)
		return TOK_POOL_MAX;
	return (size_t)m;
}

size_t tok_session_limit(tok_ctx *ctx)
{
	CK_ULONG m;

	pthread_mutex_lock(&ctx->mu);
	m = ctx->ti.ulMaxSessionCount;
	pthread_mutex_unlock(&ctx->mu);
	if (m == CK_EFFECTIVELY_INFINITE || m == CK_UNAVAILABLE_INFORMATION)
		return 0;
	return m >= TOK_POOL_MAX ? TOK_POOL_MAX : (size_t)m;
}

int tok_pool_get(tok_ctx *ctx, CK_SESSION_HANDLE *ret)
{
	CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
	CK_RV rv;

	pthread_mutex_lock(&ctx->mu);
	for (;;) {
		for (;;) {
			if (ctx->nfree > 0) {
				*ret = ctx->free_s[--ctx->nfree];
				pthread_mutex_unlock(&ctx->mu);
				return 0;
			}
			if (ctx->nopen < pool_cap(ctx))
				break;
			pthread_cond_wait(&ctx->cv, &ctx->mu);
		}
		ctx->nopen++;
		pthread_mutex_unlock(&ctx->mu);

		/* Login state is per token, so this session is logged in
		 * already. */
		rv = ctx->f->C_OpenSession(ctx->slot, CKF_SERIAL_SESSION, NULL, NULL, &h);
		if (rv == CKR_OK) {
			*ret = h;
			return 0;
		}
		pthread_mutex_lock(&ctx->mu);
		ctx->nopen--;
		pthread_cond_signal(&ctx->cv);
		if (rv != CKR_SESSION_COUNT || ctx->nopen == 0)
			break;
		/* The token has no more sessions for us (it did not say, or
		 * another application holds the rest): the ones open are all
		 * we get, so from now on wait for one of them. */
		ctx->ti.ulMaxSessionCount = ctx->nopen;
		h = ctx->nopen;
		pthread_mutex_unlock(&ctx->mu);
		tok_log(ctx, TOK_LOG_WARNING,
		        "token '%s' refused session %lu (CKR_SESSION_COUNT); signing with %lu",
		        ctx->label, (unsigned long)h + 1, (unsigned long)h);
		pthread_mutex_lock(&ctx->mu);
	}
	pthread_mutex_unlock(&ctx->mu);
	return tok_ck(ctx, "C_OpenSession", rv);
}

void tok_pool_put(tok_ctx *ctx, CK_SESSION_HANDLE h)
{
	pthread_mutex_lock(&ctx->mu);
	ctx->free_s[ctx->nfree++] = h;
	pthread_cond_signal(&ctx->cv);
	pthread_mutex_unlock(&ctx->mu);
}

/* A session in an unknown state (broken, or an operation left active) is
 * closed rather than reused. */
void tok_pool_drop(tok_ctx *ctx, CK_SESSION_HANDLE h)
{
	pthread_mutex_lock(&ctx->close_mu);
	ctx->f->C_CloseSession(h);
	pthread_mutex_unlock(&ctx->close_mu);
	pthread_mutex_lock(&ctx->mu);
	ctx->nopen--;
	pthread_cond_signal(&ctx->cv);
	pthread_mutex_unlock(&ctx->mu);
}

/* Close what the pool holds; exclusive op_lock, so nothing is in use. Errors
 * are expected (the sessions are usually gone already). */
void tok_pool_flush(tok_ctx *ctx)
{
	size_t i;

	pthread_mutex_lock(&ctx->mu);
	for (i = 0; i < ctx->nfree; i++)
		ctx->f->C_CloseSession(ctx->free_s[i]);
	ctx->nopen -= ctx->nfree;
	ctx->nfree = 0;
	pthread_cond_broadcast(&ctx->cv);
	pthread_mutex_unlock(&ctx->mu);
}

size_t tok_test_open_sessions(tok_ctx *ctx)
{
	size_t n;

	pthread_mutex_lock(&ctx->mu);
	n = ctx->nopen;
	pthread_mutex_unlock(&ctx->mu);
	return n;
}
