/* SPDX-License-Identifier: MIT */
/* The exchange's options: the members a profile or the command line may
 * give, checked by type, and profiles loaded from disk. */
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
	{ "dpop", JSON_TRUE, "--dpop/--no-dpop" }, /* JSON_TRUE: a boolean */
	{ "dpop_key", JSON_STRING, "--dpop-key" },
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
	case JSON_TRUE:
		return "true or false";
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
		if (opt_members[i].type == JSON_TRUE ? !json_is_boolean(v)
						     : json_typeof(v) != opt_members[i].type)
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
		return err_nomem();
	r = json_object_set_new(o, member, json_string(full)) < 0
		    ? err_nomem()
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
