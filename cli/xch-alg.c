/* SPDX-License-Identifier: MIT */
/* The exchange's alg: the accepted list (profile, else preset) and the
 * first of it that the key signs. */
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
int xch_resolve_algs(const json_t *profile, const json_t *cli, const preset *p, xch_req *req)
{
	const json_t *pa = xch_opt(profile, cli, "algs");
	char lt[160];

	if (pa) {
		size_t i, len = 0;
		json_t *v;

		json_array_foreach((json_t *)pa, i, v)
			len += json_string_length(v) + 1;
		req->algs = calloc(1, len + 1);
		if (req->algs == NULL)
			return err_nomem();
		json_array_foreach((json_t *)pa, i, v) {
			if (i)
				strcat(req->algs, " ");
			strcat(req->algs, json_string_value(v));
		}
		req->algs_profile = true;
	} else if (p->algs && (req->algs = strdup(p->algs)) == NULL) {
		return err_nomem();
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
			return err_nomem();
		list_text(req->algs, lt, sizeof(lt));
		if (asprintf(&req->alg_reason, "%s: first of %s%s %s (not matched to the key yet)",
			     req->alg, req->algs_profile ? "the profile's " : p->name,
			     req->algs_profile ? "algs" : "'s", lt) < 0)
			req->alg_reason = NULL;
	} else if (asprintf(&req->alg_reason,
			    "the key's default alg: preset '%s' names no algs", p->name) < 0) {
		req->alg_reason = NULL;
	}
	return req->alg_reason ? 0 : err_nomem();
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
					return err_nomem();
				if ((*ret_alg = strdup(a)) == NULL) {
					free(why);
					return err_nomem();
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
