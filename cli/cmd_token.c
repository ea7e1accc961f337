/* SPDX-License-Identifier: MIT */
/*
 * p11jwt token / call / cache: the OAuth token exchange with an assertion
 * the agent signs, the token cache, and REST calls with the token.
 * The pure parts are in exchange.c, cache.c, http.c and form.c.
 */
#include "cli/cache.h"
#include "cli/cli.h"
#include "cli/exchange.h"
#include "cli/http.h"
#include "cli/kv.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jws.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <openssl/crypto.h>

#define CLIENT_SECRET_MAX 4096
#define CALL_MAX_BODY (16 * 1024 * 1024)

typedef struct {
	json_t *cli;      /* options given, as profile members */
	json_t *profile;  /* loaded profile, or NULL */
	bool json, no_cache, dry_run;
	/* call */
	const char *method, *data, *url;
	const char **api_headers;
	size_t n_api_headers;
} topts;

static void topts_clear(topts *o)
{
	json_decref(o->cli);
	json_decref(o->profile);
	free(o->api_headers);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;

	fputs("p11jwt: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* Exit status for the network and OAuth codes (cli_fail knows the rest). */
static int fail(int code)
{
	int st = cli_fail(code);

	switch (code) {
	case P11J_E_OAUTH:
		return 6;
	case P11J_E_CONNECT:
		return 7;
	case P11J_E_TIMEOUT:
		return 8;
	case P11J_E_TLS:
		return 9;
	case P11J_E_BAD_RESPONSE:
		return 10;
	case P11J_E_HTTP_STATUS:
		return 11;
	default:
		return st;
	}
}

static int obj_member(json_t *cli, const char *name, json_t **ret)
{
	json_t *o = json_object_get(cli, name);

	if (o == NULL) {
		o = json_object();
		if (o == NULL || json_object_set_new(cli, name, o) < 0)
			return err_set(P11J_E_NOMEM, "out of memory");
	}
	*ret = o;
	return 0;
}

static int add_include(json_t *cli, const char *what)
{
	json_t *a = json_object_get(cli, "include");
	size_t i;
	json_t *v;

	if (a == NULL) {
		a = json_array();
		if (a == NULL || json_object_set_new(cli, "include", a) < 0)
			return err_set(P11J_E_NOMEM, "out of memory");
	}
	json_array_foreach(a, i, v)
		if (strcmp(json_string_value(v), what) == 0)
			return 0;
	return json_array_append_new(a, json_string(what)) < 0
		       ? err_set(P11J_E_NOMEM, "out of memory")
		       : 0;
}

/* --form NAME=VALUE sets, --form NAME removes. */
static int form_opt(json_t *cli, const char *arg)
{
	const char *eq = strchr(arg, '=');
	json_t *f = NULL;
	char *name;
	int r;

	if ((r = obj_member(cli, "form", &f)) < 0)
		return r;
	if (eq == arg || arg[0] == '\0')
		return err_set(P11J_E_BAD_REQUEST, "--form '%s': empty field name", arg);
	name = eq ? strndup(arg, (size_t)(eq - arg)) : strdup(arg);
	if (name == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	r = json_object_set_new(f, name, eq ? json_string(eq + 1) : json_null());
	free(name);
	return r < 0 ? err_set(P11J_E_BAD_REQUEST, "--form '%s': not valid UTF-8", arg) : 0;
}

static const struct {
	const char *opt, *member;
} str_opts[] = {
	{ "preset", "preset" },
	{ "key", "key" },
	{ "alg", "alg" },
	{ "client-id", "client_id" },
	{ "token-url", "token_url" },
	{ "aud", "aud" },
	{ "iss", "iss" },
	{ "sub", "sub" },
	{ "scope", "scope" },
	{ "header-file", "header_file" },
	{ "claims-file", "claims_file" },
	{ "assertion-field", "assertion_field" },
	{ "grant", "grant" },
	{ "client-secret-file", "client_secret_file" },
	{ "cacert", "cacert" },
};

/* --agent-uid, from parse(): the socket may come from a profile, the
 * agent's user only from the command line or the environment */
static const char *agent_uid;

/* Parse the options of token/call into o. Returns -1 to go on, else the
 * exit status. */
static int parse(cli_ctx *ctx, const char *cmd, int argc, char **argv, topts *o)
{
	const char *name = NULL, *profile = NULL;
	int r, st = 0;

	o->cli = json_object();
	o->api_headers = calloc((size_t)argc + 1, sizeof(*o->api_headers));
	if (o->cli == NULL || o->api_headers == NULL)
		return cli_fail(err_set(P11J_E_NOMEM, "out of memory"));
	while ((r = cli_next_opt(ctx, cmd, argc, argv, &name, &st)) == CLI_OPT_NEXT) {
		int e = 0;
		size_t i;

		for (i = 0; i < ARRAY_SIZE(str_opts); i++)
			if (strcmp(name, str_opts[i].opt) == 0)
				break;
		if (i < ARRAY_SIZE(str_opts)) {
			if (json_object_set_new(o->cli, str_opts[i].member, json_string(optarg)) < 0)
				e = err_set(P11J_E_BAD_REQUEST, "--%s: not valid UTF-8", name);
		} else if (strcmp(name, "profile") == 0) {
			profile = optarg;
		} else if (strcmp(name, "lifetime") == 0 || strcmp(name, "timeout") == 0) {
			long long v;

			e = cli_parse_int(strcmp(name, "lifetime") == 0 ? "--lifetime" : "--timeout",
					  optarg, 1, name[0] == 'l' ? 86400 : 600, &v);
			if (e == 0 && json_object_set_new(o->cli, name, json_integer(v)) < 0)
				e = err_set(P11J_E_NOMEM, "out of memory");
		} else if (strcmp(name, "header") == 0 || strcmp(name, "claim") == 0) {
			json_t *obj = NULL;
			char why[512];

			e = obj_member(o->cli, name[0] == 'h' ? "header" : "claims", &obj);
			if (e == 0 && (e = kv_parse(obj, optarg)) < 0) {
				snprintf(why, sizeof(why), "%s", err_msg());
				e = err_set(e, "--%s %s", name, why);
			}
		} else if (strcmp(name, "form") == 0) {
			e = form_opt(o->cli, optarg);
		} else if (strcmp(name, "x5t") == 0 || strcmp(name, "x5c") == 0) {
			e = add_include(o->cli, name);
		} else if (strcmp(name, "x5t-s256") == 0) {
			e = add_include(o->cli, "x5t#S256");
		} else if (strcmp(name, "json") == 0) {
			o->json = true;
		} else if (strcmp(name, "no-cache") == 0) {
			o->no_cache = true;
		} else if (strcmp(name, "dry-run") == 0) {
			o->dry_run = true;
		} else if (strcmp(name, "request") == 0) {
			o->method = optarg;
		} else if (strcmp(name, "api-header") == 0) {
			if (strchr(optarg, ':') == NULL || optarg[0] == ':' ||
			    strpbrk(optarg, "\r\n") != NULL)
				e = err_set(P11J_E_BAD_REQUEST, "-H '%s': use 'Name: value'", optarg);
			else if (strncasecmp(optarg, "authorization:", 14) == 0)
				e = err_set(P11J_E_BAD_REQUEST,
					    "-H Authorization: p11jwt sets it from the token");
			else
				o->api_headers[o->n_api_headers++] = optarg;
		} else if (strcmp(name, "data") == 0) {
			o->data = optarg;
		}
		if (e < 0)
			return cli_usage_error(cmd, "%s", err_msg());
	}
	if (r == CLI_OPT_EXIT)
		return st;
	if (strcmp(cmd, "call") == 0) {
		if (optind != argc - 1)
			return cli_usage_error(cmd, optind == argc ? "the URL to call is missing"
								   : "one URL only, after the options");
		o->url = argv[optind];
	} else if (optind != argc) {
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	}
	agent_uid = ctx->agent_uid;
	if (ctx->socket && json_object_set_new(o->cli, "socket", json_string(ctx->socket)) < 0)
		return cli_fail(err_set(P11J_E_NOMEM, "out of memory"));
	if ((r = xch_check_options(o->cli, "command line")) < 0)
		return cli_usage_error(cmd, "%s", err_msg());
	if (profile && (r = xch_load_profile(profile, &o->profile)) < 0)
		return cli_fail(r);
	return -1;
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
			return err_set(P11J_E_NOMEM, "out of memory");
	}
	if (env) {
		OPENSSL_cleanse(env, strlen(env));
		unsetenv("P11JWT_CLIENT_SECRET");
	}
	return 0;
}

static void print_warnings(const xch_req *req)
{
	size_t i;
	json_t *w;

	json_array_foreach(req->warnings, i, w)
		note("warning: %s", json_string_value(w));
}

/* The alg for a key, when the preset (or profile) lists the algs the
 * provider accepts and none was given: the first the key signs, from the
 * agent's key list. Asked just before the first signature, so that a
 * cache hit costs no agent round trip (the cache key holds the alg asked
 * for, not the one chosen). Returns 0 or an exit status. */
static int choose_alg(xch_req *req)
{
	cli_ctx actx = { .socket = req->socket, .agent_uid = agent_uid };
	json_t *resp = NULL;
	int r, st;

	if (!xch_alg_needs_key(req))
		return 0;
	if ((st = cli_call(&actx, json_pack("{s:s}", "op", "keys"), &resp)) != 0)
		return st;
	r = xch_choose_alg(req, json_object_get(resp, "keys"));
	json_decref(resp);
	if (r < 0) {
		st = cli_fail(r);
		/* the options do not fit the key: a usage error, not a refusal */
		return r == P11J_E_UNSUPPORTED_ALG ? CLI_EXIT_USAGE : st;
	}
	return 0;
}

/* Sign the assertion (choosing the alg first); *ret_jwt is the JWT, *ret_p
 * its decoded parts. */
static int sign_assertion(xch_req *req, char **ret_jwt, jws_parsed *ret_p)
{
	cli_ctx actx = { .socket = req->socket, .agent_uid = agent_uid };
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
		return cli_fail(err_set(P11J_E_NOMEM, "out of memory"));
	if (ret_p && (r = jws_parse(*ret_jwt, ret_p)) < 0) {
		freezero_str(*ret_jwt);
		*ret_jwt = NULL;
		return cli_fail(r);
	}
	return 0;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* POST a form (with a fresh assertion in each attempt when needs_jwt) to
 * the token endpoint and parse the answer. Returns 0 or an exit status. */
static int post_form(xch_req *req, form *f, bool needs_jwt, xch_token *tok)
{
	static const char *const hdrs[] = { "Content-Type: application/x-www-form-urlencoded",
					    "Accept: application/json", NULL };
	http_opts ho = { .cacert = req->cacert, .timeout_s = req->timeout };
	http_resp resp = { 0 };
	jws_parsed jp = { 0 };
	char *body = NULL, *jwt = NULL, *error = NULL;
	int r, st = 0;

	if ((r = xch_check_url(req)) < 0)
		return cli_fail(r);
	for (int attempt = 1;; attempt++) {
		long delay;

		if (needs_jwt) {
			jws_parsed_clear(&jp);
			freezero_str(jwt);
			jwt = NULL;
			if ((st = sign_assertion(req, &jwt, &jp)) != 0)
				goto out;
			if ((r = form_set(f, req->assertion_field, jwt)) < 0) {
				st = cli_fail(r);
				goto out;
			}
		}
		if ((r = form_encode(f, &body)) < 0) {
			st = cli_fail(r);
			goto out;
		}
		r = http_request(&ho, "POST", req->token_url, hdrs, body, strlen(body), &resp);
		freezero_str(body);
		body = NULL;
		delay = http_retry_delay_ms(attempt, r, &resp, true);
		if (delay >= 0) {
			if (r < 0)
				note("note: %s; trying again in %ld ms (attempt %d of %d)", err_msg(),
				     delay, attempt + 1, HTTP_MAX_ATTEMPTS);
			else
				note("note: the token endpoint answered HTTP %ld; trying again in %ld "
				     "ms (attempt %d of %d)",
				     resp.status, delay, attempt + 1, HTTP_MAX_ATTEMPTS);
			http_resp_clear(&resp);
			sleep_ms(delay);
			continue;
		}
		if (r < 0) {
			st = fail(r);
			goto out;
		}
		break;
	}
	r = xch_parse_token(resp.status, resp.body, resp.len, tok, &error);
	if (r == P11J_E_OAUTH) {
		char buf[1024];
		const char *d = NULL, *hint;
		json_t *ej = json_loadb(resp.body, resp.len, 0, NULL);

		d = json_string_value(json_object_get(ej, "error_description"));
		note("%s", err_msg());
		hint = xch_hint(req, error, d, jp.header, jp.claims, util_now(), buf, sizeof(buf));
		if (hint)
			note("hint: %s", hint);
		json_decref(ej);
		st = 6;
	} else if (r < 0) {
		st = fail(r);
	}
out:
	free(error);
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

	if (e && tok->expires_in >= 0 &&
	    json_object_set_new(e, "expires_at", json_integer(now + tok->expires_in)) < 0) {
		json_decref(e);
		return NULL;
	}
	return e;
}

typedef struct {
	char *access_token;
	json_t *response; /* what --json prints */
	json_t *alg;      /* {"alg", "alg_reason"} of the assertion behind it */
	bool from_cache;
} got_token;

static void got_clear(got_token *g)
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
		return err_set(P11J_E_NOMEM, "out of memory");
	if (json_is_integer(exp))
		json_object_set_new(g->response, "expires_in",
				    json_integer(json_integer_value(exp) - now));
	g->from_cache = true;
	return 0;
}

/* The token for req: from the cache, by refresh, or by a new exchange
 * (force: drop the cached one first). Returns 0 or an exit status. */
static int get_token(xch_req *req, bool use_cache, bool force, got_token *g)
{
	tcache c;
	char key[65];
	json_t *e = NULL;
	xch_token tok = { 0 };
	int lock = -1, r, st = 0;
	int64_t now = util_now();

	memset(g, 0, sizeof(*g));
	if (use_cache && (r = cache_open(&c)) < 0) {
		note("warning: token cache not used: %s", err_msg());
		use_cache = false;
	}
	if (use_cache) {
		long wait = (req->timeout * HTTP_MAX_ATTEMPTS + 35) * 1000L;

		if ((r = xch_cache_key(req, key)) < 0 || (r = cache_lock(&c, key, wait, &lock)) < 0)
			return fail(r);
		if (force) {
			cache_del(&c, key);
		} else if ((r = cache_get(&c, key, &e)) < 0 && r != P11J_E_NOT_FOUND) {
			note("note: ignoring a cache file: %s", err_msg());
		}
	}
	if (e) {
		cache_state cs = cache_entry_state(e, now, XCH_DEFAULT_MARGIN);

		if (cs == CACHE_FRESH) {
			st = got_from_entry(g, e, now) < 0 || (g->alg = alg_info(req, e)) == NULL
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
			if (st != 6)
				goto out;
			note("note: the refresh token was refused; getting a new token with an "
			     "assertion");
			cache_del(&c, key);
		}
	}
	if ((st = exchange(req, &tok)) != 0)
		goto out;
store:
	if (use_cache && (tok.expires_in >= 0 || tok.refresh_token)) {
		json_t *ne = entry_new(req, &tok, e);

		if (ne == NULL || (r = cache_put(&c, key, ne)) < 0)
			note("warning: the token was not cached: %s",
			     ne ? err_msg() : "out of memory");
		json_decref(ne);
	}
	got_from_tok(g, &tok);
	if ((g->alg = alg_info(req, e)) == NULL)
		st = cli_fail(P11J_E_NOMEM);
out:
	xch_token_clear(&tok);
	json_decref(e);
	cache_unlock(lock);
	return st;
}

static int dry_run(xch_req *req)
{
	jws_parsed jp = { 0 };
	char *jwt = NULL;
	json_t *out = NULL, *f = NULL;
	int st, r;

	if ((r = xch_check_url(req)) < 0)
		return cli_fail(r);
	if ((st = sign_assertion(req, &jwt, &jp)) != 0)
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
	st = out ? cli_print_json(out) : cli_fail(P11J_E_NOMEM);
	json_decref(out);
	jws_parsed_clear(&jp);
	freezero_str(jwt);
	return st;
}

/* Options → resolved request, secret read and wiped. */
static int prepare(const topts *o, xch_req *req)
{
	char *secret = NULL;
	int r;

	if ((r = read_secret(o, &secret)) < 0)
		return cli_fail(r);
	r = xch_resolve(o->profile, o->cli, secret, util_now(), req);
	freezero_str(secret);
	if (r < 0)
		return cli_fail(r);
	print_warnings(req);
	return 0;
}

/* --json: the token endpoint's answer, with the alg p11jwt signed with */
static int print_token_json(const got_token *g)
{
	if (json_object_set(g->response, "p11jwt", g->alg) < 0)
		return cli_fail(err_set(P11J_E_NOMEM, "out of memory"));
	return cli_print_json(g->response);
}

int cmd_token(cli_ctx *ctx, int argc, char **argv)
{
	topts o = { 0 };
	xch_req req = { 0 };
	got_token g = { 0 };
	int st;

	if ((st = parse(ctx, "token", argc, argv, &o)) >= 0)
		goto out;
	if ((st = prepare(&o, &req)) != 0)
		goto out;
	if (o.dry_run) {
		st = dry_run(&req);
		goto out;
	}
	if (!req.exchange) {
		char *jwt = NULL;

		if ((st = sign_assertion(&req, &jwt, NULL)) == 0)
			printf("%s\n", jwt);
		freezero_str(jwt);
		goto out;
	}
	if ((st = get_token(&req, !o.no_cache, false, &g)) != 0)
		goto out;
	if (o.json)
		st = print_token_json(&g);
	else
		printf("%s\n", g.access_token);
out:
	got_clear(&g);
	xch_req_clear(&req);
	topts_clear(&o);
	return st;
}

/* -d DATA or -d @FILE */
static int read_data(const char *arg, char **ret, size_t *ret_len)
{
	if (arg[0] == '@')
		return util_read_file(arg + 1, CALL_MAX_BODY, false, ret, ret_len);
	*ret = strdup(arg);
	*ret_len = strlen(arg);
	return *ret ? 0 : err_set(P11J_E_NOMEM, "out of memory");
}

static bool has_header(const topts *o, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i < o->n_api_headers; i++)
		if (strncasecmp(o->api_headers[i], name, n) == 0 && o->api_headers[i][n] == ':')
			return true;
	return false;
}

int cmd_call(cli_ctx *ctx, int argc, char **argv)
{
	topts o = { 0 };
	xch_req req = { 0 };
	got_token g = { 0 };
	http_resp resp = { 0 };
	const char **hdrs = NULL;
	char *data = NULL, *auth = NULL;
	size_t data_len = 0, nh;
	const char *method;
	bool retried_401 = false;
	int r, st;

	if ((st = parse(ctx, "call", argc, argv, &o)) >= 0)
		goto out;
	if ((r = http_check_url("URL", o.url)) < 0) {
		st = cli_usage_error("call", "%s", err_msg());
		goto out;
	}
	if (o.data && (r = read_data(o.data, &data, &data_len)) < 0) {
		st = cli_fail(r);
		goto out;
	}
	method = o.method ? o.method : data ? "POST" : "GET";
	if ((st = prepare(&o, &req)) != 0)
		goto out;
	if (o.dry_run) {
		st = dry_run(&req);
		goto out;
	}
	hdrs = calloc(o.n_api_headers + 4, sizeof(*hdrs));
	if (hdrs == NULL) {
		st = cli_fail(P11J_E_NOMEM);
		goto out;
	}
	for (nh = 0; nh < o.n_api_headers; nh++)
		hdrs[nh] = o.api_headers[nh];
	if (data && !has_header(&o, "content-type")) {
		json_t *j = json_loadb(data, data_len, JSON_DECODE_ANY, NULL);

		hdrs[nh++] = j ? "Content-Type: application/json"
			       : "Content-Type: application/x-www-form-urlencoded";
		json_decref(j);
	}
	for (;;) {
		http_opts ho = { .cacert = req.cacert, .timeout_s = req.timeout,
				 .max_body = CALL_MAX_BODY };
		bool idempotent = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;

		if (!req.exchange) {
			if ((st = sign_assertion(&req, &g.access_token, NULL)) != 0)
				goto out;
		} else if ((st = get_token(&req, !o.no_cache, retried_401, &g)) != 0) {
			goto out;
		}
		if (asprintf(&auth, "Authorization: Bearer %s", g.access_token) < 0) {
			auth = NULL;
			st = cli_fail(P11J_E_NOMEM);
			goto out;
		}
		hdrs[nh] = auth;
		for (int attempt = 1;; attempt++) {
			long delay;

			r = http_request(&ho, method, o.url, hdrs, data, data_len, &resp);
			delay = http_retry_delay_ms(attempt, r, &resp, idempotent);
			if (delay < 0)
				break;
			note("note: %s; trying again in %ld ms (attempt %d of %d)",
			     r < 0 ? err_msg() : "the API asked to retry", delay, attempt + 1,
			     HTTP_MAX_ATTEMPTS);
			http_resp_clear(&resp);
			sleep_ms(delay);
		}
		freezero_str(auth);
		auth = NULL;
		hdrs[nh] = NULL;
		if (r < 0) {
			st = fail(r);
			goto out;
		}
		if (resp.status == 401 && g.from_cache && req.exchange && !retried_401) {
			note("note: the API answered 401 to the cached token; getting a new one");
			retried_401 = true;
			got_clear(&g);
			http_resp_clear(&resp);
			continue;
		}
		break;
	}
	if (resp.status >= 200 && resp.status <= 299) {
		fwrite(resp.body, 1, resp.len, stdout);
		st = fflush(stdout) == 0 ? 0 : cli_fail(err_set(P11J_E_SYSTEM, "writing the body"));
	} else {
		st = fail(err_set(P11J_E_HTTP_STATUS, "%s %s answered HTTP %ld%s%s", method, o.url,
				  resp.status, resp.www_authenticate ? "; WWW-Authenticate: " : "",
				  resp.www_authenticate ? resp.www_authenticate : ""));
		fwrite(resp.body, 1, resp.len, stderr);
		if (resp.len && resp.body[resp.len - 1] != '\n')
			fputc('\n', stderr);
	}
out:
	free(hdrs);
	freezero_str(auth);
	if (data)
		freezero_buf(data, data_len + 1);
	http_resp_clear(&resp);
	got_clear(&g);
	xch_req_clear(&req);
	topts_clear(&o);
	return st;
}

static void fmt_left(const json_t *e, int64_t now, char *buf, size_t len)
{
	const json_t *x = json_object_get(e, "expires_at");
	long long left;

	if (!json_is_integer(x)) {
		snprintf(buf, len, "unknown");
		return;
	}
	left = (long long)(json_integer_value(x) - now);
	if (left <= 0)
		snprintf(buf, len, "expired");
	else
		snprintf(buf, len, "%lldm%02llds", left / 60, left % 60);
}

int cmd_cache(cli_ctx *ctx, int argc, char **argv)
{
	const char *name = NULL;
	bool as_json = false;
	tcache c;
	int r, st = 0;

	while ((r = cli_next_opt(ctx, "cache", argc, argv, &name, &st)) == CLI_OPT_NEXT)
		as_json = true; /* --json is the only option */
	if (r == CLI_OPT_EXIT)
		return st;
	if (optind != argc - 1 ||
	    (strcmp(argv[optind], "list") != 0 && strcmp(argv[optind], "clear") != 0))
		return cli_usage_error("cache", "say 'list' or 'clear'");
	if ((r = cache_open(&c)) < 0)
		return cli_fail(r);
	if (strcmp(argv[optind], "clear") == 0) {
		int n = 0;

		if ((r = cache_clear(&c, &n)) < 0)
			return cli_fail(r);
		printf("removed %d cached token%s from %s\n", n, n == 1 ? "" : "s", c.dir);
		return 0;
	} else {
		json_t *items = NULL, *out, *it;
		int64_t now = util_now();
		int skipped = 0;
		size_t i;

		if ((r = cache_list(&c, &items, &skipped)) < 0)
			return cli_fail(r);
		out = json_array();
		json_array_foreach(items, i, it) {
			const json_t *e = json_object_get(it, "entry");
			const json_t *x = json_object_get(e, "expires_at");
			json_t *row = json_pack(
				"{s:s,s:O?,s:O?,s:O?,s:O?,s:O?,s:O?,s:b}", "id",
				json_string_value(json_object_get(it, "key")), "token_url",
				json_object_get(e, "token_url"), "client_id",
				json_object_get(e, "client_id"), "key", json_object_get(e, "key"),
				"sub", json_object_get(e, "sub"), "scope", json_object_get(e, "scope"),
				"preset", json_object_get(e, "preset"), "refresh_token",
				json_is_string(json_object_get(e, "refresh_token")));

			if (row && json_is_integer(x))
				json_object_set_new(row, "expires_in",
						    json_integer(json_integer_value(x) - now));
			json_array_append_new(out, row);
		}
		if (as_json) {
			st = cli_print_json(out);
		} else if (json_array_size(out) == 0) {
			printf("no cached tokens in %s\n", c.dir);
		} else {
			printf("%-12s %-16s %-9s %-3s %-16s %-20s %-14s %s\n", "ID", "PRESET", "LEFT",
			       "RT", "KEY", "CLIENT", "SUB", "TOKEN URL / SCOPE");
			json_array_foreach(items, i, it) {
				const json_t *e = json_object_get(it, "entry");
				char left[32];

				fmt_left(e, now, left, sizeof(left));
				printf("%-12.12s %-16s %-9s %-3s %-16s %-20s %-14s %s%s%s\n",
				       json_string_value(json_object_get(it, "key")),
				       json_string_value(json_object_get(e, "preset"))
					       ?: "-",
				       left,
				       json_is_string(json_object_get(e, "refresh_token")) ? "yes"
											   : "no",
				       json_string_value(json_object_get(e, "key")) ?: "-",
				       json_string_value(json_object_get(e, "client_id")) ?: "-",
				       json_string_value(json_object_get(e, "sub")) ?: "-",
				       json_string_value(json_object_get(e, "token_url")) ?: "-",
				       json_string_value(json_object_get(e, "scope")) ? " " : "",
				       json_string_value(json_object_get(e, "scope")) ?: "");
			}
		}
		if (skipped)
			note("note: %d cache file%s ignored (not ours, not private, or corrupt)",
			     skipped, skipped == 1 ? "" : "s");
		json_decref(out);
		json_decref(items);
	}
	return st;
}
