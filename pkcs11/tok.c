/* SPDX-License-Identifier: MIT */
/*
 * Token layer: the context's life (open, close, the log callback). See
 * docs/design-pkcs11.md for why it is shaped this way: modules allowlisted
 * by realpath(), one login per token, object handles resolved once at
 * open, a pool of sessions so that concurrent signatures never share a
 * session, and one place (tok_ck) where CK_RV becomes P11J_E_*. Its map of
 * files says which pkcs11/tok-*.c holds which behaviour.
 */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"
#include "common/util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

void tok_log(const tok_ctx *ctx, int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	p11j_vlog(ctx->log, ctx->log_ud, level, fmt, ap);
	va_end(ap);
}

/* A context with its locks and its PIN page, nothing opened yet. */
static int ctx_new(const tok_config *cfg, tok_ctx **ret)
{
	tok_ctx *ctx;
	pthread_rwlockattr_t ra;
	int r;

	ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL)
		return err_nomem();
	/* Writers (login, lock, recovery) must not starve behind a steady
	 * stream of signatures. */
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	if (pthread_mutex_init(&ctx->mu, NULL) != 0 || pthread_cond_init(&ctx->cv, NULL) != 0 ||
	    pthread_mutex_init(&ctx->close_mu, NULL) != 0 ||
	    pthread_mutex_init(&ctx->state_mu, NULL) != 0 ||
	    pthread_rwlock_init(&ctx->op_lock, &ra) != 0) {
		pthread_rwlockattr_destroy(&ra);
		free(ctx);
		return err_set(P11J_E_SYSTEM, "cannot create the session pool locks");
	}
	pthread_rwlockattr_destroy(&ra);
	ctx->locks_ok = true;
	ctx->log = cfg->log;
	ctx->log_ud = cfg->log_ud;
	ctx->no_login = cfg->no_login;
	ctx->allow_unsafe = cfg->allow_unsafe_keys;
	r = tok_pin_store_init(ctx);
	if (r < 0) {
		tok_close(ctx);
		return r;
	}
	*ret = ctx;
	return 0;
}

/* The URI parsed, its pin-value taken out (*ret_pin, NULL if none) so that
 * no message shows it, and the rest formatted for messages (*ret_shown). */
static int uri_parse(const char *ustr, P11KitUri **ret_uri, char **ret_pin, char **ret_shown)
{
	P11KitUri *uri = NULL;
	char *pin = NULL, *shown = NULL;
	int r = 0, ur;

	uri = p11_kit_uri_new();
	if (uri == NULL)
		return err_nomem();
	ur = p11_kit_uri_parse(ustr, P11_KIT_URI_FOR_OBJECT_ON_TOKEN_AND_MODULE, uri);
	if (ur != P11_KIT_URI_OK) {
		r = err_set(P11J_E_BAD_REQUEST, "invalid PKCS#11 URI: %s", p11_kit_uri_message(ur));
		goto out;
	}
	if (p11_kit_uri_any_unrecognized(uri)) {
		r = err_set(P11J_E_BAD_REQUEST,
		            "the PKCS#11 URI has path attributes p11jwt does "
		            "not know (RFC 7512: token, manufacturer, serial, model, object, id, "
		            "type, slot-id, ...)");
		goto out;
	}
	if (p11_kit_uri_get_pin_value(uri) != NULL) {
		pin = strdup(p11_kit_uri_get_pin_value(uri));
		if (pin == NULL) {
			r = err_nomem();
			goto out;
		}
		p11_kit_uri_set_pin_value(uri, NULL);
	}
	if (p11_kit_uri_format(uri, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &shown) != P11_KIT_URI_OK) {
		r = err_nomem();
		goto out;
	}
	*ret_uri = uri;
	*ret_pin = pin;
	*ret_shown = shown;
	uri = NULL;
	pin = NULL;
out:
	freezero_str(pin);
	p11_kit_uri_free(uri);
	return r;
}

static int open_token(const tok_config *cfg, bool need_keys, tok_ctx **ret)
{
	tok_ctx *ctx = NULL;
	P11KitUri *uri = NULL;
	char *uri_pin = NULL, *shown = NULL;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	bool locked = false;
	int r;

	if (cfg == NULL || ret == NULL)
		return err_set(P11J_E_BAD_REQUEST, "tok_open: no configuration");
	if ((r = ctx_new(cfg, &ctx)) < 0)
		return r;
	if ((r = uri_parse(cfg->uri != NULL ? cfg->uri : "pkcs11:", &uri, &uri_pin, &shown)) < 0 ||
	    (r = tok_module_load(ctx, cfg, uri)) < 0 || (r = tok_slot_find(ctx, uri, shown)) < 0 ||
	    (r = tok_mech_read(ctx)) < 0 || (r = tok_pool_get(ctx, &s)) < 0)
		goto out;
	if (!ctx->no_login && (r = tok_pin_open_login(ctx, cfg, uri, uri_pin, s, &locked)) < 0)
		goto out;
	r = tok_keys_enumerate(ctx, uri, s, ctx->no_login || locked);
	if (r < 0)
		goto out;
	if (ctx->no_login || locked) {
		ctx->tstate = TOK_LOCKED;
		if (locked)
			tok_log(ctx, TOK_LOG_INFO,
			        "no PIN for token '%s': locked until `p11jwt login`", ctx->label);
	}
	if (ctx->nkeys == 0 && need_keys) {
		r = err_set(P11J_E_NOT_FOUND, "no usable signing key on token '%s' matches '%s'",
		            ctx->label, shown);
		goto out;
	}
	/* The login session stays open in the pool: closing a token's last
	 * session logs the user out. */
	tok_pool_put(ctx, s);
	s = CK_INVALID_HANDLE;
	*ret = ctx;
	ctx = NULL;
	r = 0;
out:
	if (ctx != NULL && s != CK_INVALID_HANDLE)
		tok_pool_drop(ctx, s);
	tok_close(ctx);
	freezero_str(uri_pin);
	free(shown);
	p11_kit_uri_free(uri);
	return r;
}

int tok_open(const tok_config *cfg, tok_ctx **ret)
{
	return open_token(cfg, true, ret);
}

int tok_open_any(const tok_config *cfg, tok_ctx **ret)
{
	return open_token(cfg, false, ret);
}

CK_FUNCTION_LIST *tok_module(tok_ctx *ctx, CK_SLOT_ID *ret_slot)
{
	*ret_slot = ctx->slot;
	return ctx->f;
}

void tok_close(tok_ctx *ctx)
{
	if (ctx == NULL)
		return;
	tok_proc_stop(ctx); /* signing processes, if any */
	if (ctx->f != NULL)
		tok_pool_flush(ctx);
	tok_module_unload(ctx);
	tok_keys_free(ctx);
	tok_pin_store_free(ctx);
	if (ctx->locks_ok) {
		pthread_mutex_destroy(&ctx->mu);
		pthread_cond_destroy(&ctx->cv);
		pthread_mutex_destroy(&ctx->close_mu);
		pthread_mutex_destroy(&ctx->state_mu);
		pthread_rwlock_destroy(&ctx->op_lock);
	}
	free(ctx);
}

const char *tok_label(const tok_ctx *ctx)
{
	return ctx->label;
}
