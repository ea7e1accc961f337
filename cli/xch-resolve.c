/* SPDX-License-Identifier: MIT */
/* The exchange resolved: preset < profile < command line, with ${...}
 * templates, into the sign request and the form (xch_resolve() in phases);
 * the refresh form and the cache key. */
#include "cli/xch-internal.h"
#include "cli/http.h"
#include "cli/kv.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jwa.h"

#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/evp.h>

typedef struct {
	const xch_req *req;
	const char *origin, *host;
	char unset[128]; /* first known variable that had no value, or "" */
	bool assertion;    /* ${assertion} seen */
} vars;

static const char *lookup(const char *name, void *ud)
{
	vars *v = ud;
	const xch_req *q = v->req;
	const char *val = NULL;

	if (strcmp(name, "client_id") == 0)
		val = q->client_id;
	else if (strcmp(name, "token_url") == 0)
		val = q->token_url;
	else if (strcmp(name, "origin") == 0)
		val = v->origin;
	else if (strcmp(name, "host") == 0)
		val = v->host;
	else if (strcmp(name, "sub") == 0)
		val = q->sub;
	else if (strcmp(name, "iss") == 0)
		val = q->iss;
	else if (strcmp(name, "scope") == 0)
		val = q->scope;
	else if (strcmp(name, "client_secret") == 0)
		val = q->client_secret;
	else if (strcmp(name, "assertion") == 0) {
		v->assertion = true;
		return "";
	} else
		return NULL;
	if (val == NULL) {
		if (v->unset[0] == '\0')
			snprintf(v->unset, sizeof(v->unset), "%s", name);
		return "";
	}
	return val;
}

static const char *var_option(const char *name)
{
	if (strcmp(name, "client_id") == 0)
		return "--client-id";
	if (strcmp(name, "token_url") == 0 || strcmp(name, "origin") == 0 ||
	    strcmp(name, "host") == 0)
		return "--token-url";
	if (strcmp(name, "client_secret") == 0)
		return "--client-secret-file (or P11JWT_CLIENT_SECRET)";
	return name[0] == 's' && name[1] == 'c' ? "--scope" : name[0] == 's' ? "--sub" : "--iss";
}

/* A template that must have all its variables: the error names the option. */
static int expand_req(const char *what, const char *tmpl, vars *v, const char *pname, char **ret)
{
	int r;

	v->unset[0] = '\0';
	if ((r = form_tmpl_expand(tmpl, lookup, v, ret)) < 0)
		return err_set(r, "%s: %s", what, err_msg());
	if (v->unset[0]) {
		const char *u = v->unset;

		freezero_str(*ret);
		*ret = NULL;
		return err_set(P11J_E_BAD_REQUEST, "%s is required (preset '%s' uses it for %s)",
			       var_option(u), pname, what);
	}
	return 0;
}

/* Expand every string in a JSON value in place (profiles, preset claims). */
static int expand_json(json_t *j, vars *v, const char *where)
{
	const char *k;
	json_t *m;
	size_t i;
	int r;

	if (json_is_object(j)) {
		void *tmp;

		json_object_foreach_safe(j, tmp, k, m) {
			if (json_is_string(m)) {
				char *s;

				v->unset[0] = '\0';
				if ((r = form_tmpl_expand(json_string_value(m), lookup, v, &s)) < 0)
					return err_set(r, "%s: '%s': %s", where, k, err_msg());
				if (v->unset[0]) {
					free(s);
					return err_set(P11J_E_BAD_REQUEST,
						       "%s: '%s' uses ${%s}, which has no value here",
						       where, k, v->unset);
				}
				r = json_object_set_new(j, k, json_string(s));
				freezero_str(s);
				if (r < 0)
					return err_set(P11J_E_BAD_REQUEST,
						       "%s: '%s' is not valid UTF-8", where, k);
			} else if ((r = expand_json(m, v, where)) < 0) {
				return r;
			}
		}
	} else if (json_is_array(j)) {
		json_array_foreach(j, i, m) {
			if (json_is_string(m)) {
				char *s;

				v->unset[0] = '\0';
				if ((r = form_tmpl_expand(json_string_value(m), lookup, v, &s)) < 0)
					return err_set(r, "%s: %s", where, err_msg());
				r = json_array_set_new(j, i, json_string(s));
				free(s);
				if (r < 0)
					return err_nomem();
			} else if ((r = expand_json(m, v, where)) < 0) {
				return r;
			}
		}
	}
	return 0;
}

const json_t *xch_opt(const json_t *profile, const json_t *cli, const char *name)
{
	const json_t *v = cli ? json_object_get(cli, name) : NULL;

	return v ? v : profile ? json_object_get(profile, name) : NULL;
}

static int dup_opt(const json_t *profile, const json_t *cli, const char *name, char **ret)
{
	const char *s = json_string_value(xch_opt(profile, cli, name));

	*ret = NULL;
	if (s && (*ret = strdup(s)) == NULL)
		return err_nomem();
	return 0;
}

/* An option as given on the command line, or from the profile (or dflt)
 * with its ${...} expanded. */
static int take_expanded(const json_t *profile, const json_t *cli, const char *name,
			 const char *dflt, vars *v, const char *pname, char **ret)
{
	const char *s = json_string_value(xch_opt(profile, cli, name));

	*ret = NULL;
	if (cli && json_object_get(cli, name)) {
		*ret = strdup(s);
		return *ret ? 0 : err_nomem();
	}
	if (s == NULL)
		s = dflt;
	return s ? expand_req(name, s, v, pname, ret) : 0;
}

static int merge_obj(json_t *dst, const json_t *src)
{
	if (src && json_object_update((json_t *)dst, (json_t *)src) < 0)
		return err_nomem();
	return 0;
}

static int merge_file(json_t *dst, const json_t *o, const char *member)
{
	const char *path = o ? json_string_value(json_object_get(o, member)) : NULL;
	json_t *f = NULL;
	int r;

	if (path == NULL)
		return 0;
	if ((r = kv_load_file(path, &f)) < 0)
		return r;
	r = merge_obj(dst, f);
	json_decref(f);
	return r;
}

static int warn(xch_req *req, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int warn(xch_req *req, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (json_array_append_new(req->warnings, json_string(buf)) < 0)
		return err_nomem();
	return 0;
}

/* Form rows "name=template": rows whose variables have no value (an unset
 * scope, secret or subject) are left out; ${assertion} marks the field the
 * JWT goes into. */
static int build_form(xch_req *req, const char *const *rows, vars *v)
{
	int r;

	for (size_t i = 0; rows[i]; i++) {
		const char *eq = strchr(rows[i], '=');
		char name[64], *val = NULL;

		snprintf(name, sizeof(name), "%.*s", (int)(eq - rows[i]), rows[i]);
		v->unset[0] = '\0';
		v->assertion = false;
		if ((r = form_tmpl_expand(eq + 1, lookup, v, &val)) < 0)
			return r;
		if (v->assertion) {
			free(req->assertion_field);
			if ((req->assertion_field = strdup(name)) == NULL) {
				freezero_str(val);
				return err_nomem();
			}
		}
		if (strstr(eq + 1, "${client_secret}") && !v->unset[0]) {
			free(req->secret_field);
			if ((req->secret_field = strdup(name)) == NULL) {
				freezero_str(val);
				return err_nomem();
			}
		}
		r = v->unset[0] ? 0 : form_set(&req->form, name, val);
		freezero_str(val);
		if (r < 0)
			return r;
	}
	return 0;
}

static int apply_form(xch_req *req, const json_t *o)
{
	const json_t *f = o ? json_object_get(o, "form") : NULL;
	const char *k;
	json_t *v;
	int r;

	json_object_foreach((json_t *)f, k, v) {
		if (json_is_null(v)) {
			form_del(&req->form, k);
		} else if ((r = form_set(&req->form, k, json_string_value(v))) < 0) {
			return r;
		}
	}
	return 0;
}

static int set_str(json_t *o, const char *k, const char *v)
{
	if (v && json_object_set_new(o, k, json_string(v)) < 0)
		return err_set(P11J_E_BAD_REQUEST, "'%s' is not valid UTF-8", k);
	return 0;
}

static int apply_scope(xch_req *req, const preset *p)
{
	char *copy, *save = NULL;
	int r = 0;

	if (req->scope == NULL || p->scope == SCOPE_FORM)
		return 0;
	if (p->scope == SCOPE_CLAIM)
		return set_str(req->claims, "scope", req->scope);
	copy = strdup(req->scope);
	if (copy == NULL)
		return err_nomem();
	for (char *w = strtok_r(copy, " ", &save); w && r == 0; w = strtok_r(NULL, " ", &save)) {
		char *name = NULL;

		if (asprintf(&name, "%s%s", p->metascope_prefix, w) < 0) {
			r = err_nomem();
			break;
		}
		if (json_object_set_new(req->claims, name, json_true()) < 0)
			r = err_set(P11J_E_BAD_REQUEST, "scope '%s' is not valid UTF-8", w);
		free(name);
	}
	free(copy);
	return r;
}

/* xch_resolve()'s state, phase to phase. */
typedef struct {
	const json_t *profile_in, *cli;
	json_t *profile; /* profile_in without client_id, token_url; expanded */
	const preset *p;
	const char *grant;
	const char *const *rows; /* the form's rows: the preset's or the grant's */
	vars v;
	char *origin, *host; /* of the token URL, when a value needs them */
	int64_t now;
} resolver;

/* The preset (given, or the one the grant implies) and the form's rows. */
static int rs_preset(resolver *rs, xch_req *req)
{
	const char *pname = json_string_value(xch_opt(rs->profile_in, rs->cli, "preset"));
	const char *grant = rs->grant;
	const preset *p;

	if (grant && strcmp(grant, "client_credentials") != 0 && strcmp(grant, "jwt-bearer") != 0)
		return err_set(P11J_E_BAD_REQUEST,
			       "--grant '%s': use client_credentials or jwt-bearer (for anything "
			       "else set --form grant_type=...)",
			       grant);
	if (pname == NULL)
		pname = grant && strcmp(grant, "jwt-bearer") == 0 ? "jwt-bearer" : "client-assertion";
	p = preset_find(pname);
	if (p == NULL)
		return err_set(P11J_E_BAD_REQUEST,
			       "unknown preset '%s' (nhs, smart, entra, okta, docusign, adobe, "
			       "google, salesforce, oracle, client-assertion, jwt-bearer)",
			       pname);
	rs->p = req->preset = p;
	rs->rows = p->form;
	req->exchange = p->grant != PRESET_NO_EXCHANGE;
	if (grant) {
		bool cc = strcmp(grant, "client_credentials") == 0;

		if (cc ? p->grant != PRESET_CLIENT_ASSERTION : p->grant != PRESET_JWT_BEARER)
			rs->rows = cc ? preset_form_client_credentials : preset_form_jwt_bearer;
		req->exchange = true;
	}
	return 0;
}

/* key, alg and the accepted algs, cacert, socket, the client secret. */
static int rs_basics(resolver *rs, xch_req *req, const char *client_secret)
{
	const json_t *pi = rs->profile_in, *cli = rs->cli;
	int r;

	if ((r = dup_opt(pi, cli, "key", &req->key)) < 0 ||
	    (r = dup_opt(pi, cli, "alg", &req->alg)) < 0 ||
	    (r = dup_opt(pi, cli, "cacert", &req->cacert)) < 0 ||
	    (r = dup_opt(pi, cli, "socket", &req->socket)) < 0)
		return r;
	if (req->key == NULL)
		return err_set(P11J_E_BAD_REQUEST, "--key NAME is required ('p11jwt keys' lists them)");
	if ((r = xch_resolve_algs(pi, cli, rs->p, req)) < 0)
		return r;
	if (client_secret && (req->client_secret = strdup(client_secret)) == NULL)
		return err_nomem();
	return 0;
}

/* DPoP: the option (command line, then profile), else on when a proof key
 * is named, else the preset's; the proof key defaults to the signing key. */
static int rs_dpop(resolver *rs, xch_req *req)
{
	const json_t *d = xch_opt(rs->profile_in, rs->cli, "dpop");
	int r;

	if ((r = dup_opt(rs->profile_in, rs->cli, "dpop_key", &req->dpop_key)) < 0)
		return r;
	req->dpop = d ? json_is_true(d) : req->dpop_key ? true : rs->p->dpop;
	req->dpop_preset = !d && !req->dpop_key && rs->p->dpop;
	if (!req->dpop) {
		free(req->dpop_key);
		req->dpop_key = NULL;
		return 0;
	}
	if (!req->exchange)
		return err_set(P11J_E_BAD_REQUEST,
			       "preset '%s' makes the signed JWT itself the token: there is no "
			       "token request to prove possession in (drop --dpop)",
			       rs->p->name);
	if (req->dpop_key == NULL && (req->dpop_key = strdup(req->key)) == NULL)
		return err_nomem();
	return 0;
}

/* client_id and token_url first (they may use ${env:...}; the token URL may
 * use ${client_id}), then the profile's other strings expanded with them. */
static int rs_endpoint(resolver *rs, xch_req *req)
{
	const preset *p = rs->p;
	int r;

	if ((r = take_expanded(rs->profile_in, rs->cli, "client_id", NULL, &rs->v, p->name,
			       &req->client_id)) < 0 ||
	    (r = take_expanded(rs->profile_in, rs->cli, "token_url", p->token_url, &rs->v, p->name,
			       &req->token_url)) < 0)
		return r;
	if (req->exchange && req->token_url == NULL)
		return err_set(P11J_E_BAD_REQUEST,
			       "--token-url URL is required (preset '%s' has no default)", p->name);
	/* The token URL is parsed (by libcurl, which that loads) only when a
	 * value needs its host or origin; xch_check_url() checks it before any
	 * request. A cache hit for the usual aud = token URL loads no libcurl. */
	if (req->token_url && !json_string_value(xch_opt(rs->profile_in, rs->cli, "aud")) &&
	    (p->aud == AUD_HOST || p->aud == AUD_ORIGIN || p->aud == AUD_TEMPLATE)) {
		if ((r = http_url_origin(req->token_url, &rs->origin)) < 0 ||
		    (r = http_url_host(req->token_url, &rs->host)) < 0)
			return r;
		rs->v.origin = rs->origin;
		rs->v.host = rs->host;
	}
	if (rs->profile_in) {
		rs->profile = json_deep_copy(rs->profile_in);
		if (rs->profile == NULL)
			return err_nomem();
		json_object_del(rs->profile, "client_id");
		json_object_del(rs->profile, "token_url");
		if ((r = expand_json(rs->profile, &rs->v, "profile")) < 0)
			return r;
	}
	return 0;
}

/* The default aud of the preset. */
static int rs_aud(resolver *rs, xch_req *req)
{
	const char *src = NULL;
	int r;

	switch (rs->p->aud) {
	case AUD_TOKEN_URL:
		src = req->token_url;
		break;
	case AUD_HOST:
		src = rs->host;
		break;
	case AUD_ORIGIN:
		src = rs->origin;
		break;
	case AUD_TEMPLATE:
		if ((r = expand_req("aud", rs->p->aud_tmpl, &rs->v, rs->p->name, &req->aud)) < 0)
			return r;
		break;
	case AUD_NONE:
		break;
	}
	if (src && (req->aud = strdup(src)) == NULL)
		return err_nomem();
	return 0;
}

/* iss, sub, aud and scope. */
static int rs_identity(resolver *rs, xch_req *req)
{
	const preset *p = rs->p;
	const char *grant = rs->grant;
	int r;

	if ((r = dup_opt(rs->profile, rs->cli, "iss", &req->iss)) < 0 ||
	    (r = dup_opt(rs->profile, rs->cli, "sub", &req->sub)) < 0 ||
	    (r = dup_opt(rs->profile, rs->cli, "aud", &req->aud)) < 0 ||
	    (r = dup_opt(rs->profile, rs->cli, "scope", &req->scope)) < 0)
		return r;
	if (req->iss == NULL && p->iss == NULL)
		return err_set(P11J_E_BAD_REQUEST, "--iss is required by preset '%s'", p->name);
	if (req->iss == NULL && (r = expand_req("iss", p->iss, &rs->v, p->name, &req->iss)) < 0)
		return r;
	if (req->sub == NULL) {
		bool cc_sub = grant ? strcmp(grant, "client_credentials") == 0 : p->sub != NULL;

		if (cc_sub && (r = expand_req("sub", p->sub ? p->sub : "${client_id}", &rs->v,
					      p->name, &req->sub)) < 0)
			return r;
		if (req->sub == NULL && (grant ? !cc_sub : p->sub_required))
			return err_set(P11J_E_BAD_REQUEST,
				       "--sub is required: preset '%s' asserts a user (the subject)",
				       grant && !cc_sub ? "jwt-bearer" : p->name);
	}
	if (req->aud == NULL && (r = rs_aud(rs, req)) < 0)
		return r;
	if (req->scope == NULL && p->scope_default && (req->scope = strdup(p->scope_default)) == NULL)
		return err_nomem();
	return 0;
}

/* lifetime and timeout, in range. */
static int rs_limits(resolver *rs, xch_req *req)
{
	const json_t *jl = xch_opt(rs->profile, rs->cli, "lifetime");

	req->lifetime = jl ? json_integer_value(jl) : rs->p->lifetime ? rs->p->lifetime : 300;
	if (req->lifetime < 1 || req->lifetime > 86400)
		return err_set(P11J_E_BAD_REQUEST, "--lifetime %lld: use 1 to 86400 seconds",
			       req->lifetime);
	jl = xch_opt(rs->profile, rs->cli, "timeout");
	req->timeout = jl ? (long)json_integer_value(jl) : XCH_DEFAULT_TIMEOUT;
	if (req->timeout < 1 || req->timeout > 600)
		return err_set(P11J_E_BAD_REQUEST, "--timeout %ld: use 1 to 600 seconds",
			       req->timeout);
	return 0;
}

/* The preset's JSON text (header or claims) merged into dst, its
 * templates expanded when expand is set. */
static int rs_preset_json(resolver *rs, json_t *dst, const char *text, const char *what,
			  bool expand)
{
	json_t *pj;
	int r;

	if (text == NULL)
		return 0;
	pj = json_loads(text, 0, NULL);
	if (pj == NULL)
		return err_set(P11J_E_INTERNAL, "preset %s: bad %s", rs->p->name, what);
	if (expand && (r = expand_json(pj, &rs->v, rs->p->name)) < 0)
		goto out;
	if ((r = merge_obj(dst, pj)) < 0)
		r = expand ? r : err_set(P11J_E_INTERNAL, "preset %s: bad %s", rs->p->name, what);
out:
	json_decref(pj);
	return r;
}

/* header and claims: preset, profile files and members, command line; then
 * the certificate members to include. */
static int rs_jose(resolver *rs, xch_req *req)
{
	const preset *p = rs->p;
	const json_t *prof = rs->profile, *cli = rs->cli;
	const json_t *inc;
	json_t *iv;
	size_t i;
	int r;

	if ((r = rs_preset_json(rs, req->header, p->header, "header", false)) < 0 ||
	    (r = rs_preset_json(rs, req->claims, p->claims, "claims", true)) < 0)
		return r;
	if ((r = set_str(req->claims, "iss", req->iss)) < 0 ||
	    (r = set_str(req->claims, "sub", req->sub)) < 0 ||
	    (r = set_str(req->claims, "aud", req->aud)) < 0 || (r = apply_scope(req, p)) < 0)
		return r;
	if (p->nbf && json_object_set_new(req->claims, "nbf", json_integer(rs->now)) < 0)
		return err_nomem();
	if ((r = merge_file(req->header, prof, "header_file")) < 0 ||
	    (r = merge_obj(req->header, prof ? json_object_get(prof, "header") : NULL)) < 0 ||
	    (r = merge_file(req->header, cli, "header_file")) < 0 ||
	    (r = merge_obj(req->header, cli ? json_object_get(cli, "header") : NULL)) < 0 ||
	    (r = merge_file(req->claims, prof, "claims_file")) < 0 ||
	    (r = merge_obj(req->claims, prof ? json_object_get(prof, "claims") : NULL)) < 0 ||
	    (r = merge_file(req->claims, cli, "claims_file")) < 0 ||
	    (r = merge_obj(req->claims, cli ? json_object_get(cli, "claims") : NULL)) < 0)
		return r;
	if (p->include && json_array_append_new(req->include, json_string(p->include)) < 0)
		return err_nomem();
	inc = xch_opt(prof, cli, "include");
	json_array_foreach((json_t *)inc, i, iv) {
		if (p->include && strcmp(p->include, json_string_value(iv)) == 0)
			continue;
		if (json_array_append(req->include, iv) < 0)
			return err_nomem();
	}
	return 0;
}

/* --assertion-field NAME: the field that takes the JWT is renamed to it. */
static int rs_assertion_field(xch_req *req, const char *af)
{
	form_field *f = NULL;

	if (af == NULL)
		return 0;
	if (req->assertion_field && strcmp(af, req->assertion_field) != 0) {
		form_del(&req->form, af);
		for (size_t i = 0; i < req->form.n; i++)
			if (strcmp(req->form.v[i].name, req->assertion_field) == 0)
				f = &req->form.v[i];
		if (f) {
			char *n = strdup(af);

			if (n == NULL)
				return err_nomem();
			free(f->name);
			f->name = n;
		}
	}
	free(req->assertion_field);
	if ((req->assertion_field = strdup(af)) == NULL)
		return err_nomem();
	return 0;
}

/* The form: the preset's rows, the profile's and the command line's
 * fields, the assertion field, the client secret. */
static int rs_form(resolver *rs, xch_req *req)
{
	const preset *p = rs->p;
	int r;

	if (!req->exchange)
		return 0;
	if (p->secret_required && req->client_secret == NULL)
		return err_set(P11J_E_BAD_REQUEST,
			       "preset '%s' sends a client secret: give --client-secret-file FILE "
			       "(or set P11JWT_CLIENT_SECRET)",
			       p->name);
	if ((r = build_form(req, rs->rows, &rs->v)) < 0 || (r = apply_form(req, rs->profile)) < 0 ||
	    (r = apply_form(req, rs->cli)) < 0 ||
	    (r = rs_assertion_field(
		     req, json_string_value(xch_opt(rs->profile, rs->cli, "assertion_field")))) < 0)
		return r;
	if (req->assertion_field == NULL || form_get(&req->form, req->assertion_field) == NULL)
		return err_set(P11J_E_BAD_REQUEST, "the form has no field for the assertion (set "
						   "--assertion-field NAME)");
	if (req->client_secret && req->secret_field == NULL) {
		if ((r = form_set(&req->form, "client_secret", req->client_secret)) < 0)
			return r;
		if ((req->secret_field = strdup("client_secret")) == NULL)
			return err_nomem();
	}
	return 0;
}

/* Warnings: what the provider is known to reject. */
static int rs_warnings(resolver *rs, xch_req *req)
{
	const preset *p = rs->p;
	int r;

	if (req->algs && req->alg && !util_word_in(req->algs, req->alg) &&
	    (r = req->algs_profile
			 ? warn(req, "the profile's algs are %s; %s will likely be rejected",
				req->algs, req->alg)
			 : warn(req, "preset %s: the provider takes %s; %s will likely be rejected",
				p->name, req->algs, req->alg)) < 0)
		return r;
	if (p->max_lifetime && req->lifetime > p->max_lifetime &&
	    (r = warn(req, "preset %s: lifetime %lld s is over the %d s the provider accepts",
		      p->name, req->lifetime, p->max_lifetime)) < 0)
		return r;
	if (p->require_kid) {
		const json_t *kid = json_object_get(req->header, "kid");

		if (kid && (!json_is_string(kid) || json_string_length(kid) == 0) &&
		    (r = warn(req, "preset %s: the provider needs a kid header matching the "
				   "registered JWKS; do not remove it",
			      p->name)) < 0)
			return r;
	}
	return 0;
}

int xch_resolve(const json_t *profile_in, const json_t *cli, const char *client_secret,
		int64_t now, xch_req *req)
{
	resolver rs = {
		.profile_in = profile_in,
		.cli = cli,
		.grant = json_string_value(xch_opt(profile_in, cli, "grant")),
		.v = { .req = req },
		.now = now,
	};
	int r;

	memset(req, 0, sizeof(*req));
	req->warnings = json_array();
	req->header = json_object();
	req->claims = json_object();
	req->include = json_array();
	if (!req->warnings || !req->header || !req->claims || !req->include)
		r = err_nomem();
	else if ((r = rs_preset(&rs, req)) == 0 && (r = rs_basics(&rs, req, client_secret)) == 0 &&
		 (r = rs_dpop(&rs, req)) == 0 && (r = rs_endpoint(&rs, req)) == 0 && (r = rs_identity(&rs, req)) == 0 &&
		 (r = rs_limits(&rs, req)) == 0 && (r = rs_jose(&rs, req)) == 0 &&
		 (r = rs_form(&rs, req)) == 0)
		r = rs_warnings(&rs, req);
	free(rs.origin);
	free(rs.host);
	json_decref(rs.profile);
	if (r < 0)
		xch_req_clear(req);
	return r;
}

int xch_check_url(const xch_req *req)
{
	return req->token_url ? http_check_url("--token-url", req->token_url) : 0;
}

int xch_key_role(const json_t *keys, const char *role, char **ret_name)
{
	const char *state = role + (role[0] == '@'), *found = NULL;
	char names[256] = "";
	size_t i, n = 0, o = 0;
	json_t *k;

	*ret_name = NULL;
	if (strcmp(role, "@active") != 0 && strcmp(role, "@next") != 0)
		return err_set(P11J_E_BAD_REQUEST, "unknown key role '%.32s' (@active, @next; or "
			       "name the key)", role);
	json_array_foreach(keys, i, k) {
		const char *ks = json_string_value(json_object_get(k, "state"));
		const char *name = json_string_value(json_object_get(k, "name"));

		if (name == NULL || strcmp(ks ? ks : "active", state) != 0)
			continue;
		found = name;
		if (o < sizeof(names))
			o += (size_t)snprintf(names + o, sizeof(names) - o, "%s%s", n ? ", " : "",
					      name);
		n++;
	}
	if (n == 0)
		return err_set(P11J_E_NOT_FOUND, "no key of the agent is %s ('p11jwt keys' shows "
			       "each key's state; p11jwt-agent.conf(5): state)", state);
	if (n > 1)
		return err_set(P11J_E_BAD_REQUEST, "%zu keys are %s (%s): %s needs exactly one; set "
			       "the others' state in p11jwt-agent.conf(5), or name the key", n,
			       state, names, role);
	if ((*ret_name = strdup(found)) == NULL)
		return err_nomem();
	return 0;
}

void xch_req_clear(xch_req *req)
{
	free(req->key);
	free(req->alg);
	free(req->algs);
	free(req->alg_reason);
	free(req->client_id);
	free(req->token_url);
	free(req->iss);
	free(req->sub);
	free(req->aud);
	free(req->scope);
	free(req->cacert);
	free(req->socket);
	json_decref(req->header);
	json_decref(req->claims);
	json_decref(req->include);
	json_decref(req->warnings);
	form_clear(&req->form);
	free(req->assertion_field);
	free(req->secret_field);
	freezero_str(req->client_secret);
	free(req->dpop_key);
	free(req->dpop_jkt);
	json_decref(req->agent_keys);
	memset(req, 0, sizeof(*req));
}

int xch_sign_request(const xch_req *req, json_t **ret)
{
	json_t *o = json_pack("{s:s,s:s,s:O,s:O,s:I}", "op", "sign", "key", req->key, "header",
			      req->header, "claims", req->claims, "lifetime",
			      (json_int_t)req->lifetime);

	if (o == NULL)
		return err_set(P11J_E_BAD_REQUEST, "--key must be valid UTF-8");
	if ((req->alg && json_object_set_new(o, "alg", json_string(req->alg)) < 0) ||
	    (json_array_size(req->include) &&
	     json_object_set(o, "include", req->include) < 0)) {
		json_decref(o);
		return err_set(P11J_E_BAD_REQUEST, "--alg must be valid UTF-8");
	}
	if (json_object_size(req->header) == 0)
		json_object_del(o, "header");
	*ret = o;
	return 0;
}

int xch_refresh_form(const xch_req *req, const char *refresh_token, form *f, bool *needs_assertion)
{
	static const char *const auth[] = { "client_id", "client_assertion_type" };
	bool ca = form_get(&req->form, "client_assertion_type") != NULL;
	int r;

	memset(f, 0, sizeof(*f));
	*needs_assertion = false;
	if ((r = form_set(f, "grant_type", "refresh_token")) < 0 ||
	    (r = form_set(f, "refresh_token", refresh_token)) < 0)
		goto fail;
	for (size_t i = 0; i < ARRAY_SIZE(auth); i++) {
		const char *val = form_get(&req->form, auth[i]);

		if (val && (r = form_set(f, auth[i], val)) < 0)
			goto fail;
	}
	if (ca) {
		if ((r = form_set(f, req->assertion_field, "")) < 0)
			goto fail;
		*needs_assertion = true;
	} else if (!form_get(f, "client_id") && req->client_id &&
		   (r = form_set(f, "client_id", req->client_id)) < 0) {
		goto fail;
	}
	if (req->secret_field && (r = form_set(f, req->secret_field, req->client_secret)) < 0)
		goto fail;
	return 0;
fail:
	form_clear(f);
	return r;
}

int xch_cache_key(const xch_req *req, char ret[65])
{
	unsigned char md[32];
	unsigned int mdlen = 0;
	json_t *o, *fa;
	char *s, *asked = NULL;
	int r;

	if (req->dpop && req->dpop_jkt == NULL)
		return err_set(P11J_E_INTERNAL, "the cache key of a DPoP request needs its jkt");
	/* the alg asked for, stable while xch_choose_alg() changes req->alg */
	if (!req->alg_given && req->algs &&
	    (asked = strndup(req->algs, strcspn(req->algs, " "))) == NULL)
		return err_nomem();
	fa = json_array();
	o = json_pack("{s:s?,s:s?,s:s,s:s?,s:s?,s:s?,s:s?,s:s?,s:o?}", "token_url",
		      req->token_url, "client_id", req->client_id, "key", req->key, "alg",
		      asked ? asked : req->alg, "iss", req->iss, "sub", req->sub, "aud", req->aud,
		      "scope", req->scope, "form", fa);
	free(asked);
	if (o == NULL)
		return err_nomem();
	/* only for DPoP, so that Bearer keys stay what they were */
	if (req->dpop && json_object_set_new(o, "dpop_jkt", json_string(req->dpop_jkt)) < 0) {
		json_decref(o);
		return err_nomem();
	}
	for (size_t i = 0; i < req->form.n; i++) {
		const form_field *f = &req->form.v[i];

		if ((req->assertion_field && strcmp(f->name, req->assertion_field) == 0) ||
		    (req->secret_field && strcmp(f->name, req->secret_field) == 0))
			continue;
		if (json_array_append_new(fa, json_pack("[ss]", f->name, f->value)) < 0) {
			json_decref(o);
			return err_nomem();
		}
	}
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	if (s == NULL)
		return err_nomem();
	r = EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL) == 1 ? 0 : -1;
	free(s);
	if (r < 0)
		return err_set_ossl(P11J_E_CRYPTO, "SHA-256");
	for (unsigned int i = 0; i < mdlen; i++)
		snprintf(ret + 2 * i, 3, "%02x", md[i]);
	return 0;
}
