/* SPDX-License-Identifier: MIT */
/* The token flow shared by p11jwt token and call: options to a resolved
 * request, the assertion signed by the agent, the token endpoint (with
 * retries and hints), the cache and refresh tokens, dry runs. */
#include "cli/agc.h"
#include "cli/cache.h"
#include "cli/exchange.h"
#include "cli/http.h"
#include "cli/token.h"
#include "common/err.h"
#include "common/sockdir.h"
#include "common/util.h"
#include "jose/dpop.h"
#include "jose/jws.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/un.h>
#include <openssl/crypto.h>

#define CLIENT_SECRET_MAX 4096

void tkn_note(const char *fmt, ...)
{
	va_list ap;

	fputs("p11jwt: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* The secret: the options' or profile's file, else $P11JWT_CLIENT_SECRET
 * (wiped from the environment once read). NULL when none. */
static int read_secret(const topts *o, char **ret)
{
	const json_t *f = json_object_get(o->cli, "client_secret_file");
	char *env = getenv("P11JWT_CLIENT_SECRET");
	size_t len;
	int r;

	*ret = NULL;
	if (f == NULL && o->profile)
		f = json_object_get(o->profile, "client_secret_file");
	if (f) {
		if ((r = util_read_file(json_string_value(f), CLIENT_SECRET_MAX, true, ret, &len)) < 0)
			return err_set(r, "client secret: %s", err_msg());
		util_chomp(*ret);
		if (**ret == '\0') {
			freezero_str(*ret);
			*ret = NULL;
			return err_set(P11J_E_BAD_REQUEST, "client secret file %s is empty",
				       json_string_value(f));
		}
	} else if (env && *env) {
		*ret = strdup(env);
		if (*ret == NULL)
			return err_nomem();
	}
	if (env) {
		OPENSSL_cleanse(env, strlen(env));
		unsetenv("P11JWT_CLIENT_SECRET");
	}
	return 0;
}

json_t *tkn_agent_keys(xch_req *req, bool quiet, int *ret_st)
{
	cli_ctx actx = { .socket = req->socket, .agent_uid = req->agent_uid };
	json_t *resp = NULL, *keys;
	int st;

	*ret_st = 0;
	if (req->agent_keys)
		return json_incref(req->agent_keys);
	if (quiet) {
		/* cli_call prints; a cache check must not fail a run that the
		 * cache can serve without the agent */
		char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
		uid_t trusted[SOCKDIR_MAX_UIDS];
		size_t ntrusted = 0;
		agc_origin origin = AGC_LOCAL;
		json_t *req_keys = json_pack("{s:s}", "op", "keys");

		st = req_keys == NULL || agc_socket_path(req->socket, path, sizeof(path)) < 0 ||
		     agc_trusted_uids(req->agent_uid, trusted, &ntrusted) < 0 ||
		     agc_call(path, trusted, ntrusted, req_keys, AGC_TIMEOUT_MS, &resp, &origin) < 0;
		json_decref(req_keys);
	} else {
		st = cli_call(&actx, json_pack("{s:s}", "op", "keys"), &resp);
	}
	if (st != 0) {
		*ret_st = quiet ? 0 : st;
		return NULL;
	}
	keys = json_incref(json_object_get(resp, "keys"));
	json_decref(resp);
	if (!json_is_array(keys)) {
		json_decref(keys);
		if (!quiet)
			*ret_st = cli_fail(err_set(P11J_E_PROTOCOL, "the agent's answer has no key list"));
		return NULL;
	}
	req->agent_keys = json_incref(keys);
	return keys;
}

/* --key @active / @next (and the DPoP key): the one key in that state. */
static int resolve_roles(xch_req *req)
{
	char **names[2] = { &req->key, &req->dpop_key };
	json_t *keys = NULL;
	int st = 0, r;

	for (size_t i = 0; i < 2 && st == 0; i++) {
		char *name = NULL;

		if (!xch_is_role(*names[i]))
			continue;
		if (keys == NULL && (keys = tkn_agent_keys(req, false, &st)) == NULL)
			break;
		if ((r = xch_key_role(keys, *names[i], &name)) < 0) {
			st = cli_fail(r);
			break;
		}
		tkn_note("note: %s is key '%s'", *names[i], name);
		free(*names[i]);
		*names[i] = name;
	}
	json_decref(keys);
	return st;
}

const char *tkn_listed_jkt(const json_t *keys, const char *name)
{
	size_t i;
	json_t *k;

	json_array_foreach(keys, i, k)
		if (name && strcmp(json_string_value(json_object_get(k, "name")) ?: "", name) == 0)
			return json_string_value(json_object_get(k, "jkt")) ?: "";
	return NULL;
}

/* A cached token obtained with a key the agent no longer serves, or whose
 * public key changed under the same name (a rotation), is of no use: the
 * provider will not take an assertion of that key again, and a refresh
 * would carry on a credential the operator meant to retire. When the agent
 * cannot be asked, the entry stands. */
static bool entry_key_gone(xch_req *req, const json_t *e)
{
	const char *had = json_string_value(json_object_get(e, "key_jkt"));
	const char *name = json_string_value(json_object_get(e, "key"));
	const char *now;
	json_t *keys;
	bool gone;
	int st;

	if ((keys = tkn_agent_keys(req, true, &st)) == NULL)
		return false;
	now = tkn_listed_jkt(keys, name);
	gone = now == NULL || (had != NULL && strcmp(had, now) != 0);
	if (gone)
		tkn_note("note: the cached token was obtained with key '%s', which the agent %s; "
			 "getting a new one", name ? name : "?",
			 now == NULL ? "no longer serves" : "now serves with another public key");
	json_decref(keys);
	return gone;
}

static void print_warnings(const xch_req *req)
{
	size_t i;
	json_t *w;

	json_array_foreach(req->warnings, i, w)
		tkn_note("warning: %s", json_string_value(w));
}

/* The alg for a key, when the preset (or profile) lists the algs the
 * provider accepts and none was given: the first the key signs, from the
 * agent's key list. Asked just before the first signature, so that a
 * cache hit costs no agent round trip (the cache key holds the alg asked
 * for, not the one chosen). Returns 0 or an exit status. */
static int choose_alg(xch_req *req)
{
	json_t *keys;
	int r, st;

	if (!xch_alg_needs_key(req))
		return 0;
	if ((keys = tkn_agent_keys(req, false, &st)) == NULL)
		return st;
	r = xch_choose_alg(req, keys);
	json_decref(keys);
	if (r < 0) {
		st = cli_fail(r);
		/* the options do not fit the key: a usage error, not a refusal */
		return r == P11J_E_UNSUPPORTED_ALG ? CLI_EXIT_USAGE : st;
	}
	return 0;
}

/* Sign the assertion (choosing the alg first); *ret_jwt is the JWT, *ret_p
 * its decoded parts. */
int tkn_sign_assertion(xch_req *req, char **ret_jwt, jws_parsed *ret_p)
{
	cli_ctx actx = { .socket = req->socket, .agent_uid = req->agent_uid };
	json_t *sreq = NULL, *resp = NULL;
	const char *jwt;
	int r;

	if ((r = choose_alg(req)) != 0)
		return r;
	if ((r = xch_sign_request(req, &sreq)) < 0)
		return cli_fail(r);
	if ((r = cli_call(&actx, sreq, &resp)) != 0)
		return r;
	jwt = json_string_value(json_object_get(resp, "jwt"));
	if (jwt == NULL) {
		json_decref(resp);
		return cli_fail(err_set(P11J_E_PROTOCOL, "the agent's answer has no jwt"));
	}
	*ret_jwt = strdup(jwt);
	json_decref(resp);
	if (*ret_jwt == NULL)
		return cli_fail(err_nomem());
	if (ret_p && (r = jws_parse(*ret_jwt, ret_p)) < 0) {
		freezero_str(*ret_jwt);
		*ret_jwt = NULL;
		return cli_fail(r);
	}
	return 0;
}

void tkn_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* The OAuth error code of a response body, or NULL (malloc'd). */
static char *oauth_error(const http_resp *resp)
{
	json_t *j = resp->body ? json_loadb(resp->body, resp->len, 0, NULL) : NULL;
	const char *e = json_string_value(json_object_get(j, "error"));
	char *ret = e ? strdup(e) : NULL;

	json_decref(j);
	return ret;
}

/* The hints for an OAuth error of the token endpoint: the DPoP one alone
 * when the error is about DPoP, else the assertion's, then the one saying
 * the client may require DPoP. */
static void print_hints(const xch_req *req, const char *error, const char *d,
			const jws_parsed *jp, const char *proof_alg)
{
	char buf[1024];
	const char *hint;
	char *algs = NULL;

	if (!xch_dpop_related(error, d) &&
	    (hint = xch_hint(req, error, d, jp->header, jp->claims, util_now(), buf, sizeof(buf))))
		tkn_note("hint: %s", hint);
	if (req->dpop && strcmp(error, "invalid_dpop_proof") == 0)
		algs = tkn_dpop_server_algs(req);
	if ((hint = xch_dpop_hint(req, error, d, proof_alg, algs, buf, sizeof(buf))))
		tkn_note("hint: %s", hint);
	free(algs);
}

/* POST a form (with a fresh assertion in each attempt when needs_jwt, and
 * a fresh DPoP proof with req->dpop) to the token endpoint and parse the
 * answer. A use_dpop_nonce answer with a DPoP-Nonce is tried again once
 * with the nonce; the server's last nonce is kept for the next run.
 * Returns 0 or an exit status. */
static int post_form(xch_req *req, form *f, bool needs_jwt, xch_token *tok)
{
	http_opts ho = { .cacert = req->cacert, .timeout_s = req->timeout };
	const char *hdrs[] = { "Content-Type: application/x-www-form-urlencoded",
			       "Accept: application/json", NULL, NULL };
	http_resp resp = { 0 };
	jws_parsed jp = { 0 };
	char *body = NULL, *jwt = NULL, *error = NULL, *nonce = NULL, *proof = NULL;
	char *dpop_hdr = NULL, *palg = NULL;
	bool nonce_retried = false;
	int r, st = 0;

	if ((r = xch_check_url(req)) < 0)
		return cli_fail(r);
	if (req->dpop && (st = tkn_dpop_bind(req)) != 0)
		return st;
	if (req->dpop)
		nonce = tkn_dpop_nonce_get(TKN_TOKEN_ENDPOINT, req->token_url);
	for (int attempt = 1;; attempt++) {
		long delay;

		if (needs_jwt) {
			jws_parsed_clear(&jp);
			freezero_str(jwt);
			jwt = NULL;
			if ((st = tkn_sign_assertion(req, &jwt, &jp)) != 0)
				goto out;
			if ((r = form_set(f, req->assertion_field, jwt)) < 0) {
				st = cli_fail(r);
				goto out;
			}
		}
		if (req->dpop) {
			free(proof);
			free(palg);
			free(dpop_hdr);
			proof = palg = dpop_hdr = NULL;
			if ((st = tkn_dpop_proof(req, "POST", req->token_url, nonce, NULL, &proof,
						 &palg)) != 0)
				goto out;
			if (asprintf(&dpop_hdr, "DPoP: %s", proof) < 0) {
				dpop_hdr = NULL;
				st = cli_fail(err_nomem());
				goto out;
			}
			hdrs[2] = dpop_hdr;
		}
		if ((r = form_encode(f, &body)) < 0) {
			st = cli_fail(r);
			goto out;
		}
		r = http_request(&ho, "POST", req->token_url, hdrs, body, strlen(body), &resp);
		freezero_str(body);
		body = NULL;
		if (r == 0 && req->dpop && resp.dpop_nonce) {
			tkn_dpop_nonce_put(TKN_TOKEN_ENDPOINT, req->token_url, resp.dpop_nonce);
			if (!nonce_retried && resp.status == 400) {
				char *e = oauth_error(&resp);
				bool again = e && strcmp(e, "use_dpop_nonce") == 0 &&
					     dpop_nonce_check(resp.dpop_nonce,
							      strlen(resp.dpop_nonce)) == 0;

				free(e);
				if (again) {
					tkn_note("note: the token endpoint asks for a DPoP nonce; "
						 "trying again with it");
					free(nonce);
					if ((nonce = strdup(resp.dpop_nonce)) == NULL) {
						st = cli_fail(err_nomem());
						goto out;
					}
					nonce_retried = true;
					http_resp_clear(&resp);
					attempt--; /* not a failed attempt */
					continue;
				}
			}
		}
		delay = http_retry_delay_ms(attempt, r, &resp, true);
		if (delay >= 0) {
			if (r < 0)
				tkn_note("note: %s; trying again in %ld ms (attempt %d of %d)", err_msg(),
				     delay, attempt + 1, HTTP_MAX_ATTEMPTS);
			else
				tkn_note("note: the token endpoint answered HTTP %ld; trying again in %ld "
				     "ms (attempt %d of %d)",
				     resp.status, delay, attempt + 1, HTTP_MAX_ATTEMPTS);
			http_resp_clear(&resp);
			tkn_sleep_ms(delay);
			continue;
		}
		if (r < 0) {
			st = cli_fail(r);
			goto out;
		}
		break;
	}
	r = xch_parse_token(resp.status, resp.body, resp.len, tok, &error);
	if (r == P11J_E_OAUTH) {
		json_t *ej = json_loadb(resp.body, resp.len, 0, NULL);

		tkn_note("%s", err_msg());
		print_hints(req, error, json_string_value(json_object_get(ej, "error_description")),
			    &jp, palg);
		json_decref(ej);
		st = CLI_EXIT_OAUTH;
	} else if (r < 0) {
		st = cli_fail(r);
	} else if ((r = xch_check_token_type(req, tok)) < 0) {
		xch_token_clear(tok);
		st = cli_fail(r);
	}
out:
	free(error);
	free(nonce);
	free(proof);
	free(palg);
	free(dpop_hdr);
	jws_parsed_clear(&jp);
	freezero_str(jwt);
	http_resp_clear(&resp);
	return st;
}

/* A new access token with an assertion. */
static int exchange(xch_req *req, xch_token *tok)
{
	form f = { 0 };
	int st;

	for (size_t i = 0; i < req->form.n; i++)
		if (form_set(&f, req->form.v[i].name, req->form.v[i].value) < 0) {
			form_clear(&f);
			return cli_fail(P11J_E_NOMEM);
		}
	st = post_form(req, &f, true, tok);
	form_clear(&f);
	return st;
}

/* The alg (and why) of the assertion behind a token: this run's when it
 * signed one, else the cached entry's (a cache hit, or a refresh that
 * needed no assertion). */
static json_t *alg_info(const xch_req *req, const json_t *old)
{
	if (old && xch_alg_needs_key(req))
		return json_pack("{s:O?,s:O?}", "alg", json_object_get(old, "alg"), "alg_reason",
				 json_object_get(old, "alg_reason"));
	return json_pack("{s:s?,s:s?}", "alg", req->alg, "alg_reason", req->alg_reason);
}

static json_t *entry_new(const xch_req *req, const xch_token *tok, const json_t *old)
{
	int64_t now = util_now();
	const char *old_rt = old ? json_string_value(json_object_get(old, "refresh_token")) : NULL;
	const char *rt = tok->refresh_token ? tok->refresh_token : old_rt;
	json_t *ai = alg_info(req, old);
	json_t *e = ai ? json_pack("{s:i,s:s?,s:s?,s:s,s:O?,s:O?,s:s?,s:s?,s:s,s:I,s:s,s:s?,s:O}",
				   "v", 1, "token_url", req->token_url, "client_id",
				   req->client_id, "key", req->key, "alg",
				   json_object_get(ai, "alg"), "alg_reason",
				   json_object_get(ai, "alg_reason"), "sub", req->sub, "scope",
				   req->scope, "preset", req->preset->name, "obtained_at",
				   (json_int_t)now, "access_token", tok->access_token,
				   "refresh_token", rt, "response", tok->json)
		       : NULL;

	json_decref(ai);

	if (e && req->dpop &&
	    (json_object_set_new(e, "token_type", json_string("DPoP")) < 0 ||
	     json_object_set_new(e, "jkt", json_string(req->dpop_jkt)) < 0 ||
	     json_object_set_new(e, "dpop_key", json_string(req->dpop_key)) < 0)) {
		json_decref(e);
		return NULL;
	}
	if (e && !req->dpop && json_object_set_new(e, "token_type", json_string("Bearer")) < 0) {
		json_decref(e);
		return NULL;
	}
	if (e && tok->expires_in >= 0 &&
	    json_object_set_new(e, "expires_at", json_integer(now + tok->expires_in)) < 0) {
		json_decref(e);
		return NULL;
	}
	return e;
}

void tkn_got_clear(got_token *g)
{
	freezero_str(g->access_token);
	json_decref(g->response);
	json_decref(g->alg);
	memset(g, 0, sizeof(*g));
}

static int got_from_tok(got_token *g, xch_token *tok)
{
	g->access_token = tok->access_token;
	g->response = tok->json;
	tok->access_token = NULL;
	tok->json = NULL;
	return 0;
}

static int got_from_entry(got_token *g, const json_t *e, int64_t now)
{
	const json_t *exp = json_object_get(e, "expires_at");
	json_t *resp = json_object_get(e, "response");

	g->access_token = strdup(json_string_value(json_object_get(e, "access_token")));
	g->response = json_is_object(resp) ? json_deep_copy(resp) : json_object();
	if (g->access_token == NULL || g->response == NULL)
		return err_nomem();
	if (json_is_integer(exp))
		json_object_set_new(g->response, "expires_in",
				    json_integer(json_integer_value(exp) - now));
	g->from_cache = true;
	return 0;
}

/* A cache entry fits req: the same token type, and for DPoP the same
 * proof key thumbprint. */
static bool entry_binding_ok(const xch_req *req, const json_t *e)
{
	const char *jkt = json_string_value(json_object_get(e, "jkt"));

	if (!req->dpop)
		return !cache_entry_is_dpop(e);
	return cache_entry_is_dpop(e) && jkt && strcmp(jkt, req->dpop_jkt) == 0;
}

/* {"alg", "alg_reason"[, "dpop": {"key", "jkt"}]} for --json. */
static json_t *token_info(const xch_req *req, const json_t *old)
{
	json_t *ai = alg_info(req, old);

	if (ai && req->dpop &&
	    json_object_set_new(ai, "dpop", json_pack("{s:s,s:s}", "key", req->dpop_key, "jkt",
						      req->dpop_jkt)) < 0) {
		json_decref(ai);
		return NULL;
	}
	return ai;
}

/* The token for req: from the cache, by refresh, or by a new exchange
 * (force: drop the cached one first). Returns 0 or an exit status. */
int tkn_get_token(xch_req *req, bool use_cache, bool force, got_token *g)
{
	tcache c;
	char key[65];
	json_t *e = NULL;
	xch_token tok = { 0 };
	int lock = -1, r, st = 0;
	int64_t now = util_now();

	memset(g, 0, sizeof(*g));
	/* the binding first: it is part of the cache key */
	if ((st = tkn_dpop_bind(req)) != 0)
		return st;
	if (use_cache && (r = cache_open(&c)) < 0) {
		tkn_note("warning: token cache not used: %s", err_msg());
		use_cache = false;
	}
	if (use_cache) {
		long wait = (req->timeout * HTTP_MAX_ATTEMPTS + 35) * 1000L;

		if ((r = xch_cache_key(req, key)) < 0 || (r = cache_lock(&c, key, wait, &lock)) < 0)
			return cli_fail(r);
		if (force) {
			cache_del(&c, key);
		} else if ((r = cache_get(&c, key, &e)) < 0 && r != P11J_E_NOT_FOUND) {
			tkn_note("note: ignoring a cache file: %s", err_msg());
		} else if (e && !entry_binding_ok(req, e)) {
			/* never a bearer token for a DPoP request, a DPoP token for a
			 * bearer one, or a token bound to another key */
			tkn_note("note: ignoring a cached token of another binding");
			json_decref(e);
			e = NULL;
		} else if (e && entry_key_gone(req, e)) {
			cache_del(&c, key);
			json_decref(e);
			e = NULL;
		}
	}
	if (e) {
		cache_state cs = cache_entry_state(e, now, XCH_DEFAULT_MARGIN);

		if (cs == CACHE_FRESH) {
			st = got_from_entry(g, e, now) < 0 || (g->alg = token_info(req, e)) == NULL
				     ? cli_fail(P11J_E_NOMEM)
				     : 0;
			goto out;
		}
		if (cs == CACHE_REFRESHABLE) {
			const char *rt = json_string_value(json_object_get(e, "refresh_token"));
			bool needs;
			form f;

			if ((r = xch_refresh_form(req, rt, &f, &needs)) < 0) {
				st = cli_fail(r);
				goto out;
			}
			st = post_form(req, &f, needs, &tok);
			form_clear(&f);
			if (st == 0)
				goto store;
			if (st != CLI_EXIT_OAUTH)
				goto out;
			tkn_note("note: the refresh token was refused; getting a new token with an "
			     "assertion");
			cache_del(&c, key);
		}
	}
	if ((st = exchange(req, &tok)) != 0)
		goto out;
store:
	if (use_cache && (tok.expires_in >= 0 || tok.refresh_token)) {
		json_t *ne = entry_new(req, &tok, e), *keys;
		int kst;

		/* the signing key's thumbprint: a rotation under the same name
		 * drops the entry (entry_key_gone) */
		if (ne != NULL && (keys = tkn_agent_keys(req, true, &kst)) != NULL) {
			const char *jkt = tkn_listed_jkt(keys, req->key);

			if (jkt != NULL && jkt[0] != '\0')
				json_object_set_new(ne, "key_jkt", json_string(jkt));
			json_decref(keys);
		}
		if (ne == NULL || (r = cache_put(&c, key, ne)) < 0)
			tkn_note("warning: the token was not cached: %s",
			     ne ? err_msg() : "out of memory");
		json_decref(ne);
	}
	got_from_tok(g, &tok);
	if ((g->alg = token_info(req, e)) == NULL)
		st = cli_fail(P11J_E_NOMEM);
out:
	g->dpop = st == 0 && req->dpop;
	xch_token_clear(&tok);
	json_decref(e);
	cache_unlock(lock);
	return st;
}

/* --dry-run with DPoP: the proof the token request would carry, decoded,
 * with the nonce kept for the server. */
static int dry_run_dpop(xch_req *req, json_t *out)
{
	char *nonce = NULL, *proof = NULL;
	jws_parsed pp = { 0 };
	int st, r;

	if ((st = tkn_dpop_bind(req)) != 0)
		return st;
	nonce = tkn_dpop_nonce_get(TKN_TOKEN_ENDPOINT, req->token_url);
	st = tkn_dpop_proof(req, "POST", req->token_url, nonce, NULL, &proof, NULL);
	free(nonce);
	if (st != 0)
		return st;
	if ((r = jws_parse(proof, &pp)) < 0) {
		free(proof);
		return cli_fail(r);
	}
	r = json_object_set_new(out, "dpop",
				json_pack("{s:s,s:s,s:O,s:O}", "key", req->dpop_key, "jkt",
					  req->dpop_jkt, "header", pp.header, "claims", pp.claims));
	jws_parsed_clear(&pp);
	free(proof);
	return r < 0 ? cli_fail(err_nomem()) : 0;
}

int tkn_dry_run(xch_req *req)
{
	jws_parsed jp = { 0 };
	char *jwt = NULL;
	json_t *out = NULL, *f = NULL;
	int st, r;

	if ((r = xch_check_url(req)) < 0)
		return cli_fail(r);
	if ((st = tkn_sign_assertion(req, &jwt, &jp)) != 0)
		return st;
	out = json_pack("{s:s,s:s?,s:b,s:s?,s:s?,s:O,s:O,s:O}", "preset", req->preset->name,
			"token_url", req->token_url, "exchange", req->exchange, "alg",
			json_string_value(json_object_get(jp.header, "alg")), "alg_reason",
			req->alg_reason, "header", jp.header, "claims", jp.claims, "warnings",
			req->warnings);
	if (out && req->exchange) {
		f = json_object();
		for (size_t i = 0; f && i < req->form.n; i++) {
			const form_field *ff = &req->form.v[i];
			char red[64];
			const char *v = ff->value;

			if (strcmp(ff->name, req->assertion_field) == 0) {
				snprintf(red, sizeof(red), "<signed JWT, %zu bytes>", strlen(jwt));
				v = red;
			} else if (req->secret_field && strcmp(ff->name, req->secret_field) == 0) {
				v = "<client secret, redacted>";
			}
			json_object_set_new(f, ff->name, json_string(v));
		}
		json_object_set_new(out, "form", f);
	}
	if (out && req->dpop && (st = dry_run_dpop(req, out)) != 0) {
		json_decref(out);
		jws_parsed_clear(&jp);
		freezero_str(jwt);
		return st;
	}
	st = out ? cli_print_json(out) : cli_fail(P11J_E_NOMEM);
	json_decref(out);
	jws_parsed_clear(&jp);
	freezero_str(jwt);
	return st;
}

/* Options → resolved request, secret read and wiped. */
int tkn_prepare(const topts *o, xch_req *req)
{
	char *secret = NULL;
	int r;

	if ((r = read_secret(o, &secret)) < 0)
		return cli_fail(r);
	r = xch_resolve(o->profile, o->cli, secret, util_now(), req);
	freezero_str(secret);
	if (r < 0)
		return cli_fail(r);
	req->agent_uid = o->agent_uid;
	print_warnings(req);
	return resolve_roles(req);
}

/* --json: the token endpoint's answer, with the alg p11jwt signed with */
int tkn_print_token_json(const got_token *g)
{
	if (json_object_set(g->response, "p11jwt", g->alg) < 0)
		return cli_fail(err_nomem());
	return cli_print_json(g->response);
}
