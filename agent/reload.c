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
#include <time.h>
#include <unistd.h>

typedef struct {
	atomic_int refs;
	tok_ctx *ctx;
} reload_tok;

/* A parsed file, shared by the generations built from it (a rescan builds
 * a new generation from the same file). */
typedef struct {
	atomic_int refs;
	cfg_config *cfg;
} reload_cfg;

typedef struct {
	atomic_int refs;
	reload_cfg *rcfg;       /* NULL: no file */
	cfg_config *cfg;        /* rcfg->cfg, or NULL */
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
	/* the last rescan for a request naming an unknown key (monotonic ms):
	 * at most one per RELOAD_RESCAN_INTERVAL_MS */
	atomic_llong last_rescan_ms;
};

static void cfg_put(reload_cfg *c)
{
	if (c != NULL && atomic_fetch_sub(&c->refs, 1) == 1) {
		cfg_free(c->cfg);
		free(c);
	}
}

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
	cfg_put(g->rcfg);
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

/* --sign-processes: the token's signatures are made by processes of its
 * own (pkcs11/tok-proc.c) */
static int start_procs(reload_ctx *r, const tok_config *tc, tok_ctx *ctx)
{
	tok_proc_config pc = { .n = r->c.sign_processes, .exe = r->c.sign_exe,
			       .arg = r->c.sign_arg };

	if (r->c.sign_processes == 0)
		return 0;
	return tok_proc_start(ctx, tc, &pc);
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
	if ((e = tok_open(&tc, &rt->ctx)) < 0 || (e = start_procs(r, &tc, rt->ctx)) < 0) {
		tok_close(rt->ctx);
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

/* add_keys: the key was served by the generation before (old), and is no
 * longer on the token; a reload then drops it with a warning instead of
 * failing, so that deleting a retired key from the token does not stop
 * every later reload. */
static bool key_was_served(const reload_gen *old, const char *name)
{
	return old != NULL && kr_find(&old->kr, name) != NULL;
}

static int add_keys(reload_ctx *r, reload_gen *g, const reload_gen *old, size_t ti, bool *placed)
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
		if (tk == NULL && key_was_served(old, k->name)) {
			rlog(r, LOG_WARNING, "reload: %s:%u: [key %s] is no longer on token '%s'; "
			     "not served (remove the section)", cfg->path, k->line, k->name,
			     tok_label(ctx));
			continue;
		}
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

/* Build a generation for rc (its reference taken; NULL: no file) next to
 * old (may be NULL). */
static int gen_build(reload_ctx *r, reload_cfg *rc, reload_gen *old, reload_gen **ret)
{
	cfg_config *cfg = rc != NULL ? rc->cfg : NULL;
	size_t ndefs = cfg != NULL && cfg->ntokens > 0 ? cfg->ntokens : 1;
	bool *placed = NULL;
	reload_gen *g;
	int e = 0;

	g = calloc(1, sizeof(*g));
	if (g == NULL) {
		cfg_put(rc);
		return err_nomem();
	}
	atomic_init(&g->refs, 1);
	g->rcfg = rc;
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
		if ((e = add_keys(r, g, old, i, placed)) < 0)
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

/* cfg (taken; NULL: no file) with a reference count. */
static int cfg_wrap(cfg_config *cfg, reload_cfg **ret)
{
	*ret = NULL;
	if (cfg == NULL)
		return 0;
	if ((*ret = calloc(1, sizeof(**ret))) == NULL) {
		cfg_free(cfg);
		return err_nomem();
	}
	atomic_init(&(*ret)->refs, 1);
	(*ret)->cfg = cfg;
	return 0;
}

int reload_new(const reload_config *c, cfg_config *cfg, reload_ctx **ret)
{
	reload_ctx *r = calloc(1, sizeof(*r));
	reload_cfg *rc = NULL;
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
	if ((e = cfg_wrap(cfg, &rc)) < 0 || (e = gen_build(r, rc, NULL, &r->cur)) < 0) {
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
	       a->max_connections_per_uid != b->max_connections_per_uid ||
	       a->sign_processes != b->sign_processes;
}

/* The names in a that b lacks (as a JSON array), for the answer and the
 * log; a key whose name stayed but whose public key changed counts as
 * removed and added. */
static json_t *names_missing(const keyring *a, const keyring *b)
{
	json_t *v = json_array();

	for (size_t i = 0; v != NULL && i < a->n; i++) {
		const kr_key *o = kr_find(b, a->keys[i]->name);

		if ((o == NULL || strcmp(o->jkt, a->keys[i]->jkt) != 0) &&
		    json_array_append_new(v, json_string(a->keys[i]->name)) < 0) {
			json_decref(v);
			v = NULL;
		}
	}
	return v;
}

static void names_text(const json_t *v, char *buf, size_t len)
{
	size_t i, o = 0;
	json_t *n;

	buf[0] = '\0';
	json_array_foreach(v, i, n)
		if (o < len)
			o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? ", " : "",
					      json_string_value(n));
	if (o == 0)
		snprintf(buf, len, "none");
}

/* List every token's keys again; a token that fails keeps its list. */
static void rescan_tokens(reload_ctx *r, const reload_gen *g)
{
	for (size_t i = 0; i < g->ntoks; i++)
		if (tok_rescan(g->toks[i]->ctx, NULL, NULL) < 0)
			rlog(r, LOG_WARNING, "reload: %s; its keys stay as they were", err_msg());
}

static int reload_run(reload_ctx *r, bool reread, json_t *resp)
{
	cfg_config *cfg = NULL;
	reload_cfg *rc = NULL;
	char *errs = NULL;
	reload_gen *old, *g = NULL;
	json_t *added = NULL, *removed = NULL;
	char atext[256], rtext[256];
	int e = 0;

	pthread_mutex_lock(&r->reload_mu);
	if (reread && r->c.path != NULL) {
		e = cfg_load(r->c.path, &cfg, &errs);
		if (e < 0) {
			char first[256] = "";

			if (errs != NULL) {
				for (char *sv = NULL, *line = strtok_r(errs, "\n", &sv); line;
				     line = strtok_r(NULL, "\n", &sv)) {
					rlog(r, LOG_ERR, "reload: %s", line);
					if (first[0] == '\0')
						snprintf(first, sizeof(first), "%s", line);
				}
			} else {
				snprintf(first, sizeof(first), "%s", err_msg());
				rlog(r, LOG_ERR, "reload: %s", first);
			}
			rlog(r, LOG_ERR, "reload: %s has errors; keeping the current configuration",
			     r->c.path);
			free(errs);
			e = err_set(e, "%s has errors; keeping the current configuration (%s)",
				    r->c.path, first);
			goto out;
		}
		if ((e = cfg_wrap(cfg, &rc)) < 0)
			goto out;
	}
	pthread_mutex_lock(&r->mu);
	old = r->cur;
	atomic_fetch_add(&old->refs, 1);
	pthread_mutex_unlock(&r->mu);
	if (!reread || r->c.path == NULL) {
		/* the same file (or none): only the tokens' keys may differ */
		rc = old->rcfg;
		if (rc != NULL)
			atomic_fetch_add(&rc->refs, 1);
	} else if (settings_differ(old->cfg, rc->cfg)) {
		rlog(r, LOG_WARNING, "reload: [agent] settings changed; they apply at the next "
		     "start");
	}
	rescan_tokens(r, old);
	e = gen_build(r, rc, old, &g);
	if (e < 0) {
		rlog(r, LOG_ERR, "reload: %s; keeping the current configuration", err_msg());
		gen_put(old);
		goto out;
	}
	added = names_missing(&g->kr, &old->kr);
	removed = names_missing(&old->kr, &g->kr);
	pthread_mutex_lock(&r->mu);
	r->cur = g;
	pthread_mutex_unlock(&r->mu);
	names_text(added, atext, sizeof(atext));
	names_text(removed, rtext, sizeof(rtext));
	if (r->c.path != NULL && reread)
		rlog(r, LOG_INFO, "reload: %s loaded: %zu keys from %zu token%s; added: %s; "
		     "removed: %s", r->c.path, g->kr.n, g->ntoks, g->ntoks == 1 ? "" : "s", atext,
		     rtext);
	else
		rlog(r, LOG_INFO, "reload: keys listed again: %zu keys from %zu token%s; added: %s; "
		     "removed: %s", g->kr.n, g->ntoks, g->ntoks == 1 ? "" : "s", atext, rtext);
	if (resp != NULL &&
	    (json_object_set(resp, "added", added ? added : json_array()) < 0 ||
	     json_object_set(resp, "removed", removed ? removed : json_array()) < 0 ||
	     json_object_set_new(resp, "keys", json_integer((json_int_t)g->kr.n)) < 0 ||
	     json_object_set_new(resp, "config", r->c.path && reread ? json_string(r->c.path)
								     : json_null()) < 0))
		e = err_nomem();
	gen_put(old); /* ours */
	gen_put(old); /* the current one's: freed once the last request lets go */
out:
	json_decref(added);
	json_decref(removed);
	pthread_mutex_unlock(&r->reload_mu);
	return e;
}

int reload_now(reload_ctx *r)
{
	return reload_run(r, true, NULL);
}

int reload_op(void *rv, json_t *resp)
{
	return reload_run(rv, true, resp);
}

static long long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int reload_unknown_key(void *rv, const char *name)
{
	reload_ctx *r = rv;
	long long now = mono_ms(), last = atomic_load(&r->last_rescan_ms);
	void *ref = NULL;
	int found;

	/* one rescan per interval, whoever asks: a flood of unknown names
	 * costs one C_FindObjects per interval, and the others fail at once */
	if (last != 0 && now - last < RELOAD_RESCAN_INTERVAL_MS)
		return 0;
	if (!atomic_compare_exchange_strong(&r->last_rescan_ms, &last, now))
		return 0;
	rlog(r, LOG_INFO, "a request named a key the agent does not serve; listing the tokens' "
	     "keys again");
	if (reload_run(r, false, NULL) < 0)
		return 0;
	found = kr_find(reload_acquire(r, &ref), name) != NULL;
	reload_release(ref);
	return found;
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
