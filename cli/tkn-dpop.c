/* SPDX-License-Identifier: MIT */
/* DPoP (RFC 9449) for p11jwt token and call: the proof key's binding (its
 * thumbprint, from the agent), proofs from the agent, the servers' last
 * nonces in the cache directory, and the dpop_signing_alg_values_supported
 * of a server's metadata for hints. */
#include "cli/cache.h"
#include "cli/http.h"
#include "cli/token.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/dpop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define METADATA_TIMEOUT 5 /* seconds per discovery request */

int tkn_dpop_bind(xch_req *req)
{
	json_t *keys;
	const char *jkt;
	int st;

	if (!req->dpop || req->dpop_jkt)
		return 0;
	if ((keys = tkn_agent_keys(req, false, &st)) == NULL)
		return st;
	jkt = tkn_listed_jkt(keys, req->dpop_key);
	if (jkt == NULL || jkt[0] == '\0') {
		json_decref(keys);
		return cli_fail(jkt == NULL
					? err_set(P11J_E_NOT_FOUND,
						  "--dpop-key: the agent has no key '%s' that you "
						  "may use ('p11jwt keys' lists them)",
						  req->dpop_key)
					: err_set(P11J_E_PROTOCOL,
						  "the agent's key list gives no jkt for '%s': "
						  "update p11jwt-agent for DPoP",
						  req->dpop_key));
	}
	req->dpop_jkt = strdup(jkt);
	json_decref(keys);
	return req->dpop_jkt ? 0 : cli_fail(err_nomem());
}

/* The proof's alg: the assertion's when the same key signs both (the alg
 * chosen for the provider), else the proof key's own default. */
static const char *proof_alg(const xch_req *req)
{
	return strcmp(req->dpop_key, req->key) == 0 ? req->alg : NULL;
}

int tkn_dpop_proof(const xch_req *req, const char *htm, const char *htu, const char *nonce,
		   const char *access_token, char **ret_jwt, char **ret_alg)
{
	cli_ctx actx = { .socket = req->socket, .agent_uid = req->agent_uid };
	const char *alg = proof_alg(req), *jwt, *jkt;
	char ath[DPOP_ATH_LEN + 1];
	json_t *dreq, *resp = NULL;
	int r, st;

	*ret_jwt = NULL;
	if (ret_alg)
		*ret_alg = NULL;
	if (access_token && (r = dpop_ath(access_token, strlen(access_token), ath)) < 0)
		return cli_fail(r);
	dreq = json_pack("{s:s,s:s,s:s,s:s}", "op", "dpop", "key", req->dpop_key, "htm", htm,
			 "htu", htu);
	if (dreq == NULL || (alg && json_object_set_new(dreq, "alg", json_string(alg)) < 0) ||
	    (nonce && json_object_set_new(dreq, "nonce", json_string(nonce)) < 0) ||
	    (access_token && json_object_set_new(dreq, "ath", json_string(ath)) < 0)) {
		json_decref(dreq);
		return cli_fail(err_set(P11J_E_BAD_REQUEST, "the DPoP proof's fields must be "
							    "valid UTF-8"));
	}
	if ((st = cli_call(&actx, dreq, &resp)) != 0) { /* consumes dreq */
		if (st == CLI_EXIT_REFUSED && req->dpop_preset)
			tkn_note("hint: preset '%s' turns DPoP on; give --no-dpop for a client that "
				 "takes bearer tokens, or let key '%s' make proofs (dpop = yes in "
				 "its [key] section, or p11jwt-agent --allow-dpop)",
				 req->preset->name, req->dpop_key);
		return st;
	}
	jwt = json_string_value(json_object_get(resp, "jwt"));
	jkt = json_string_value(json_object_get(resp, "jkt"));
	if (jwt == NULL || jkt == NULL) {
		json_decref(resp);
		return cli_fail(err_set(P11J_E_PROTOCOL, "the agent's dpop answer has no jwt or jkt"));
	}
	/* the key behind the name changed (a new key under the old label)
	 * since the binding was read: a token bound to the old one would be
	 * sent with proofs of the new one */
	if (req->dpop_jkt && strcmp(jkt, req->dpop_jkt) != 0) {
		json_decref(resp);
		return cli_fail(err_set(P11J_E_PROTOCOL,
					"key '%s' changed while p11jwt ran (thumbprint %s, was %s); "
					"run the command again",
					req->dpop_key, jkt, req->dpop_jkt));
	}
	*ret_jwt = strdup(jwt);
	if (ret_alg && json_is_string(json_object_get(resp, "alg")))
		*ret_alg = strdup(json_string_value(json_object_get(resp, "alg")));
	json_decref(resp);
	return *ret_jwt ? 0 : cli_fail(err_nomem());
}

/* The cache directory and the server's name for its nonce: the role
 * (token endpoint or API: an authorisation server and a resource server
 * on one origin keep nonces of their own) and the URL's origin; or false
 * (nonces are a help, never a reason to fail). */
static bool nonce_place(tkn_server role, const char *url, tcache *c, char **server)
{
	char *origin = NULL;

	*server = NULL;
	if (http_url_origin(url, &origin) < 0)
		return false;
	if (asprintf(server, "%s %s", role == TKN_TOKEN_ENDPOINT ? "token" : "api", origin) < 0)
		*server = NULL;
	free(origin);
	if (*server == NULL || cache_open(c) < 0) {
		free(*server);
		*server = NULL;
		return false;
	}
	return true;
}

char *tkn_dpop_nonce_get(tkn_server role, const char *url)
{
	tcache c;
	char *origin, *n = NULL;
	int r;

	if (!nonce_place(role, url, &c, &origin))
		return NULL;
	if ((r = cache_nonce_get(&c, origin, &n)) < 0 && r != P11J_E_NOT_FOUND)
		tkn_note("note: ignoring a DPoP nonce file: %s", err_msg());
	free(origin);
	return n;
}

void tkn_dpop_nonce_put(tkn_server role, const char *url, const char *nonce)
{
	tcache c;
	char *origin;

	if (nonce == NULL || !nonce_place(role, url, &c, &origin))
		return;
	if (cache_nonce_put(&c, origin, nonce, util_now()) < 0)
		tkn_note("note: the server's DPoP nonce was not kept: %s", err_msg());
	free(origin);
}

bool tkn_dpop_nonce_challenge(const http_resp *resp)
{
	const char *w = resp->www_authenticate;

	return resp->status == 401 && resp->dpop_nonce != NULL && w != NULL &&
	       strcasestr(w, "use_dpop_nonce") != NULL;
}

/* The string members of a JSON array, space-separated; NULL if none. */
static char *join_strings(const json_t *a)
{
	size_t i, len = 0;
	json_t *v;
	char *s;

	json_array_foreach(a, i, v)
		if (json_is_string(v))
			len += json_string_length(v) + 1;
	if (len == 0 || (s = calloc(1, len)) == NULL)
		return NULL;
	json_array_foreach(a, i, v)
		if (json_is_string(v)) {
			if (*s)
				strcat(s, " ");
			strcat(s, json_string_value(v));
		}
	return s;
}

/* GET one metadata document; its algs when it describes this token URL. */
static char *metadata_algs(const xch_req *req, const char *url)
{
	static const char *const hdrs[] = { "Accept: application/json", NULL };
	http_opts ho = { .cacert = req->cacert, .timeout_s = METADATA_TIMEOUT,
			 .max_body = 256 * 1024 };
	http_resp resp = { 0 };
	json_t *m = NULL;
	char *algs = NULL;

	if (http_check_url("metadata", url) == 0 &&
	    http_request(&ho, "GET", url, hdrs, NULL, 0, &resp) == 0 && resp.status == 200 &&
	    (m = json_loadb(resp.body, resp.len, 0, NULL)) != NULL &&
	    json_is_string(json_object_get(m, "token_endpoint")) &&
	    strcmp(json_string_value(json_object_get(m, "token_endpoint")), req->token_url) == 0) {
		const json_t *a = json_object_get(m, "dpop_signing_alg_values_supported");

		algs = join_strings(a);
		if (algs == NULL)
			algs = strdup(json_is_array(a) ? "(none)" : "(not listed)");
	}
	json_decref(m);
	http_resp_clear(&resp);
	return algs;
}

char *tkn_dpop_server_algs(const xch_req *req)
{
	static const char *const wk[] = { "/.well-known/oauth-authorization-server",
					  "/.well-known/openid-configuration" };
	char *origin = NULL, *algs = NULL, *path, *url = NULL;
	size_t olen;

	if (http_url_origin(req->token_url, &origin) < 0)
		return NULL;
	olen = strlen(origin);
	/* the issuer is the token URL's origin with some prefix of its path:
	 * try each prefix, longest first; RFC 8414 puts the well-known part
	 * before the issuer's path, OpenID Connect after it */
	path = strncasecmp(req->token_url, origin, olen) == 0 ? strdup(req->token_url + olen) : NULL;
	if (path)
		path[strcspn(path, "?#")] = '\0';
	for (char *cut = path ? strrchr(path, '/') : NULL; cut && algs == NULL;
	     cut = strrchr(path, '/')) {
		*cut = '\0';
		for (size_t i = 0; i < ARRAY_SIZE(wk) && algs == NULL; i++) {
			int r = i == 0 ? asprintf(&url, "%s%s%s", origin, wk[i], path)
				       : asprintf(&url, "%s%s%s", origin, path, wk[i]);

			if (r < 0)
				break;
			algs = metadata_algs(req, url);
			free(url);
		}
	}
	free(path);
	free(origin);
	return algs;
}
