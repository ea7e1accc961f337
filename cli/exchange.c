/* SPDX-License-Identifier: MIT */
#include "cli/exchange.h"
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

/* ---- options ----------------------------------------------------------- */

static const struct {
	const char *name;
	json_type type;
	const char *option; /* for messages */
} opt_members[] = {
	{ "preset", JSON_STRING, "--preset" },
	{ "key", JSON_STRING, "--key" },
	{ "alg", JSON_STRING, "--alg" },
	{ "client_id", JSON_STRING, "--client-id" },
	{ "token_url", JSON_STRING, "--token-url" },
	{ "aud", JSON_STRING, "--aud" },
	{ "iss", JSON_STRING, "--iss" },
	{ "sub", JSON_STRING, "--sub" },
	{ "scope", JSON_STRING, "--scope" },
	{ "lifetime", JSON_INTEGER, "--lifetime" },
	{ "header", JSON_OBJECT, "--header" },
	{ "claims", JSON_OBJECT, "--claim" },
	{ "header_file", JSON_STRING, "--header-file" },
	{ "claims_file", JSON_STRING, "--claims-file" },
	{ "form", JSON_OBJECT, "--form" },
	{ "assertion_field", JSON_STRING, "--assertion-field" },
	{ "grant", JSON_STRING, "--grant" },
	{ "client_secret_file", JSON_STRING, "--client-secret-file" },
	{ "cacert", JSON_STRING, "--cacert" },
	{ "timeout", JSON_INTEGER, "--timeout" },
	{ "socket", JSON_STRING, "--socket" },
	{ "include", JSON_ARRAY, "--x5t/--x5t-s256/--x5c" },
	{ "algs", JSON_ARRAY, "algs" },
};

static const char *type_name(json_type t)
{
	switch (t) {
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	default:
		return "another type";
	}
}

int xch_check_options(const json_t *o, const char *where)
{
	const char *k;
	json_t *v;

	if (!json_is_object(o))
		return err_set(P11J_E_BAD_REQUEST, "%s: must hold a JSON object", where);
	json_object_foreach((json_t *)o, k, v) {
		size_t i;

		for (i = 0; i < ARRAY_SIZE(opt_members); i++)
			if (strcmp(opt_members[i].name, k) == 0)
				break;
		if (i == ARRAY_SIZE(opt_members))
			return err_set(P11J_E_BAD_REQUEST,
				       "%s: unknown member '%s' (see docs/providers/README.md)", where, k);
		if (json_typeof(v) != opt_members[i].type)
			return err_set(P11J_E_BAD_REQUEST, "%s: '%s' must be %s", where, k,
				       type_name(opt_members[i].type));
		if (strcmp(k, "include") == 0) {
			size_t i2;
			json_t *iv;

			json_array_foreach(v, i2, iv)
				if (!json_is_string(iv) ||
				    (strcmp(json_string_value(iv), "x5t") != 0 &&
				     strcmp(json_string_value(iv), "x5t#S256") != 0 &&
				     strcmp(json_string_value(iv), "x5c") != 0))
					return err_set(P11J_E_BAD_REQUEST,
						       "%s: 'include' takes \"x5t\", \"x5t#S256\" "
						       "and \"x5c\"",
						       where);
		}
		if (strcmp(k, "algs") == 0) {
			size_t i2;
			json_t *iv;

			if (json_array_size(v) == 0)
				return err_set(P11J_E_BAD_REQUEST,
					       "%s: 'algs' must name at least one alg", where);
			json_array_foreach(v, i2, iv)
				if (!json_is_string(iv) ||
				    jwa_from_name(json_string_value(iv)) == JWA_NONE)
					return err_set(P11J_E_BAD_REQUEST,
						       "%s: 'algs' takes JWS alg names (RS256, "
						       "RS384, RS512, PS256, PS384, PS512, ES256, "
						       "ES384, ES512, EdDSA); element %zu is not one",
						       where, i2);
		}
		if (strcmp(k, "form") == 0) {
			const char *fk;
			json_t *fv;

			json_object_foreach(v, fk, fv)
				if (!json_is_string(fv) && !json_is_null(fv))
					return err_set(P11J_E_BAD_REQUEST,
						       "%s: form field '%s' must be a string "
						       "(or null to remove it)",
						       where, fk);
		}
	}
	return 0;
}

static int rebase(json_t *o, const char *member, const char *dir)
{
	const char *p = json_string_value(json_object_get(o, member));
	char *full = NULL;
	int r;

	/* absolute, or starting with a variable (${env:DIR}/f): left alone */
	if (p == NULL || p[0] == '/' || (p[0] == '$' && p[1] == '{'))
		return 0;
	if (asprintf(&full, "%s/%s", dir, p) < 0)
		return err_set(P11J_E_NOMEM, "out of memory");
	r = json_object_set_new(o, member, json_string(full)) < 0
		    ? err_set(P11J_E_NOMEM, "out of memory")
		    : 0;
	free(full);
	return r;
}

int xch_load_profile(const char *name_or_path, json_t **ret)
{
	static const char *const file_members[] = { "header_file", "claims_file",
						    "client_secret_file", "cacert" };
	char path[PATH_MAX], dir[PATH_MAX], *base;
	size_t n = strlen(name_or_path);
	json_t *o = NULL;
	int r;

	if (strchr(name_or_path, '/') || (n > 5 && strcmp(name_or_path + n - 5, ".json") == 0)) {
		if (snprintf(path, sizeof(path), "%s", name_or_path) >= (int)sizeof(path))
			return err_set(P11J_E_BAD_REQUEST, "profile path too long");
	} else {
		const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
		int w;

		for (const char *c = name_or_path; *c; c++)
			if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_' && *c != '.')
				return err_set(P11J_E_BAD_REQUEST,
					       "profile name '%s': use letters, digits, '-', '_' "
					       "and '.', or give a path",
					       name_or_path);
		if (xdg && xdg[0] == '/')
			w = snprintf(path, sizeof(path), "%s/p11jwt/profiles/%s.json", xdg,
				     name_or_path);
		else if (home && home[0] == '/')
			w = snprintf(path, sizeof(path), "%s/.config/p11jwt/profiles/%s.json",
				     home, name_or_path);
		else
			return err_set(P11J_E_NOT_FOUND,
				       "profile '%s': neither XDG_CONFIG_HOME nor HOME is set; "
				       "give a path",
				       name_or_path);
		if (w >= (int)sizeof(path))
			return err_set(P11J_E_BAD_REQUEST, "profile path too long");
	}
	if ((r = kv_load_file(path, &o)) < 0) {
		if (r == P11J_E_NOT_FOUND)
			return err_set(r, "profile '%s': %s", name_or_path, err_msg());
		return r;
	}
	if ((r = xch_check_options(o, path)) < 0)
		goto fail;
	snprintf(dir, sizeof(dir), "%s", path);
	base = dirname(dir); /* may modify dir: once only */
	for (size_t i = 0; i < ARRAY_SIZE(file_members); i++)
		if ((r = rebase(o, file_members[i], base)) < 0)
			goto fail;
	*ret = o;
	return 0;
fail:
	json_decref(o);
	return r;
}

/* ---- resolution --------------------------------------------------------- */

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
	if ((r = tmpl_expand(tmpl, lookup, v, ret)) < 0)
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
				if ((r = tmpl_expand(json_string_value(m), lookup, v, &s)) < 0)
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
				if ((r = tmpl_expand(json_string_value(m), lookup, v, &s)) < 0)
					return err_set(r, "%s: %s", where, err_msg());
				r = json_array_set_new(j, i, json_string(s));
				free(s);
				if (r < 0)
					return err_set(P11J_E_NOMEM, "out of memory");
			} else if ((r = expand_json(m, v, where)) < 0) {
				return r;
			}
		}
	}
	return 0;
}

static const json_t *opt(const json_t *profile, const json_t *cli, const char *name)
{
	const json_t *v = cli ? json_object_get(cli, name) : NULL;

	return v ? v : profile ? json_object_get(profile, name) : NULL;
}

static int dup_opt(const json_t *profile, const json_t *cli, const char *name, char **ret)
{
	const char *s = json_string_value(opt(profile, cli, name));

	*ret = NULL;
	if (s && (*ret = strdup(s)) == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	return 0;
}

/* An option as given on the command line, or from the profile (or dflt)
 * with its ${...} expanded. */
static int take_expanded(const json_t *profile, const json_t *cli, const char *name,
			 const char *dflt, vars *v, const char *pname, char **ret)
{
	const char *s = json_string_value(opt(profile, cli, name));

	*ret = NULL;
	if (cli && json_object_get(cli, name)) {
		*ret = strdup(s);
		return *ret ? 0 : err_set(P11J_E_NOMEM, "out of memory");
	}
	if (s == NULL)
		s = dflt;
	return s ? expand_req(name, s, v, pname, ret) : 0;
}

static int merge_obj(json_t *dst, const json_t *src)
{
	if (src && json_object_update((json_t *)dst, (json_t *)src) < 0)
		return err_set(P11J_E_NOMEM, "out of memory");
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
		return err_set(P11J_E_NOMEM, "out of memory");
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
		if ((r = tmpl_expand(eq + 1, lookup, v, &val)) < 0)
			return r;
		if (v->assertion) {
			free(req->assertion_field);
			if ((req->assertion_field = strdup(name)) == NULL) {
				freezero_str(val);
				return err_set(P11J_E_NOMEM, "out of memory");
			}
		}
		if (strstr(eq + 1, "${client_secret}") && !v->unset[0]) {
			free(req->secret_field);
			if ((req->secret_field = strdup(name)) == NULL) {
				freezero_str(val);
				return err_set(P11J_E_NOMEM, "out of memory");
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
		return err_set(P11J_E_NOMEM, "out of memory");
	for (char *w = strtok_r(copy, " ", &save); w && r == 0; w = strtok_r(NULL, " ", &save)) {
		char *name = NULL;

		if (asprintf(&name, "%s%s", p->metascope_prefix, w) < 0) {
			r = err_set(P11J_E_NOMEM, "out of memory");
			break;
		}
		if (json_object_set_new(req->claims, name, json_true()) < 0)
			r = err_set(P11J_E_BAD_REQUEST, "scope '%s' is not valid UTF-8", w);
		free(name);
	}
	free(copy);
	return r;
}

/* ---- the alg ------------------------------------------------------------ */

/* "RS384 ES384" -> "RS384, ES384" for messages */
static void list_text(const char *algs, char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	for (const char *c = algs; *c && o + 3 < len; c++) {
		if (*c == ' ') {
			buf[o++] = ',';
			buf[o++] = ' ';
		} else {
			buf[o++] = *c;
		}
	}
	buf[o < len ? o : len - 1] = '\0';
}

static size_t word_count(const char *list)
{
	size_t n = 0;

	for (const char *c = list; c && *c; c++)
		if (c == list || c[-1] == ' ')
			n++;
	return n;
}

/* The alg given, or the first of the list (to be matched to the key by
 * xch_choose_alg), and the list itself: the profile's algs, else the
 * preset's. */
static int resolve_algs(const json_t *profile, const json_t *cli, const preset *p, xch_req *req)
{
	const json_t *pa = opt(profile, cli, "algs");
	char lt[160];

	if (pa) {
		size_t i, len = 0;
		json_t *v;

		json_array_foreach((json_t *)pa, i, v)
			len += json_string_length(v) + 1;
		req->algs = calloc(1, len + 1);
		if (req->algs == NULL)
			return err_set(P11J_E_NOMEM, "out of memory");
		json_array_foreach((json_t *)pa, i, v) {
			if (i)
				strcat(req->algs, " ");
			strcat(req->algs, json_string_value(v));
		}
		req->algs_profile = true;
	} else if (p->algs && (req->algs = strdup(p->algs)) == NULL) {
		return err_set(P11J_E_NOMEM, "out of memory");
	}
	if (req->alg) {
		req->alg_given = true;
		if (asprintf(&req->alg_reason, "%s: %s", req->alg,
			     cli && json_object_get(cli, "alg") ? "given with --alg"
								 : "the profile's alg") < 0)
			req->alg_reason = NULL;
	} else if (req->algs) {
		req->alg = strndup(req->algs, strcspn(req->algs, " "));
		if (req->alg == NULL)
			return err_set(P11J_E_NOMEM, "out of memory");
		list_text(req->algs, lt, sizeof(lt));
		if (asprintf(&req->alg_reason, "%s: first of %s%s %s (not matched to the key yet)",
			     req->alg, req->algs_profile ? "the profile's " : p->name,
			     req->algs_profile ? "algs" : "'s", lt) < 0)
			req->alg_reason = NULL;
	} else if (asprintf(&req->alg_reason,
			    "the key's default alg: preset '%s' names no algs", p->name) < 0) {
		req->alg_reason = NULL;
	}
	return req->alg_reason ? 0 : err_set(P11J_E_NOMEM, "out of memory");
}

bool xch_alg_needs_key(const xch_req *req)
{
	return !req->alg_given && req->algs != NULL && !req->alg_checked;
}

/* "RSA 2048", "P-256", "Ed25519", from the agent's key entry */
static void key_type_text(const json_t *k, char *buf, size_t len)
{
	const char *kty = json_string_value(json_object_get(k, "kty"));
	const char *crv = json_string_value(json_object_get(k, "crv"));
	const json_t *bits = json_object_get(k, "bits");

	if (crv)
		snprintf(buf, len, "%s", crv);
	else if (json_is_integer(bits))
		snprintf(buf, len, "%s %lld", kty ? kty : "RSA", (long long)json_integer_value(bits));
	else
		snprintf(buf, len, "%s", kty ? kty : "of an unknown type");
}

static bool in_array(const json_t *a, const char *s)
{
	size_t i;
	json_t *v;

	json_array_foreach((json_t *)a, i, v)
		if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
			return true;
	return false;
}

int xch_pick_alg(const char *algs, const char *who, const char *owner, const char *key,
		 const json_t *keys, char **ret_alg, char **ret_reason)
{
	const json_t *entry = NULL, *kalgs, *k;
	char lt[160], kt[64], signs[160];
	size_t i, o = 0;

	*ret_alg = NULL;
	*ret_reason = NULL;
	json_array_foreach((json_t *)keys, i, k) {
		const char *name = json_string_value(json_object_get(k, "name"));

		if (name && strcmp(name, key) == 0) {
			entry = k;
			break;
		}
	}
	kalgs = entry ? json_object_get(entry, "algs") : NULL;
	if (!json_is_array(kalgs))
		return 0;
	list_text(algs, lt, sizeof(lt));
	for (const char *w = algs; w && *w;) {
		size_t l = strcspn(w, " ");
		char a[16];

		if (l < sizeof(a)) {
			memcpy(a, w, l);
			a[l] = '\0';
			if (in_array(kalgs, a)) {
				char *why = NULL;
				int n = word_count(algs) > 1
						? asprintf(&why, "%s: first of %s %s that key '%s' signs",
							   a, owner, lt, key)
						: asprintf(&why, "%s: %s only alg, which key '%s' signs",
							   a, owner, key);

				if (n < 0)
					return err_set(P11J_E_NOMEM, "out of memory");
				if ((*ret_alg = strdup(a)) == NULL) {
					free(why);
					return err_set(P11J_E_NOMEM, "out of memory");
				}
				*ret_reason = why;
				return 0;
			}
		}
		w = w[l] ? w + l + 1 : NULL;
	}
	signs[0] = '\0';
	json_array_foreach((json_t *)kalgs, i, k)
		if (json_is_string(k) && o + 2 < sizeof(signs))
			o += (size_t)snprintf(signs + o, sizeof(signs) - o, "%s%s", o ? ", " : "",
					      json_string_value(k));
	key_type_text(entry, kt, sizeof(kt));
	return err_set(P11J_E_UNSUPPORTED_ALG,
		       "%s accepts %s%s; key '%s' is %s (it signs %s): use a key of a type the "
		       "provider accepts, or --alg ALG to sign anyway",
		       who, lt, word_count(algs) > 1 ? "" : " only", key, kt,
		       signs[0] ? signs : "nothing");
}

int xch_choose_alg(xch_req *req, const json_t *keys)
{
	char who[96], owner[96], *alg = NULL, *reason = NULL;
	int r;

	if (!xch_alg_needs_key(req))
		return 0;
	if (req->algs_profile) {
		snprintf(who, sizeof(who), "the profile");
		snprintf(owner, sizeof(owner), "the profile's algs");
	} else {
		snprintf(who, sizeof(who), "preset '%s'", req->preset->name);
		snprintf(owner, sizeof(owner), "%s's", req->preset->name);
	}
	if ((r = xch_pick_alg(req->algs, who, owner, req->key, keys, &alg, &reason)) < 0)
		return r;
	req->alg_checked = true;
	if (alg == NULL)
		return 0; /* not listed: the agent's answer to the sign request says why */
	free(req->alg);
	free(req->alg_reason);
	req->alg = alg;
	req->alg_reason = reason;
	return 0;
}

int xch_resolve(const json_t *profile_in, const json_t *cli, const char *client_secret,
		int64_t now, xch_req *req)
{
	const char *pname = json_string_value(opt(profile_in, cli, "preset"));
	const char *grant = json_string_value(opt(profile_in, cli, "grant"));
	const json_t *jl;
	const preset *p;
	const char *const *rows;
	json_t *profile = NULL, *pj = NULL;
	vars v = { .req = req };
	char *origin = NULL, *host = NULL, *tmp = NULL;
	int r;

	memset(req, 0, sizeof(*req));
	req->warnings = json_array();
	req->header = json_object();
	req->claims = json_object();
	req->include = json_array();
	if (!req->warnings || !req->header || !req->claims || !req->include) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}
	if (grant && strcmp(grant, "client_credentials") != 0 && strcmp(grant, "jwt-bearer") != 0) {
		r = err_set(P11J_E_BAD_REQUEST,
			    "--grant '%s': use client_credentials or jwt-bearer (for anything else "
			    "set --form grant_type=...)",
			    grant);
		goto out;
	}
	if (pname == NULL)
		pname = grant && strcmp(grant, "jwt-bearer") == 0 ? "jwt-bearer" : "client-assertion";
	p = preset_find(pname);
	if (p == NULL) {
		r = err_set(P11J_E_BAD_REQUEST,
			    "unknown preset '%s' (nhs, smart, entra, okta, docusign, adobe, google, "
			    "salesforce, oracle, client-assertion, jwt-bearer)",
			    pname);
		goto out;
	}
	req->preset = p;
	rows = p->form;
	req->exchange = p->grant != PRESET_NO_EXCHANGE;
	if (grant) {
		bool cc = strcmp(grant, "client_credentials") == 0;

		if (cc ? p->grant != PRESET_CLIENT_ASSERTION : p->grant != PRESET_JWT_BEARER)
			rows = cc ? preset_form_client_credentials : preset_form_jwt_bearer;
		req->exchange = true;
	}

	if ((r = dup_opt(profile_in, cli, "key", &req->key)) < 0 ||
	    (r = dup_opt(profile_in, cli, "alg", &req->alg)) < 0 ||
	    (r = dup_opt(profile_in, cli, "cacert", &req->cacert)) < 0 ||
	    (r = dup_opt(profile_in, cli, "socket", &req->socket)) < 0)
		goto out;
	if (req->key == NULL) {
		r = err_set(P11J_E_BAD_REQUEST, "--key NAME is required ('p11jwt keys' lists them)");
		goto out;
	}
	if ((r = resolve_algs(profile_in, cli, p, req)) < 0)
		goto out;
	if (client_secret && (req->client_secret = strdup(client_secret)) == NULL) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}

	/* client_id and token_url first (they may use ${env:...}; the token URL
	 * may use ${client_id}), then the profile's other strings with them */
	if ((r = take_expanded(profile_in, cli, "client_id", NULL, &v, p->name,
			       &req->client_id)) < 0 ||
	    (r = take_expanded(profile_in, cli, "token_url", p->token_url, &v, p->name,
			       &req->token_url)) < 0)
		goto out;
	if (req->exchange && req->token_url == NULL) {
		r = err_set(P11J_E_BAD_REQUEST, "--token-url URL is required (preset '%s' has no "
						"default)",
			    p->name);
		goto out;
	}
	/* The token URL is parsed (by libcurl, which that loads) only when a
	 * value needs its host or origin; xch_check_url() checks it before any
	 * request. A cache hit for the usual aud = token URL loads no libcurl. */
	if (req->token_url && !json_string_value(opt(profile_in, cli, "aud")) &&
	    (p->aud == AUD_HOST || p->aud == AUD_ORIGIN || p->aud == AUD_TEMPLATE)) {
		if ((r = http_url_origin(req->token_url, &origin)) < 0 ||
		    (r = http_url_host(req->token_url, &host)) < 0)
			goto out;
		v.origin = origin;
		v.host = host;
	}
	if (profile_in) {
		profile = json_deep_copy(profile_in);
		if (profile == NULL) {
			r = err_set(P11J_E_NOMEM, "out of memory");
			goto out;
		}
		json_object_del(profile, "client_id");
		json_object_del(profile, "token_url");
		if ((r = expand_json(profile, &v, "profile")) < 0)
			goto out;
	}

	/* identity */
	if ((r = dup_opt(profile, cli, "iss", &req->iss)) < 0 ||
	    (r = dup_opt(profile, cli, "sub", &req->sub)) < 0 ||
	    (r = dup_opt(profile, cli, "aud", &req->aud)) < 0 ||
	    (r = dup_opt(profile, cli, "scope", &req->scope)) < 0)
		goto out;
	if (req->iss == NULL && p->iss == NULL) {
		r = err_set(P11J_E_BAD_REQUEST, "--iss is required by preset '%s'", p->name);
		goto out;
	}
	if (req->iss == NULL && (r = expand_req("iss", p->iss, &v, p->name, &req->iss)) < 0)
		goto out;
	if (req->sub == NULL) {
		bool cc_sub = grant ? strcmp(grant, "client_credentials") == 0 : p->sub != NULL;

		if (cc_sub && (r = expand_req("sub", p->sub ? p->sub : "${client_id}", &v, p->name,
					      &req->sub)) < 0)
			goto out;
		if (req->sub == NULL && (grant ? !cc_sub : p->sub_required)) {
			r = err_set(P11J_E_BAD_REQUEST,
				    "--sub is required: preset '%s' asserts a user (the subject)",
				    grant && !cc_sub ? "jwt-bearer" : p->name);
			goto out;
		}
	}
	if (req->aud == NULL) {
		const char *src = NULL;

		switch (p->aud) {
		case AUD_TOKEN_URL:
			src = req->token_url;
			break;
		case AUD_HOST:
			src = host;
			break;
		case AUD_ORIGIN:
			src = origin;
			break;
		case AUD_TEMPLATE:
			if ((r = expand_req("aud", p->aud_tmpl, &v, p->name, &req->aud)) < 0)
				goto out;
			break;
		case AUD_NONE:
			break;
		}
		if (src && (req->aud = strdup(src)) == NULL) {
			r = err_set(P11J_E_NOMEM, "out of memory");
			goto out;
		}
	}
	if (req->scope == NULL && p->scope_default && (req->scope = strdup(p->scope_default)) == NULL) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}

	/* lifetime and timeout */
	jl = opt(profile, cli, "lifetime");
	req->lifetime = jl ? json_integer_value(jl) : p->lifetime ? p->lifetime : 300;
	if (req->lifetime < 1 || req->lifetime > 86400) {
		r = err_set(P11J_E_BAD_REQUEST, "--lifetime %lld: use 1 to 86400 seconds",
			    req->lifetime);
		goto out;
	}
	jl = opt(profile, cli, "timeout");
	req->timeout = jl ? (long)json_integer_value(jl) : XCH_DEFAULT_TIMEOUT;
	if (req->timeout < 1 || req->timeout > 600) {
		r = err_set(P11J_E_BAD_REQUEST, "--timeout %ld: use 1 to 600 seconds", req->timeout);
		goto out;
	}

	/* header and claims: preset, profile files and members, command line */
	if (p->header) {
		pj = json_loads(p->header, 0, NULL);
		if (pj == NULL || (r = merge_obj(req->header, pj)) < 0) {
			r = err_set(P11J_E_INTERNAL, "preset %s: bad header", p->name);
			goto out;
		}
		json_decref(pj);
		pj = NULL;
	}
	if (p->claims) {
		pj = json_loads(p->claims, 0, NULL);
		if (pj == NULL) {
			r = err_set(P11J_E_INTERNAL, "preset %s: bad claims", p->name);
			goto out;
		}
		if ((r = expand_json(pj, &v, p->name)) < 0 || (r = merge_obj(req->claims, pj)) < 0)
			goto out;
		json_decref(pj);
		pj = NULL;
	}
	if ((r = set_str(req->claims, "iss", req->iss)) < 0 ||
	    (r = set_str(req->claims, "sub", req->sub)) < 0 ||
	    (r = set_str(req->claims, "aud", req->aud)) < 0 || (r = apply_scope(req, p)) < 0)
		goto out;
	if (p->nbf && json_object_set_new(req->claims, "nbf", json_integer(now)) < 0) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}
	if ((r = merge_file(req->header, profile, "header_file")) < 0 ||
	    (r = merge_obj(req->header, profile ? json_object_get(profile, "header") : NULL)) < 0 ||
	    (r = merge_file(req->header, cli, "header_file")) < 0 ||
	    (r = merge_obj(req->header, cli ? json_object_get(cli, "header") : NULL)) < 0 ||
	    (r = merge_file(req->claims, profile, "claims_file")) < 0 ||
	    (r = merge_obj(req->claims, profile ? json_object_get(profile, "claims") : NULL)) < 0 ||
	    (r = merge_file(req->claims, cli, "claims_file")) < 0 ||
	    (r = merge_obj(req->claims, cli ? json_object_get(cli, "claims") : NULL)) < 0)
		goto out;
	if (p->include && json_array_append_new(req->include, json_string(p->include)) < 0) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}
	{
		const json_t *inc = opt(profile, cli, "include");
		size_t i;
		json_t *iv;

		json_array_foreach((json_t *)inc, i, iv) {
			if (p->include && strcmp(p->include, json_string_value(iv)) == 0)
				continue;
			if (json_array_append(req->include, iv) < 0) {
				r = err_set(P11J_E_NOMEM, "out of memory");
				goto out;
			}
		}
	}

	/* the form */
	if (req->exchange) {
		const char *af = json_string_value(opt(profile, cli, "assertion_field"));

		if (p->secret_required && req->client_secret == NULL) {
			r = err_set(P11J_E_BAD_REQUEST,
				    "preset '%s' sends a client secret: give --client-secret-file "
				    "FILE (or set P11JWT_CLIENT_SECRET)",
				    p->name);
			goto out;
		}
		if ((r = build_form(req, rows, &v)) < 0 || (r = apply_form(req, profile)) < 0 ||
		    (r = apply_form(req, cli)) < 0)
			goto out;
		if (af && req->assertion_field && strcmp(af, req->assertion_field) != 0) {
			form_field *f = NULL;

			form_del(&req->form, af);
			for (size_t i = 0; i < req->form.n; i++)
				if (strcmp(req->form.v[i].name, req->assertion_field) == 0)
					f = &req->form.v[i];
			if (f) {
				char *n = strdup(af);

				if (n == NULL) {
					r = err_set(P11J_E_NOMEM, "out of memory");
					goto out;
				}
				free(f->name);
				f->name = n;
			}
		}
		if (af) {
			free(req->assertion_field);
			if ((req->assertion_field = strdup(af)) == NULL) {
				r = err_set(P11J_E_NOMEM, "out of memory");
				goto out;
			}
		}
		if (req->assertion_field == NULL ||
		    form_get(&req->form, req->assertion_field) == NULL) {
			r = err_set(P11J_E_BAD_REQUEST,
				    "the form has no field for the assertion (set "
				    "--assertion-field NAME)");
			goto out;
		}
		if (req->client_secret && req->secret_field == NULL) {
			if ((r = form_set(&req->form, "client_secret", req->client_secret)) < 0 ||
			    (req->secret_field = strdup("client_secret")) == NULL) {
				r = r < 0 ? r : err_set(P11J_E_NOMEM, "out of memory");
				goto out;
			}
		}
	}

	/* what the provider is known to reject */
	if (req->algs && req->alg && !util_word_in(req->algs, req->alg) &&
	    (r = req->algs_profile
			 ? warn(req, "the profile's algs are %s; %s will likely be rejected",
				req->algs, req->alg)
			 : warn(req, "preset %s: the provider takes %s; %s will likely be rejected",
				p->name, req->algs, req->alg)) < 0)
		goto out;
	if (p->max_lifetime && req->lifetime > p->max_lifetime &&
	    (r = warn(req, "preset %s: lifetime %lld s is over the %d s the provider accepts",
		      p->name, req->lifetime, p->max_lifetime)) < 0)
		goto out;
	if (p->require_kid) {
		const json_t *kid = json_object_get(req->header, "kid");

		if (kid && (!json_is_string(kid) || json_string_length(kid) == 0) &&
		    (r = warn(req, "preset %s: the provider needs a kid header matching the "
				   "registered JWKS; do not remove it",
			      p->name)) < 0)
			goto out;
	}
	r = 0;
out:
	free(tmp);
	free(origin);
	free(host);
	json_decref(pj);
	json_decref(profile);
	if (r < 0)
		xch_req_clear(req);
	return r;
}

int xch_check_url(const xch_req *req)
{
	return req->token_url ? http_check_url("--token-url", req->token_url) : 0;
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

	/* the alg asked for, stable while xch_choose_alg() changes req->alg */
	if (!req->alg_given && req->algs &&
	    (asked = strndup(req->algs, strcspn(req->algs, " "))) == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	fa = json_array();
	o = json_pack("{s:s?,s:s?,s:s,s:s?,s:s?,s:s?,s:s?,s:s?,s:o?}", "token_url",
		      req->token_url, "client_id", req->client_id, "key", req->key, "alg",
		      asked ? asked : req->alg, "iss", req->iss, "sub", req->sub, "aud", req->aud,
		      "scope", req->scope, "form", fa);
	free(asked);
	if (o == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	for (size_t i = 0; i < req->form.n; i++) {
		const form_field *f = &req->form.v[i];

		if ((req->assertion_field && strcmp(f->name, req->assertion_field) == 0) ||
		    (req->secret_field && strcmp(f->name, req->secret_field) == 0))
			continue;
		if (json_array_append_new(fa, json_pack("[ss]", f->name, f->value)) < 0) {
			json_decref(o);
			return err_set(P11J_E_NOMEM, "out of memory");
		}
	}
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	if (s == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	r = EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL) == 1 ? 0 : -1;
	free(s);
	if (r < 0)
		return err_set_ossl(P11J_E_CRYPTO, "SHA-256");
	for (unsigned int i = 0; i < mdlen; i++)
		snprintf(ret + 2 * i, 3, "%02x", md[i]);
	return 0;
}

/* ---- the answer --------------------------------------------------------- */

/* Printable start of a body for messages: control characters as '.'. */
static void excerpt(const char *body, size_t len, char *out, size_t outlen)
{
	size_t n = 0;

	for (size_t i = 0; i < len && n + 4 < outlen; i++)
		out[n++] = (unsigned char)body[i] < 0x20 || body[i] == 0x7f ? '.' : body[i];
	if (len > n && n + 4 <= outlen) {
		memcpy(out + n, "...", 3);
		n += 3;
	}
	out[n] = '\0';
}

static int parse_expires(const json_t *e, int64_t *ret)
{
	if (e == NULL || json_is_null(e)) {
		*ret = -1;
		return 0;
	}
	if (json_is_integer(e) && json_integer_value(e) >= 0) {
		*ret = json_integer_value(e);
		return 0;
	}
	if (json_is_real(e) && json_real_value(e) >= 0 && json_real_value(e) < 1e12) {
		*ret = (int64_t)json_real_value(e);
		return 0;
	}
	if (json_is_string(e)) {
		const char *s = json_string_value(e);
		size_t n = strlen(s);

		if (n > 0 && n <= 12 && strspn(s, "0123456789") == n) {
			*ret = strtoll(s, NULL, 10);
			return 0;
		}
	}
	return err_set(P11J_E_BAD_RESPONSE,
		       "the token endpoint's expires_in is not a number of seconds");
}

int xch_parse_token(long status, const char *body, size_t len, xch_token *tok, char **ret_error)
{
	char ex[160];
	json_error_t jerr;
	json_t *j, *at, *err;
	int r;

	memset(tok, 0, sizeof(*tok));
	if (ret_error)
		*ret_error = NULL;
	excerpt(body, len, ex, sizeof(ex));
	j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (j == NULL || !json_is_object(j)) {
		json_decref(j);
		if (len == 0)
			return err_set(P11J_E_BAD_RESPONSE,
				       "the token endpoint answered HTTP %ld with an empty body",
				       status);
		return err_set(P11J_E_BAD_RESPONSE,
			       "the token endpoint answered HTTP %ld with a body that is not a "
			       "JSON object: '%s'",
			       status, ex);
	}
	err = json_object_get(j, "error");
	if (json_is_string(err)) {
		const char *d = json_string_value(json_object_get(j, "error_description"));
		const char *u = json_string_value(json_object_get(j, "error_uri"));
		char code[64];

		excerpt(json_string_value(err), json_string_length(err), code, sizeof(code));
		if (ret_error)
			*ret_error = strdup(json_string_value(err));
		r = err_set(P11J_E_OAUTH, "token endpoint said %s%s%s%s%s", code, d ? ": " : "",
			    d ? d : "", u ? " (see " : "", u ? u : "");
		if (u)
			snprintf(ex, sizeof(ex), "%s)", err_msg()), err_set(r, "%s", ex);
		json_decref(j);
		return r;
	}
	if (status < 200 || status > 299) {
		json_decref(j);
		return err_set(P11J_E_BAD_RESPONSE,
			       "the token endpoint answered HTTP %ld without an OAuth error: '%s'",
			       status, ex);
	}
	at = json_object_get(j, "access_token");
	if (!json_is_string(at) || json_string_length(at) == 0) {
		json_decref(j);
		return err_set(P11J_E_BAD_RESPONSE,
			       "the token endpoint's answer has no access_token (incomplete "
			       "response)");
	}
	if ((r = parse_expires(json_object_get(j, "expires_in"), &tok->expires_in)) < 0) {
		json_decref(j);
		return r;
	}
	tok->access_token = strdup(json_string_value(at));
	if (json_is_string(json_object_get(j, "token_type")))
		tok->token_type = strdup(json_string_value(json_object_get(j, "token_type")));
	if (json_is_string(json_object_get(j, "refresh_token")))
		tok->refresh_token = strdup(json_string_value(json_object_get(j, "refresh_token")));
	tok->json = j;
	if (tok->access_token == NULL) {
		xch_token_clear(tok);
		return err_set(P11J_E_NOMEM, "out of memory");
	}
	return 0;
}

void xch_token_clear(xch_token *tok)
{
	freezero_str(tok->access_token);
	free(tok->token_type);
	freezero_str(tok->refresh_token);
	json_decref(tok->json);
	memset(tok, 0, sizeof(*tok));
}

/* ---- hints -------------------------------------------------------------- */

enum hint_kind { H_JTI, H_CONSENT, H_CLOCK, H_AUD, H_ISS, H_KEY, H_SCOPE, H_CLIENT };

/* First match wins; words are matched case-insensitively in the error code
 * and description. */
static const struct {
	const char *error; /* exact error code, or NULL for any */
	const char *words; /* '|'-separated */
	enum hint_kind kind;
} hint_rules[] = {
	{ NULL, "jti|replay|already used|used once|reuse", H_JTI },
	{ "consent_required", NULL, H_CONSENT },
	{ NULL, "consent|approved|not authorized for this|not authorized for any|"
		"unauthorized to retrieve|delegation",
	  H_CONSENT },
	{ NULL, "AADSTS700024|expired|exp|iat|nbf|clock|not yet valid|lifetime|in the future|"
		"too far|timestamp",
	  H_CLOCK },
	{ NULL, "aud|audience", H_AUD },
	{ "issuer_not_found", NULL, H_ISS },
	{ NULL, "issuer|iss", H_ISS },
	{ NULL, "AADSTS700027|no_valid_keys_or_signatures|kid|signature|key|jwks|thumbprint|"
		"certificate",
	  H_KEY },
	{ "invalid_scope", NULL, H_SCOPE },
	{ "invalid_client", NULL, H_CLIENT },
	{ "unauthorized_client", NULL, H_CLIENT },
};

/* w occurs in hay as a word: not inside another word, though a plural 's'
 * may follow ("key" matches "keys", not "monkey" or "keyboard"). */
static bool word_at(const char *hay, const char *w)
{
	size_t n = strlen(w);

	for (const char *h = strcasestr(hay, w); h; h = strcasestr(h + 1, w)) {
		const char *after = h + n;

		if (h > hay && isalnum((unsigned char)h[-1]) && isalnum((unsigned char)w[0]))
			continue;
		if (*after == 's' || *after == 'S')
			after++;
		if (isalnum((unsigned char)*after) && isalnum((unsigned char)w[n - 1]))
			continue;
		return true;
	}
	return false;
}

static bool has_word(const char *hay, const char *words)
{
	char w[64];

	if (hay == NULL)
		return false;
	for (const char *p = words; *p;) {
		const char *e = strchr(p, '|');
		size_t l = e ? (size_t)(e - p) : strlen(p);

		snprintf(w, sizeof(w), "%.*s", (int)l, p);
		if (w[0] && word_at(hay, w))
			return true;
		if (!e)
			break;
		p = e + 1;
	}
	return false;
}

static const char *jstr(const json_t *o, const char *k, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s ? s : dflt;
}

const char *xch_hint(const xch_req *req, const char *error, const char *description,
		     const json_t *header, const json_t *claims, int64_t now, char *buf,
		     size_t len)
{
	const preset *p = req->preset;
	int kind = -1;

	for (size_t i = 0; i < ARRAY_SIZE(hint_rules) && kind < 0; i++) {
		if (hint_rules[i].error && (error == NULL || strcmp(error, hint_rules[i].error)))
			continue;
		if (hint_rules[i].words && !has_word(description, hint_rules[i].words))
			continue;
		kind = (int)hint_rules[i].kind;
	}
	switch (kind) {
	case H_JTI:
		snprintf(buf, len,
			 "the assertion's jti '%s' was refused as already used: every assertion "
			 "needs a fresh jti (do not fix it with --claim jti=...)",
			 jstr(claims, "jti", "?"));
		return buf;
	case H_CONSENT:
		return "the user (or an admin) must grant consent to this client first: "
		       "DocuSign's consent URL, Salesforce's pre-approved profiles, Google's "
		       "domain-wide delegation";
	case H_CLOCK: {
		json_int_t iat = json_integer_value(json_object_get(claims, "iat"));
		json_int_t exp = json_integer_value(json_object_get(claims, "exp"));
		int n = snprintf(buf, len,
				 "check this host's clock and the lifetime: the assertion had "
				 "iat=%lld, exp=%lld (%lld s) and this host's time is %lld",
				 (long long)iat, (long long)exp, (long long)(exp - iat),
				 (long long)now);

		if (p && p->max_lifetime && n > 0 && (size_t)n < len)
			snprintf(buf + n, len - (size_t)n, "; %s accepts at most %d s", p->name,
				 p->max_lifetime);
		return buf;
	}
	case H_AUD:
		snprintf(buf, len,
			 "the assertion's aud was '%s'; the server compares it as an exact string "
			 "(scheme, host, path, trailing '/'): set --aud to the value the provider "
			 "documents",
			 jstr(claims, "aud", "(none)"));
		return buf;
	case H_ISS:
		snprintf(buf, len,
			 "iss was '%s': it must be the client id (integration key, consumer key, "
			 "service account) registered at the provider",
			 jstr(claims, "iss", "(none)"));
		return buf;
	case H_KEY:
	case H_CLIENT:
		snprintf(buf, len,
			 "%sthe assertion was signed by key '%s' with %s, kid '%s': register that "
			 "key at the provider ('p11jwt jwks --key %s --alg %s'); also check iss/sub "
			 "'%s' and aud '%s'",
			 kind == H_CLIENT ? "the server could not authenticate the client. " : "",
			 req->key, jstr(header, "alg", "?"), jstr(header, "kid", "(none)"), req->key,
			 jstr(header, "alg", "?"), jstr(claims, "iss", "(none)"),
			 jstr(claims, "aud", "(none)"));
		return buf;
	case H_SCOPE:
		snprintf(buf, len, "the scope '%s' was refused: use one granted to this client",
			 req->scope ? req->scope : "(none)");
		return buf;
	default:
		return NULL;
	}
}
