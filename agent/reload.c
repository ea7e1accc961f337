/* SPDX-License-Identifier: MIT */
#include "agent/reload.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

typedef struct {
	atomic_int refs;
	tok_ctx *ctx;
} reload_tok;

typedef struct {
	atomic_int refs;
	cfg_config *cfg;        /* NULL: no file */
	keyring kr;
	reload_tok **toks;
	const cfg_token **tdef; /* the section each token was opened from */
	size_t ntoks;
} reload_gen;

struct reload_ctx {
	reload_config c;
	cfg_token cmdline; /* the command line's token (strings borrowed) */
	pthread_mutex_t mu;
	reload_gen *cur;
	pthread_mutex_t reload_mu; /* one reload at a time */
	int pipe[2];
	pthread_t thread;
	bool thread_started;
	atomic_bool stopping;
};

static void rlog(const reload_ctx *r, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rlog(const reload_ctx *r, int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	p11j_vlog(r->c.log, NULL, level, fmt, ap);
	va_end(ap);
}

static void tok_put(reload_tok *t)
{
	if (t != NULL && atomic_fetch_sub(&t->refs, 1) == 1) {
		tok_close(t->ctx);
		free(t);
	}
}

static void gen_free(reload_gen *g)
{
	if (g == NULL)
		return;
	kr_free(&g->kr); /* before the tokens its signers point into */
	for (size_t i = 0; i < g->ntoks; i++)
		tok_put(g->toks[i]);
	free(g->toks);
	free(g->tdef);
	cfg_free(g->cfg);
	free(g);
}

static void gen_put(reload_gen *g)
{
	if (g != NULL && atomic_fetch_sub(&g->refs, 1) == 1)
		gen_free(g);
}

/* An attribute of a PKCS#11 URI's path (object=, id=, token=), decoded. */
static bool uri_attr(const char *uri, const char *name, uint8_t *buf, size_t cap, size_t *ret_len)
{
	size_t nl = strlen(name);
	const char *s = uri + strlen("pkcs11:");

	while (*s && *s != '?') {
		const char *e = s + strcspn(s, ";?");

		if ((size_t)(e - s) > nl && strncmp(s, name, nl) == 0 && s[nl] == '=') {
			size_t n = 0;

			for (const char *q = s + nl + 1; q < e && n < cap; q++) {
				unsigned v;

				if (*q == '%' && e - q >= 3 && sscanf(q + 1, "%2x", &v) == 1) {
					buf[n++] = (uint8_t)v;
					q += 2;
				} else {
					buf[n++] = (uint8_t)*q;
				}
			}
			*ret_len = n;
			return true;
		}
		s = *e == ';' ? e + 1 : e;
	}
	return false;
}

static const tok_key *find_tok_key(tok_ctx *ctx, const cfg_key *k)
{
	uint8_t label[256], id[256];
	size_t llen = 0, ilen = 0;
	bool has_label = false, has_id = false;

	if (k->object != NULL) {
		llen = strlen(k->object);
		if (llen >= sizeof(label))
			return NULL;
		memcpy(label, k->object, llen);
		has_label = true;
	} else {
		has_label = uri_attr(k->uri, "object", label, sizeof(label) - 1, &llen);
		has_id = uri_attr(k->uri, "id", id, sizeof(id), &ilen);
	}
	label[llen] = '\0';
	for (size_t i = 0; i < tok_key_count(ctx); i++) {
		const tok_key *tk = tok_key_at(ctx, i);
		size_t kl = 0;
		const uint8_t *kid = tok_key_id(tk, &kl);

		if (has_label && strcmp(tok_key_name(tk), (const char *)label) != 0)
			continue;
		if (has_id && (kl != ilen || (ilen && memcmp(kid, id, ilen) != 0)))
			continue;
		return tk;
	}
	return NULL;
}

static int open_token(reload_ctx *r, const cfg_token *t, reload_tok **ret)
{
	const char *allow[33];
	tok_config tc = { 0 };
	reload_tok *rt;
	int e;

	rt = calloc(1, sizeof(*rt));
	if (rt == NULL)
		return err_nomem();
	if (t == &r->cmdline) {
		tc.module_allow = r->c.module_allow;
	} else if (t->module_allow.n > 0) {
		size_t n = t->module_allow.n < 32 ? t->module_allow.n : 32;

		for (size_t i = 0; i < n; i++)
			allow[i] = t->module_allow.v[i];
		allow[n] = NULL;
		tc.module_allow = allow;
	}
	tc.module_path = t->module;
	tc.module_init_args = t->module_init_args;
	tc.uri = t->uri ? t->uri : "pkcs11:";
	tc.pin_file = t->pin_file;
	tc.allow_unsafe_keys = t->allow_unsafe_keys;
	tc.allow_locked = true; /* no PIN: start locked, `p11jwt login` later */
	tc.log = r->c.tok_log;
	if ((e = tok_open(&tc, &rt->ctx)) < 0) {
		free(rt);
		if (t != &r->cmdline)
			return err_set(e, "[token %s]: %s", t->name, err_msg());
		return e;
	}
	atomic_init(&rt->refs, 1);
	*ret = rt;
	return 0;
}

/* Whether cfg key k lives on token i of ndefs (defs[i], opened as ctx). */
static bool key_on_token(const cfg_key *k, const cfg_token *def, size_t ndefs, tok_ctx *ctx)
{
	if (k->token != NULL)
		return strcmp(k->token, def->name) == 0;
	if (ndefs == 1)
		return true;
	return k->uri != NULL && strstr(k->uri, "token=") != NULL && tok_matches(ctx, k->uri);
}

static int add_keys(reload_ctx *r, reload_gen *g, size_t ti, bool *placed)
{
	const cfg_config *cfg = g->cfg;
	tok_ctx *ctx = g->toks[ti]->ctx;
	bool any = false;
	int e;

	for (size_t i = 0; cfg != NULL && i < cfg->nkeys; i++) {
		const cfg_key *k = &cfg->keys[i];
		const tok_key *tk;
		char *hex = NULL;
		const char *kid = NULL;
		kr_key *kk;
		size_t idlen = 0;
		const uint8_t *id;

		if (placed[i] || !key_on_token(k, g->tdef[ti], g->ntoks, ctx))
			continue;
		placed[i] = any = true;
		tk = find_tok_key(ctx, k);
		if (tk == NULL)
			return err_set(P11J_E_NOT_FOUND, "%s:%u: [key %s]: no signing key matching %s "
				       "'%s' on token '%s'", cfg->path, k->line, k->name,
				       k->object ? "object" : "uri", k->object ? k->object : k->uri,
				       tok_label(ctx));
		if ((e = kr_add_tok_key(&g->kr, k->name, ctx, tk)) < 0)
			return err_set(e, "%s:%u: [key %s]: %s", cfg->path, k->line, k->name, err_msg());
		kk = g->kr.keys[g->kr.n - 1];
		if (k->kid_mode == CFG_KID_FIXED) {
			kid = k->kid;
		} else if (k->kid_mode == CFG_KID_ID) {
			id = tok_key_id(tk, &idlen);
			if (idlen == 0)
				return err_set(P11J_E_NOT_FOUND, "%s:%u: [key %s]: kid = id, but the key "
					       "has no CKA_ID", cfg->path, k->line, k->name);
			if ((e = util_hex(id, idlen, &hex)) < 0)
				return e;
			kid = hex;
		}
		if (k->pol.include_auto != 0 && kk->cert == NULL) {
			free(hex);
			return err_set(P11J_E_NOT_FOUND, "%s:%u: [key %s]: include_auto, but the key "
				       "has no certificate", cfg->path, k->line, k->name);
		}
		e = kr_key_configure(kk, &k->pol, k->alg, kid);
		free(hex);
		if (e < 0)
			return err_set(e, "%s:%u: %s", cfg->path, k->line, err_msg());
	}
	if (!any) {
		/* a token no [key] names serves every key under its label, with
		 * the default policy */
		for (size_t i = 0; i < tok_key_count(ctx); i++) {
			const tok_key *tk = tok_key_at(ctx, i);

			if ((e = kr_add_tok_key(&g->kr, tok_key_name(tk), ctx, tk)) < 0)
				return e;
		}
	}
	return 0;
}

/* Build a generation for cfg (taken) next to old (may be NULL). */
static int gen_build(reload_ctx *r, cfg_config *cfg, reload_gen *old, reload_gen **ret)
{
	size_t ndefs = cfg != NULL && cfg->ntokens > 0 ? cfg->ntokens : 1;
	bool *placed = NULL;
	reload_gen *g;
	int e = 0;

	g = calloc(1, sizeof(*g));
	if (g == NULL) {
		cfg_free(cfg);
		return err_nomem();
	}
	atomic_init(&g->refs, 1);
	g->cfg = cfg;
	g->toks = calloc(ndefs, sizeof(*g->toks));
	g->tdef = calloc(ndefs, sizeof(*g->tdef));
	placed = calloc(cfg ? cfg->nkeys + 1 : 1, sizeof(*placed));
	if (g->toks == NULL || g->tdef == NULL || placed == NULL) {
		e = err_nomem();
		goto fail;
	}
	for (size_t i = 0; i < ndefs; i++) {
		const cfg_token *def = cfg != NULL && cfg->ntokens > 0 ? &cfg->tokens[i] : &r->cmdline;
		reload_tok *t = NULL;

		for (size_t j = 0; old != NULL && j < old->ntoks; j++)
			if (cfg_token_same(old->tdef[j], def)) {
				t = old->toks[j];
				atomic_fetch_add(&t->refs, 1);
				break;
			}
		if (t == NULL && (e = open_token(r, def, &t)) < 0)
			goto fail;
		g->toks[g->ntoks] = t;
		g->tdef[g->ntoks++] = def;
	}
	for (size_t i = 0; i < g->ntoks; i++)
		if ((e = add_keys(r, g, i, placed)) < 0)
			goto fail;
	for (size_t i = 0; cfg != NULL && i < cfg->nkeys; i++)
		if (!placed[i]) {
			e = err_set(P11J_E_NOT_FOUND, "%s:%u: [key %s]: no token matches its uri",
				    cfg->path, cfg->keys[i].line, cfg->keys[i].name);
			goto fail;
		}
	kr_sort(&g->kr);
	free(placed);
	*ret = g;
	return 0;
fail:
	free(placed);
	gen_free(g);
	return e;
}

int reload_new(const reload_config *c, cfg_config *cfg, reload_ctx **ret)
{
	reload_ctx *r = calloc(1, sizeof(*r));
	int e;

	if (r == NULL) {
		cfg_free(cfg);
		return err_nomem();
	}
	r->c = *c;
	r->cmdline.name = (char *)"default";
	r->cmdline.module = (char *)c->module;
	r->cmdline.module_init_args = (char *)c->module_init_args;
	r->cmdline.uri = (char *)c->uri;
	r->cmdline.pin_file = (char *)c->pin_file;
	r->cmdline.allow_unsafe_keys = c->allow_unsafe_keys;
	r->pipe[0] = r->pipe[1] = -1;
	pthread_mutex_init(&r->mu, NULL);
	pthread_mutex_init(&r->reload_mu, NULL);
	if ((e = gen_build(r, cfg, NULL, &r->cur)) < 0) {
		reload_free(r);
		return e;
	}
	*ret = r;
	return 0;
}

const keyring *reload_acquire(void *rv, void **ref)
{
	reload_ctx *r = rv;
	reload_gen *g;

	pthread_mutex_lock(&r->mu);
	g = r->cur;
	atomic_fetch_add(&g->refs, 1);
	pthread_mutex_unlock(&r->mu);
	*ref = g;
	return &g->kr;
}

void reload_release(void *ref)
{
	gen_put(ref);
}

static bool settings_differ(const cfg_config *a, const cfg_config *b)
{
	if (a == NULL || b == NULL)
		return a != b;
	return (a->socket == NULL) != (b->socket == NULL) ||
	       (a->socket && strcmp(a->socket, b->socket) != 0) ||
	       a->max_connections != b->max_connections || a->workers != b->workers ||
	       a->line_timeout != b->line_timeout || a->idle_timeout != b->idle_timeout ||
	       a->max_connections_per_uid != b->max_connections_per_uid;
}

int reload_now(reload_ctx *r)
{
	cfg_config *cfg = NULL;
	char *errs = NULL;
	reload_gen *old, *g = NULL;
	int e;

	if (r->c.path == NULL) {
		rlog(r, LOG_INFO, "reload: started without --config; nothing to reload");
		return 0;
	}
	pthread_mutex_lock(&r->reload_mu);
	e = cfg_load(r->c.path, &cfg, &errs);
	if (e < 0) {
		if (errs != NULL) {
			for (char *sv = NULL, *line = strtok_r(errs, "\n", &sv); line;
			     line = strtok_r(NULL, "\n", &sv))
				rlog(r, LOG_ERR, "reload: %s", line);
		} else {
			rlog(r, LOG_ERR, "reload: %s", err_msg());
		}
		rlog(r, LOG_ERR, "reload: %s has errors; keeping the current configuration",
		     r->c.path);
		free(errs);
		goto out;
	}
	pthread_mutex_lock(&r->mu);
	old = r->cur;
	atomic_fetch_add(&old->refs, 1);
	pthread_mutex_unlock(&r->mu);
	if (settings_differ(old->cfg, cfg))
		rlog(r, LOG_WARNING, "reload: [agent] settings changed; they apply at the next "
		     "start");
	e = gen_build(r, cfg, old, &g);
	if (e < 0) {
		rlog(r, LOG_ERR, "reload: %s; keeping the current configuration", err_msg());
		gen_put(old);
		goto out;
	}
	pthread_mutex_lock(&r->mu);
	r->cur = g;
	pthread_mutex_unlock(&r->mu);
	gen_put(old); /* ours */
	gen_put(old); /* the current one's: freed once the last request lets go */
	rlog(r, LOG_INFO, "reload: %s loaded: %zu keys from %zu token%s", r->c.path, g->kr.n,
	     g->ntoks, g->ntoks == 1 ? "" : "s");
out:
	pthread_mutex_unlock(&r->reload_mu);
	return e;
}

static void *reload_thread(void *arg)
{
	reload_ctx *r = arg;
	struct pollfd pfd = { .fd = r->pipe[0], .events = POLLIN };
	char buf[64];

	for (;;) {
		if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			break;
		/* several signals may have queued: one reload for all of them */
		while (read(r->pipe[0], buf, sizeof(buf)) > 0)
			;
		if (atomic_load(&r->stopping))
			break;
		if (pfd.revents & POLLIN)
			reload_now(r);
	}
	return NULL;
}

int reload_start(reload_ctx *r)
{
	/* non-blocking: the signal handler must never block, and the thread
	 * drains what queued up */
	if (pipe2(r->pipe, O_CLOEXEC | O_NONBLOCK) < 0)
		return err_set(P11J_E_SYSTEM, "pipe: %s", strerror(errno));
	if (pthread_create(&r->thread, NULL, reload_thread, r) != 0)
		return err_set(P11J_E_SYSTEM, "cannot start the reload thread");
	r->thread_started = true;
	return 0;
}

void reload_later(reload_ctx *r)
{
	int saved = errno;

	if (r != NULL && r->pipe[1] >= 0)
		(void)!write(r->pipe[1], "r", 1);
	errno = saved;
}

void reload_free(reload_ctx *r)
{
	if (r == NULL)
		return;
	if (r->thread_started) {
		atomic_store(&r->stopping, true);
		/* a full pipe wakes the thread as well */
		(void)!write(r->pipe[1], "q", 1);
		pthread_join(r->thread, NULL);
	}
	if (r->pipe[0] >= 0)
		close(r->pipe[0]);
	if (r->pipe[1] >= 0)
		close(r->pipe[1]);
	gen_put(r->cur);
	pthread_mutex_destroy(&r->mu);
	pthread_mutex_destroy(&r->reload_mu);
	free(r);
}

size_t reload_token_count(void *ref)
{
	return ((reload_gen *)ref)->ntoks;
}

tok_ctx *reload_token_at(void *ref, size_t i)
{
	reload_gen *g = ref;

	return i < g->ntoks ? g->toks[i]->ctx : NULL;
}

int reload_pick_token(void *ref, const char *uri, tok_ctx **ret)
{
	reload_gen *g = ref;

	if (uri == NULL || uri[0] == '\0') {
		if (g->ntoks != 1)
			return err_set(P11J_E_BAD_REQUEST, "this agent serves %zu tokens; name one "
				       "with 'token'", g->ntoks);
		*ret = g->toks[0]->ctx;
		return 0;
	}
	for (size_t i = 0; i < g->ntoks; i++)
		if (tok_matches(g->toks[i]->ctx, uri)) {
			*ret = g->toks[i]->ctx;
			return 0;
		}
	if (g->ntoks == 1)
		return err_set(P11J_E_BAD_REQUEST, "this agent serves token '%s', not '%.200s'",
			       tok_label(g->toks[0]->ctx), uri);
	return err_set(P11J_E_BAD_REQUEST, "this agent serves no token matching '%.200s'", uri);
}
