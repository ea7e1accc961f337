/* SPDX-License-Identifier: MIT */
#include "agent/proto.h"
#include "agent/proto-fast.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/dpop.h"
#include "jose/jsonfast.h"
#include "jose/jws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The answer line: resp in compact JSON and a newline. The buffer may hold
 * a JWT: it is wiped whenever it moves and when freed. */
static int proto_finish(json_t *resp, char **ret_resp, size_t *ret_len)
{
	jsonf_buf b = { 0 };
	char *line;
	int r;

	r = jsonf_reserve(&b, 512);
	if (r == 0 && (r = jsonf_append_any(&b, resp)) > 0)
		r = err_set(P11J_E_NOMEM, "out of memory serialising a response");
	json_decref(resp);
	if (r < 0 || (r = jsonf_raw(&b, "\n", 1)) < 0 || (line = jsonf_take(&b, ret_len)) == NULL) {
		jsonf_free(&b);
		return r < 0 ? r : err_nomem();
	}
	*ret_resp = line;
	return 0;
}

int proto_error_line(const json_t *id, int code, const char *msg, char **ret_resp,
		     size_t *ret_len)
{
	json_t *resp = json_pack("{s:O?,s:b,s:{s:s,s:s}}", "id", id, "ok", 0, "error", "code",
				 err_code_name(code), "message", msg ? msg : err_strerror(code));

	if (resp == NULL) /* msg not UTF-8 would fail too: fall back to the code text */
		resp = json_pack("{s:O?,s:b,s:{s:s,s:s}}", "id", id, "ok", 0, "error", "code",
				 err_code_name(code), "message", err_strerror(code));
	if (resp == NULL)
		return err_nomem();
	return proto_finish(resp, ret_resp, ret_len);
}

/* Fields a request may carry, by op; anything else is a bad request, so a
 * misspelt option ("lifetme") is reported instead of silently ignored. */
static int check_fields(const json_t *req, const char *const *allowed)
{
	const char *k;
	json_t *v;

	json_object_foreach((json_t *)req, k, v) {
		const char *const *a;

		if (strcmp(k, "id") == 0 || strcmp(k, "op") == 0)
			continue;
		for (a = allowed; *a != NULL; a++)
			if (strcmp(*a, k) == 0)
				break;
		if (*a == NULL)
			return err_set(P11J_E_BAD_REQUEST, "unknown field '%.64s' for this op", k);
	}
	return 0;
}

static int op_hello(const proto_env *env, const json_t *req, json_t *resp)
{
	static const char *const allowed[] = { NULL };
	int r;

	if ((r = check_fields(req, allowed)) < 0)
		return r;
	if (json_object_set_new(resp, "protocol", json_integer(PROTO_VERSION)) < 0 ||
	    json_object_set_new(resp, "version", json_string(env->version ? env->version : "")) < 0)
		return err_nomem();
	return 0;
}

static bool may_use(const proto_env *env, const proto_peer *peer, const kr_key *k)
{
	return peer == NULL || pol_may_use(k->pol, env->owner_uid, peer->uid, peer->gid);
}

static int op_keys(const proto_env *env, const proto_peer *peer, const json_t *req,
		   json_t *resp)
{
	static const char *const allowed[] = { NULL };
	json_t *a;
	int r;

	if ((r = check_fields(req, allowed)) < 0)
		return r;
	a = json_array();
	if (a == NULL)
		return err_nomem();
	for (size_t i = 0; i < env->kr->n; i++)
		if (may_use(env, peer, env->kr->keys[i]))
			json_array_append(a, env->kr->keys[i]->info);
	if (json_object_set_new(resp, "keys", a) < 0)
		return err_nomem();
	return 0;
}

static int get_key(const proto_env *env, const proto_peer *peer, const json_t *req,
		   bool required, const kr_key **ret)
{
	const json_t *v = json_object_get(req, "key");
	const kr_key *k;

	*ret = NULL;
	if (v == NULL) {
		if (required)
			return err_set(P11J_E_BAD_REQUEST, "missing field 'key' (a key name)");
		return 0;
	}
	if (!json_is_string(v))
		return err_set(P11J_E_BAD_REQUEST, "field 'key' must be a string");
	k = kr_find(env->kr, json_string_value(v));
	if (k == NULL)
		return err_set(P11J_E_UNKNOWN_KEY, "no key named '%.128s'", json_string_value(v));
	if (kr_key_gone(k))
		return err_set(P11J_E_UNKNOWN_KEY, "key '%s' is no longer on its token", k->name);
	if (!may_use(env, peer, k))
		return err_set(P11J_E_FORBIDDEN, "uid %u (gid %u) may not use key '%s' (policy uids, "
			       "gids)", (unsigned)peer->uid, (unsigned)peer->gid, k->name);
	*ret = k;
	return 0;
}

/* A JWK's "alg" binds the key to one algorithm at the verifier, so the
 * caller may export it for the alg it will sign with (NHS wants RS512). */
static int op_jwks(const proto_env *env, const proto_peer *peer, const json_t *req,
		   json_t *resp)
{
	static const char *const allowed[] = { "key", "alg", NULL };
	const json_t *algv = json_object_get(req, "alg");
	jwa_alg alg = JWA_NONE;
	const kr_key *k = NULL;
	json_t *a;
	int r;

	if ((r = check_fields(req, allowed)) < 0 || (r = get_key(env, peer, req, false, &k)) < 0)
		return r;
	if (algv != NULL) {
		if (!json_is_string(algv))
			return err_set(P11J_E_BAD_REQUEST, "field 'alg' must be a string");
		alg = jwa_from_name(json_string_value(algv));
		if (alg == JWA_NONE)
			return err_set(P11J_E_UNSUPPORTED_ALG, "alg '%.32s' is not supported",
				       json_string_value(algv));
	}
	a = json_array();
	if (a == NULL)
		return err_nomem();
	for (size_t i = 0; i < env->kr->n; i++) {
		const kr_key *ki = env->kr->keys[i];
		json_t *jwk;

		if ((k != NULL && ki != k) || !may_use(env, peer, ki))
			continue;
		if (alg == JWA_NONE) {
			json_array_append(a, ki->jwk);
			continue;
		}
		if (!(ki->algs & JWA_BIT(alg))) {
			json_decref(a);
			return err_set(P11J_E_UNSUPPORTED_ALG, "%s does not fit key '%s'%s",
				       jwa_name(alg), ki->name, k ? "" : "; name one key with 'key'");
		}
		jwk = json_copy(ki->jwk);
		if (jwk == NULL || json_object_set_new(jwk, "alg", json_string(jwa_name(alg))) < 0 ||
		    json_array_append_new(a, jwk) < 0) {
			json_decref(a);
			return err_nomem();
		}
	}
	if (json_object_set_new(resp, "keys", a) < 0)
		return err_nomem();
	return 0;
}

static int algs_text(const kr_key *k, char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	for (int a = JWA_NONE + 1; a < JWA__COUNT; a++)
		if (k->algs & JWA_BIT(a))
			o += (size_t)snprintf(buf + o, o < len ? len - o : 0, "%s%s", o ? ", " : "",
					      jwa_name((jwa_alg)a));
	return 0;
}

static int pick_alg(const kr_key *k, const json_t *req, const json_t *header, jwa_alg *ret)
{
	const json_t *ra = json_object_get(req, "alg");
	const json_t *ha = header ? json_object_get(header, "alg") : NULL;
	const char *name;
	char algs[128];
	jwa_alg alg;

	if (ra != NULL && !json_is_string(ra))
		return err_set(P11J_E_BAD_REQUEST, "field 'alg' must be a string");
	if (ha != NULL && !json_is_string(ha))
		return err_set(P11J_E_BAD_REQUEST, "header 'alg' must be a string");
	if (ra != NULL && ha != NULL && strcmp(json_string_value(ra), json_string_value(ha)) != 0)
		return err_set(P11J_E_BAD_REQUEST, "'alg' (%.16s) and header 'alg' (%.16s) differ",
			       json_string_value(ra), json_string_value(ha));
	if (ra == NULL)
		ra = ha;
	if (ra == NULL) {
		*ret = k->default_alg;
		return 0;
	}
	name = json_string_value(ra);
	alg = jwa_from_name(name);
	algs_text(k, algs, sizeof(algs));
	if (alg == JWA_NONE)
		return err_set(P11J_E_UNSUPPORTED_ALG, "alg '%.32s' is not supported; key '%s' signs %s",
			       name, k->name, algs);
	if (!(k->algs & JWA_BIT(alg)))
		return err_set(P11J_E_UNSUPPORTED_ALG, "%s does not fit key '%s', which signs %s",
			       name, k->name, algs);
	*ret = alg;
	return 0;
}

enum { INC_X5T = 1, INC_X5T_S256 = 2, INC_X5C = 4 };

static int parse_include(const kr_key *k, const json_t *req, unsigned *ret)
{
	const json_t *inc = json_object_get(req, "include"), *v;
	unsigned mask = 0;
	size_t i;

	*ret = 0;
	if (inc == NULL)
		return 0;
	if (!json_is_array(inc))
		return err_set(P11J_E_BAD_REQUEST,
			       "field 'include' must be an array of \"x5t\", \"x5t#S256\", \"x5c\"");
	if (json_array_size(inc) > 3)
		return err_set(P11J_E_BAD_REQUEST, "field 'include' has %zu entries; at most 3",
			       json_array_size(inc));
	json_array_foreach(inc, i, v) {
		const char *s = json_string_value(v);
		unsigned bit;

		if (s == NULL)
			return err_set(P11J_E_BAD_REQUEST, "'include' entries must be strings");
		if (strcmp(s, "x5t") == 0)
			bit = INC_X5T;
		else if (strcmp(s, "x5t#S256") == 0)
			bit = INC_X5T_S256;
		else if (strcmp(s, "x5c") == 0)
			bit = INC_X5C;
		else
			return err_set(P11J_E_BAD_REQUEST,
				       "unknown 'include' entry '%.32s' (x5t, x5t#S256, x5c)", s);
		if (mask & bit)
			return err_set(P11J_E_BAD_REQUEST, "'include' names '%s' twice", s);
		mask |= bit;
	}
	if (mask != 0 && k->cert == NULL)
		return err_set(P11J_E_BAD_REQUEST, "key '%s' has no certificate for %s", k->name,
			       (mask & INC_X5T) ? "x5t" : (mask & INC_X5T_S256) ? "x5t#S256" : "x5c");
	*ret = mask;
	return 0;
}

static int parse_lifetime(const json_t *req, int64_t *ret)
{
	const json_t *v = json_object_get(req, "lifetime");
	json_int_t n;

	*ret = PROTO_DEFAULT_LIFETIME;
	if (v == NULL)
		return 0;
	if (!json_is_integer(v))
		return err_set(P11J_E_BAD_REQUEST,
			       "field 'lifetime' must be an integer number of seconds");
	n = json_integer_value(v);
	if (n < 1 || n > PROTO_MAX_LIFETIME)
		return err_set(P11J_E_BAD_REQUEST, "field 'lifetime' must be 1 to %d seconds, not %lld",
			       PROTO_MAX_LIFETIME, (long long)n);
	*ret = n;
	return 0;
}

static int set(json_t *o, const char *k, json_t *v_new)
{
	if (v_new == NULL || json_object_set_new(o, k, v_new) < 0)
		return err_nomem();
	return 0;
}

static int build_header(const kr_key *k, jwa_alg alg, const json_t *caller, unsigned inc,
			json_t **ret)
{
	json_t *h = json_object(), *v;
	const char *name;
	int r;

	if (h == NULL)
		return err_nomem();
	/* alg, typ, kid first, then the caller's members in their order */
	if ((r = set(h, "alg", json_string(jwa_name(alg)))) < 0)
		goto fail;
	v = caller ? json_object_get(caller, "typ") : NULL;
	if ((r = set(h, "typ", v ? json_incref(v) : json_string("JWT"))) < 0)
		goto fail;
	v = caller ? json_object_get(caller, "kid") : NULL;
	if ((r = set(h, "kid", v ? json_incref(v) : json_string(k->kid))) < 0)
		goto fail;
	if (caller != NULL)
		json_object_foreach((json_t *)caller, name, v)
			if (json_object_get(h, name) == NULL && (r = set(h, name, json_incref(v))) < 0)
				goto fail;
	if ((inc & INC_X5T) && (r = set(h, "x5t", json_string(k->x5t))) < 0)
		goto fail;
	if ((inc & INC_X5T_S256) && (r = set(h, "x5t#S256", json_string(k->x5t_s256))) < 0)
		goto fail;
	if ((inc & INC_X5C) && (r = set(h, "x5c", json_pack("[s]", k->x5c))) < 0)
		goto fail;
	*ret = h;
	return 0;
fail:
	json_decref(h);
	return r;
}

static int build_claims(const json_t *caller, int64_t lifetime, json_t **ret)
{
	json_t *c = caller ? json_copy((json_t *)caller) : json_object();
	const json_t *iat;
	int64_t now = util_now(), base = now;
	char jti[37];
	int r;

	if (c == NULL)
		return err_nomem();
	iat = json_object_get(c, "iat");
	if (iat == NULL) {
		if ((r = set(c, "iat", json_integer(now))) < 0)
			goto fail;
	} else if (json_is_integer(iat)) {
		base = json_integer_value(iat);
	}
	if (json_object_get(c, "exp") == NULL) {
		int64_t exp;

		if (__builtin_add_overflow(base, lifetime, &exp)) {
			r = err_set(P11J_E_BAD_REQUEST, "claim 'iat' is too large");
			goto fail;
		}
		if ((r = set(c, "exp", json_integer(exp))) < 0)
			goto fail;
	}
	if (json_object_get(c, "jti") == NULL) {
		if ((r = util_uuid4(jti)) < 0 || (r = set(c, "jti", json_string(jti))) < 0)
			goto fail;
	}
	*ret = c;
	return 0;
fail:
	json_decref(c);
	return r;
}

static int op_sign(const proto_env *env, const proto_peer *peer, const json_t *req,
		   json_t *resp)
{
	static const char *const allowed[] = { "key", "alg", "header", "claims", "lifetime",
					       "include", NULL };
	const json_t *caller_h = json_object_get(req, "header");
	const json_t *caller_c = json_object_get(req, "claims");
	const kr_key *k = NULL;
	json_t *h = NULL, *c = NULL, *v;
	char *jwt = NULL, *hbuf = NULL, *cbuf = NULL;
	const char *hj;
	size_t hl, cl;
	int64_t lifetime;
	unsigned inc = 0;
	jwa_alg alg = JWA_NONE;
	int r;

	if ((r = check_fields(req, allowed)) < 0 || (r = get_key(env, peer, req, true, &k)) < 0)
		return r;
	if (caller_h != NULL && !json_is_object(caller_h))
		return err_set(P11J_E_BAD_REQUEST, "field 'header' must be a JSON object");
	if (caller_c != NULL && !json_is_object(caller_c))
		return err_set(P11J_E_BAD_REQUEST, "field 'claims' must be a JSON object");
	if ((r = pick_alg(k, req, caller_h, &alg)) < 0 || (r = parse_lifetime(req, &lifetime)) < 0 ||
	    (r = parse_include(k, req, &inc)) < 0)
		return r;
	/* the policy sees the claims as they will be signed (iat, exp filled) */
	if ((r = build_claims(caller_c, lifetime, &c)) < 0 ||
	    (r = pol_check_sign(k->pol, k->name, k->algs, alg, caller_h, lifetime, c, util_now(),
				&inc)) < 0)
		goto out;
	if (inc != 0 && k->cert == NULL) {
		r = err_set(P11J_E_BAD_REQUEST, "key '%s' has no certificate", k->name);
		goto out;
	}
	/* the usual request (no header members, no certificate) gets the
	 * key's pre-serialised header */
	if (caller_h == NULL && inc == 0 && k->hdr_json[alg] != NULL) {
		hj = k->hdr_json[alg];
		hl = k->hdr_len[alg];
	} else {
		if ((r = build_header(k, alg, caller_h, inc, &h)) < 0 ||
		    (r = jsonf_dumps(h, &hbuf, &hl)) < 0)
			goto out;
		hj = hbuf;
	}
	if ((r = jsonf_dumps(c, &cbuf, &cl)) < 0)
		goto out;
	r = jws_sign_compact_raw(hj, hl, cbuf, cl, alg, k->sign, k->sign_ctx, k->sigmax, &jwt);
	if (r < 0)
		goto out;
	if ((r = set(resp, "jwt", json_stringn_nocheck(jwt, strlen(jwt)))) < 0 ||
	    (r = set(resp, "alg", json_string_nocheck(jwa_name(alg)))) < 0)
		goto out;
	v = h != NULL ? json_incref(json_object_get(h, "kid")) : json_string(k->kid);
	if ((r = set(resp, "kid", v)) < 0)
		goto out;
	if ((r = set(resp, "iat", json_incref(json_object_get(c, "iat")))) < 0 ||
	    (r = set(resp, "exp", json_incref(json_object_get(c, "exp")))) < 0 ||
	    (r = set(resp, "jti", json_incref(json_object_get(c, "jti")))) < 0)
		goto out;
	r = 0;
out:
	freezero_str(jwt);
	freezero_str(cbuf);
	free(hbuf);
	json_decref(h);
	json_decref(c);
	return r;
}

/* An optional string field of a request: NULL when absent. */
static int opt_string(const json_t *req, const char *name, const char **ret, size_t *ret_len)
{
	const json_t *v = json_object_get(req, name);

	*ret = NULL;
	*ret_len = 0;
	if (v == NULL)
		return 0;
	if (!json_is_string(v))
		return err_set(P11J_E_BAD_REQUEST, "field '%s' must be a string", name);
	*ret = json_string_value(v);
	*ret_len = json_string_length(v);
	/* a NUL inside would cut the claim short */
	if (strlen(*ret) != *ret_len)
		return err_set(P11J_E_BAD_REQUEST, "field '%s' holds a NUL character", name);
	return 0;
}

/* Members a proof request may not carry, with why: the agent makes the
 * header itself (typ, alg, and the key's own public jwk: a client cannot
 * bind a proof to another key), and it never takes the access token. */
static int dpop_refused_field(const json_t *req)
{
	static const char *const hdr[] = { "jwk", "header", "typ", "kid", "jku", "x5c", NULL };
	static const char *const tok[] = { "access_token", "token", "claims", NULL };

	for (const char *const *f = hdr; *f != NULL; f++)
		if (json_object_get(req, *f) != NULL)
			return err_set(P11J_E_BAD_REQUEST, "field '%s' cannot be set in a DPoP proof: "
				       "the agent writes the header, with the key's own public jwk", *f);
	for (const char *const *f = tok; *f != NULL; f++)
		if (json_object_get(req, *f) != NULL)
			return err_set(P11J_E_BAD_REQUEST, "field '%s' is not part of a dpop request; "
				       "send 'ath' (base64url SHA-256 of the access token), never the "
				       "token", *f);
	return 0;
}

/* "dpop": an RFC 9449 proof JWT for the key, on the same path as "sign"
 * (a header serialised once per key and alg, claims printed by jsonfast,
 * one jws_sign_compact_raw). */
static int op_dpop(const proto_env *env, const proto_peer *peer, const json_t *req,
		   json_t *resp)
{
	static const char *const allowed[] = { "key", "alg", "htm", "htu", "nonce", "ath", NULL };
	const char *htm, *htu, *nonce, *ath;
	size_t htm_len, htu_len, nonce_len, ath_len;
	const kr_key *k = NULL;
	char jti[DPOP_JTI_LEN + 1];
	char *nhtu = NULL, *cbuf = NULL, *jwt = NULL;
	dpop_claims_in in = { 0 };
	jwa_alg alg = JWA_NONE;
	size_t cl;
	int r;

	if ((r = dpop_refused_field(req)) < 0 || (r = check_fields(req, allowed)) < 0 ||
	    (r = get_key(env, peer, req, true, &k)) < 0 || (r = pick_alg(k, req, NULL, &alg)) < 0)
		return r;
	if ((r = opt_string(req, "htm", &htm, &htm_len)) < 0 ||
	    (r = opt_string(req, "htu", &htu, &htu_len)) < 0 ||
	    (r = opt_string(req, "nonce", &nonce, &nonce_len)) < 0 ||
	    (r = opt_string(req, "ath", &ath, &ath_len)) < 0)
		return r;
	if (htm == NULL)
		return err_set(P11J_E_BAD_REQUEST, "missing field 'htm' (the HTTP method, e.g. POST)");
	if (htu == NULL)
		return err_set(P11J_E_BAD_REQUEST, "missing field 'htu' (the request's URL)");
	if ((r = dpop_htm_check(htm, htm_len)) < 0 ||
	    (nonce != NULL && (r = dpop_nonce_check(nonce, nonce_len)) < 0) ||
	    (ath != NULL && (r = dpop_ath_check(ath, ath_len)) < 0))
		return r;
	if ((r = dpop_htu_normalise(htu, htu_len, &nhtu)) < 0)
		return r;
	if ((r = pol_check_dpop(k->pol, env->dpop_default, k->name, k->algs, alg)) < 0 ||
	    (r = pol_check_state(k->pol, k->name, util_now())) < 0)
		goto out;
	if (k->dpop_hdr[alg] == NULL) {
		r = err_set(P11J_E_INTERNAL, "key '%s' has no DPoP header for %s", k->name,
			    jwa_name(alg));
		goto out;
	}
	if ((r = dpop_jti(jti)) < 0)
		goto out;
	in = (dpop_claims_in){ .jti = jti, .htm = htm, .htu = nhtu, .iat = util_now(),
			       .nonce = nonce, .ath = ath };
	if ((r = dpop_claims(&in, &cbuf, &cl)) < 0)
		goto out;
	r = jws_sign_compact_raw(k->dpop_hdr[alg], k->dpop_hdr_len[alg], cbuf, cl, alg, k->sign,
				 k->sign_ctx, k->sigmax, &jwt);
	if (r < 0)
		goto out;
	if ((r = set(resp, "jwt", json_stringn_nocheck(jwt, strlen(jwt)))) < 0 ||
	    (r = set(resp, "alg", json_string_nocheck(jwa_name(alg)))) < 0 ||
	    /* ASCII the agent made or checked: no UTF-8 scan */
	    (r = set(resp, "jkt", json_string_nocheck(k->jkt))) < 0 ||
	    (r = set(resp, "htu", json_string_nocheck(nhtu))) < 0 ||
	    (r = set(resp, "jti", json_string_nocheck(jti))) < 0 ||
	    (r = set(resp, "iat", json_integer(in.iat))) < 0)
		goto out;
	r = 0;
out:
	freezero_str(jwt);
	freezero_str(cbuf);
	free(nhtu);
	return r;
}

/* The agent's own uid and root only: P11J_E_FORBIDDEN "only uid U and root
 * may WHAT" for anyone else. */
static int owner_only(const proto_env *env, const proto_peer *peer, const char *what)
{
	if (peer != NULL && peer->uid != env->owner_uid && peer->uid != 0)
		return err_set(P11J_E_FORBIDDEN, "only uid %u and root may %s",
			       (unsigned)env->owner_uid, what);
	return 0;
}

/* login / lock: even if other uids may sign some day (per-key policy), only
 * the agent's own uid and root may change its login state. The PIN is in a
 * JSON string, which the agent's Jansson allocator wipes when freed. */
static int pin_op_prepare(const proto_env *env, const proto_peer *peer, const json_t *req,
			  const char *const *allowed, const char **ret_token)
{
	const json_t *tv = json_object_get(req, "token");
	int r;

	if ((r = check_fields(req, allowed)) < 0)
		return r;
	if ((r = owner_only(env, peer, "log the agent in or out")) < 0)
		return r;
	if (tv != NULL && !json_is_string(tv))
		return err_set(P11J_E_BAD_REQUEST, "field 'token' must be a PKCS#11 URI string");
	*ret_token = tv ? json_string_value(tv) : NULL;
	return 0;
}

static int op_login(const proto_env *env, const proto_peer *peer, const json_t *req, json_t *resp)
{
	static const char *const allowed[] = { "pin", "token", NULL };
	const json_t *pv = json_object_get(req, "pin");
	const char *token = NULL;
	int r;

	if (env->login == NULL)
		return err_set(P11J_E_UNKNOWN_OP, "this agent has no token to log in to");
	if ((r = pin_op_prepare(env, peer, req, allowed, &token)) < 0)
		return r;
	if (pv != NULL && (!json_is_string(pv) || json_string_length(pv) == 0))
		return err_set(P11J_E_BAD_REQUEST, "field 'pin' must be a non-empty string");
	return env->login(env->pin_ud, token, pv ? json_string_value(pv) : NULL,
			  pv ? json_string_length(pv) : 0, resp);
}

static int op_lock(const proto_env *env, const proto_peer *peer, const json_t *req, json_t *resp)
{
	static const char *const allowed[] = { "token", NULL };
	const char *token = NULL;
	int r;

	if (env->lock == NULL)
		return err_set(P11J_E_UNKNOWN_OP, "this agent has no token to lock");
	if ((r = pin_op_prepare(env, peer, req, allowed, &token)) < 0)
		return r;
	return env->lock(env->pin_ud, token, resp);
}

/* "status": who serves what, for how long, and how it went (owner and
 * root only). The server's counters and the token states come from
 * env->status. */
static int op_status(const proto_env *env, const proto_peer *peer, const json_t *req,
		     json_t *resp)
{
	static const char *const allowed[] = { NULL };
	int r;

	if ((r = check_fields(req, allowed)) < 0)
		return r;
	if ((r = owner_only(env, peer, "ask for the status")) < 0)
		return r;
	if ((r = set(resp, "version", json_string(env->version ? env->version : ""))) < 0 ||
	    (r = set(resp, "protocol", json_integer(PROTO_VERSION))) < 0 ||
	    (r = set(resp, "keys", json_integer((json_int_t)(env->kr ? env->kr->n : 0)))) < 0)
		return r;
	return env->status ? env->status(env->status_ud, resp) : 0;
}

/* "reload": list the tokens' keys again (and re-read --config), owner and
 * root only; env->reload says what changed. */
static int op_reload(const proto_env *env, const proto_peer *peer, const json_t *req,
		     json_t *resp)
{
	static const char *const allowed[] = { NULL };
	int r;

	if ((r = check_fields(req, allowed)) < 0)
		return r;
	if ((r = owner_only(env, peer, "reload the agent")) < 0)
		return r;
	if (env->reload == NULL)
		return err_set(P11J_E_UNKNOWN_OP, "this agent cannot reload");
	return env->reload(env->kr_ud, resp);
}

void proto_audit_clear(proto_audit *a)
{
	if (a == NULL)
		return;
	json_decref(a->fields);
	a->fields = NULL;
	freezero_buf(a->text, a->text_len);
	a->text = NULL;
	a->text_len = 0;
	a->result = 0;
}

/* A caller's string for the audit record, cut to max bytes (at a UTF-8
 * boundary), or NULL when v is not a string. */
static json_t *audit_str(const json_t *v, size_t max)
{
	const char *s = json_string_value(v);
	size_t n;

	if (s == NULL)
		return NULL;
	n = json_string_length(v);
	if (n > max) {
		n = max;
		while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
	}
	return json_stringn(s, n);
}

static void audit_put(json_t *f, const char *k, json_t *v_new)
{
	if (v_new != NULL)
		json_object_set_new(f, k, v_new);
}

/* A dpop request's record: key, alg, jkt, htm, htu (as signed: the
 * normalised URL), jti and iat of a proof that was made; never ath, the
 * nonce or the proof. */
static void audit_dpop(const proto_env *env, const json_t *req, const json_t *resp, json_t *f)
{
	const json_t *kv = json_object_get(req, "key"), *v;
	const kr_key *k = NULL;

	if (json_is_string(kv) && env->kr != NULL)
		k = kr_find(env->kr, json_string_value(kv));
	audit_put(f, "key", audit_str(kv, 128));
	v = resp ? json_object_get(resp, "alg") : NULL;
	audit_put(f, "alg", audit_str(v ? v : json_object_get(req, "alg"), 32));
	if (k != NULL)
		audit_put(f, "jkt", json_string(k->jkt));
	audit_put(f, "htm", audit_str(json_object_get(req, "htm"), 32));
	v = resp ? json_object_get(resp, "htu") : NULL;
	audit_put(f, "htu", audit_str(v ? v : json_object_get(req, "htu"), 512));
	if (resp != NULL) {
		audit_put(f, "jti", audit_str(json_object_get(resp, "jti"), 64));
		v = json_object_get(resp, "iat");
		if (json_is_integer(v))
			audit_put(f, "iat", json_integer(json_integer_value(v)));
	}
}

/* The audit record of a sign, dpop, login, lock or reload request: what was asked and,
 * for a signature that was made, what was issued (alg, kid, exp and jti
 * from the answer). Only named claims, cut short: never the JWT, never the
 * PIN (nor the token URI, which may carry a pin-value). */
static void audit_fill(const proto_env *env, const json_t *req, const json_t *resp, int result,
		       proto_audit *a)
{
	const char *opname = json_string_value(json_object_get(req, "op"));
	const json_t *claims, *hdr, *kv, *v;
	const kr_key *k = NULL;
	json_t *f;

	if (a == NULL)
		return;
	a->result = result;
	a->fields = NULL;
	if (a->no_fields || opname == NULL ||
	    (strcmp(opname, "sign") != 0 && strcmp(opname, "dpop") != 0 &&
	     strcmp(opname, "login") != 0 && strcmp(opname, "lock") != 0 &&
	     strcmp(opname, "reload") != 0))
		return;
	if ((f = json_object()) == NULL)
		return;
	audit_put(f, "op", json_string(opname));
	if (strcmp(opname, "dpop") == 0)
		audit_dpop(env, req, resp, f);
	if (strcmp(opname, "sign") == 0) {
		kv = json_object_get(req, "key");
		claims = json_object_get(req, "claims");
		hdr = json_object_get(req, "header");
		if (!json_is_object(claims))
			claims = NULL;
		if (!json_is_object(hdr))
			hdr = NULL;
		if (json_is_string(kv) && env->kr != NULL)
			k = kr_find(env->kr, json_string_value(kv));
		audit_put(f, "key", audit_str(kv, 128));
		v = resp ? json_object_get(resp, "alg") : NULL;
		if (v == NULL)
			v = json_object_get(req, "alg");
		if (v == NULL && hdr != NULL)
			v = json_object_get(hdr, "alg");
		audit_put(f, "alg", audit_str(v, 32));
		v = resp ? json_object_get(resp, "kid") : NULL;
		if (v == NULL && hdr != NULL)
			v = json_object_get(hdr, "kid");
		if (v == NULL && k != NULL)
			audit_put(f, "kid", json_string(k->kid));
		else
			audit_put(f, "kid", audit_str(v, 128));
		audit_put(f, "iss", audit_str(json_object_get(claims, "iss"), 256));
		audit_put(f, "sub", audit_str(json_object_get(claims, "sub"), 256));
		v = json_object_get(claims, "aud");
		if (json_is_array(v)) {
			json_t *arr = json_array();
			const json_t *e;
			size_t i;

			json_array_foreach(v, i, e)
				if (i < 16 && arr != NULL)
					json_array_append_new(arr, audit_str(e, 256));
			audit_put(f, "aud", arr);
		} else {
			audit_put(f, "aud", audit_str(v, 256));
		}
		v = resp ? json_object_get(resp, "jti") : NULL;
		audit_put(f, "jti", audit_str(v ? v : json_object_get(claims, "jti"), 128));
		v = resp ? json_object_get(resp, "exp") : NULL;
		if (v == NULL)
			v = json_object_get(claims, "exp");
		if (json_is_integer(v))
			audit_put(f, "exp", json_integer(json_integer_value(v)));
	}
	a->fields = f;
}

static int dispatch(const proto_env *env, const proto_peer *peer, const char *opname,
		    const json_t *req, json_t *resp)
{
	if (strcmp(opname, "hello") == 0)
		return op_hello(env, req, resp);
	if (strcmp(opname, "keys") == 0)
		return op_keys(env, peer, req, resp);
	if (strcmp(opname, "jwks") == 0)
		return op_jwks(env, peer, req, resp);
	if (strcmp(opname, "sign") == 0)
		return op_sign(env, peer, req, resp);
	if (strcmp(opname, "dpop") == 0)
		return op_dpop(env, peer, req, resp);
	if (strcmp(opname, "login") == 0)
		return op_login(env, peer, req, resp);
	if (strcmp(opname, "lock") == 0)
		return op_lock(env, peer, req, resp);
	if (strcmp(opname, "status") == 0)
		return op_status(env, peer, req, resp);
	if (strcmp(opname, "reload") == 0)
		return op_reload(env, peer, req, resp);
	return err_set(P11J_E_UNKNOWN_OP, "unknown op '%.32s' (hello, keys, jwks, sign, dpop, "
		       "login, lock, status, reload)", opname);
}

/* An unknown key named by sign, dpop or jwks may be new on the token: the
 * agent may look again (env->unknown_key, rate-limited). Not for role
 * names (@active), which the CLI resolves, nor for names no token label
 * could be. */
static bool rescan_may_help(const proto_env *env, const char *opname, const json_t *req)
{
	const char *name = json_string_value(json_object_get(req, "key"));

	return env->unknown_key != NULL && name != NULL && name[0] != '\0' && name[0] != '@' &&
	       strlen(name) <= 128 &&
	       (strcmp(opname, "sign") == 0 || strcmp(opname, "dpop") == 0 ||
		strcmp(opname, "jwks") == 0);
}

int proto_handle(const proto_env *env, const proto_peer *peer, const char *line, size_t len,
		 char **ret_resp, size_t *ret_len)
{
	return proto_handle_ex(env, peer, line, len, NULL, ret_resp, ret_len);
}

int proto_handle_ex(const proto_env *env, const proto_peer *peer, const char *line, size_t len,
		    proto_audit *audit, char **ret_resp, size_t *ret_len)
{
	json_t *req = NULL, *resp = NULL;
	const json_t *id = NULL, *op;
	json_error_t jerr;
	const char *opname;
	proto_env cur;
	void *ref = NULL;
	bool forbidden;
	int r;

	err_clear();
	if (env->acquire != NULL) {
		cur = *env;
		cur.kr = env->acquire(env->kr_ud, &ref);
		cur.pin_ud = ref;
		env = &cur;
	}
	/* Who asks is checked first: a stranger learns nothing but "forbidden". */
	forbidden = peer != NULL && !kr_any_usable(env->kr, env->owner_uid, peer->uid, peer->gid);
	if (len > PROTO_MAX_LINE) {
		r = err_set(P11J_E_REQUEST_TOO_LARGE, "request line over %d bytes", PROTO_MAX_LINE);
		goto error;
	}
	if (!forbidden) {
		r = proto_fast_handle(env, peer, line, len, audit, ret_resp, ret_len);
		if (r != PROTO_FAST_DECLINED) {
			if (ref != NULL)
				env->release(ref);
			return r;
		}
	}
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (json_is_object(req))
		id = json_object_get(req, "id");
	if (forbidden) {
		r = err_set(P11J_E_FORBIDDEN, "uid %u may not use this agent (it serves uid %u)",
			    (unsigned)peer->uid, (unsigned)env->owner_uid);
		goto error;
	}
	if (req == NULL) {
		r = err_set(P11J_E_BAD_REQUEST, "request is not valid JSON: %s (column %d)",
			    jerr.text, jerr.column);
		goto error;
	}
	if (!json_is_object(req)) {
		r = err_set(P11J_E_BAD_REQUEST, "request must be a JSON object");
		goto error;
	}
	op = json_object_get(req, "op");
	if (op == NULL) {
		r = err_set(P11J_E_BAD_REQUEST, "missing field 'op'");
		goto error;
	}
	if (!json_is_string(op)) {
		r = err_set(P11J_E_BAD_REQUEST, "field 'op' must be a string");
		goto error;
	}
	opname = json_string_value(op);
	resp = json_pack("{s:O?,s:b}", "id", id, "ok", 1);
	if (resp == NULL) {
		r = err_nomem();
		goto error;
	}
	r = dispatch(env, peer, opname, req, resp);
	if (r == P11J_E_UNKNOWN_KEY && rescan_may_help(env, opname, req) &&
	    env->unknown_key(env->kr_ud, json_string_value(json_object_get(req, "key"))) == 1) {
		/* the key is new on the token: answer from the generation that
		 * has it */
		char saved[512];

		snprintf(saved, sizeof(saved), "%s", err_msg());
		if (ref != NULL) {
			env->release(ref);
			ref = NULL;
			cur.kr = env->acquire(env->kr_ud, &ref);
			cur.pin_ud = ref;
		}
		json_decref(resp);
		resp = json_pack("{s:O?,s:b}", "id", id, "ok", 1);
		if (resp == NULL) {
			r = err_nomem();
			goto error;
		}
		err_clear();
		r = dispatch(env, peer, opname, req, resp);
		if (r == P11J_E_UNKNOWN_KEY && strstr(err_msg(), "no key named") != NULL)
			err_set(r, "%s", saved);
	}
	if (r < 0)
		goto error;
	audit_fill(env, req, resp, 0, audit);
	json_decref(req);
	if (ref != NULL)
		env->release(ref);
	return proto_finish(resp, ret_resp, ret_len);
error:
	json_decref(resp);
	audit_fill(env, req, NULL, r, audit);
	r = proto_error_line(id, r, err_msg(), ret_resp, ret_len);
	json_decref(req);
	if (ref != NULL)
		env->release(ref);
	return r;
}
