/* SPDX-License-Identifier: MIT */
#include "agent/keyring.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/dpop.h"
#include "jose/jwk.h"

#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>

static void kr_key_free(kr_key *k)
{
	if (k == NULL)
		return;
	free(k->name);
	free(k->uri);
	free(k->kid);
	free(k->jkt);
	EVP_PKEY_free(k->pub);
	free(k->cert);
	json_decref(k->jwk);
	json_decref(k->info);
	free(k->x5t);
	free(k->x5t_s256);
	free(k->x5c);
	for (int a = 0; a < JWA__COUNT; a++) {
		free(k->hdr_json[a]);
		free(k->dpop_hdr[a]);
	}
	free(k);
}

/* (Re)build the pre-serialised default headers, after the kid is known,
 * and the DPoP proof headers. */
static int kr_key_headers(kr_key *k)
{
	int r;

	for (int a = JWA_NONE + 1; a < JWA__COUNT; a++) {
		json_t *h;
		char *t = NULL;

		free(k->hdr_json[a]);
		k->hdr_json[a] = NULL;
		k->hdr_len[a] = 0;
		free(k->dpop_hdr[a]);
		k->dpop_hdr[a] = NULL;
		k->dpop_hdr_len[a] = 0;
		if (!(k->algs & JWA_BIT(a)))
			continue;
		if ((r = dpop_header((jwa_alg)a, k->jwk, &k->dpop_hdr[a], &k->dpop_hdr_len[a])) < 0)
			return r;
		h = json_pack("{s:s,s:s,s:s}", "alg", jwa_name((jwa_alg)a), "typ", "JWT", "kid",
			      k->kid);
		if (h != NULL)
			t = json_dumps(h, JSON_COMPACT);
		json_decref(h);
		if (t == NULL)
			return err_nomem();
		k->hdr_json[a] = t;
		k->hdr_len[a] = strlen(t);
	}
	return 0;
}

/* The names of the algs in mask, in JWA order; NULL when out of memory. */
static json_t *algs_array(unsigned mask)
{
	json_t *algs = json_array();

	for (int a = JWA_NONE + 1; algs != NULL && a < JWA__COUNT; a++)
		if ((mask & JWA_BIT(a)) &&
		    json_array_append_new(algs, json_string(jwa_name((jwa_alg)a))) < 0) {
			json_decref(algs);
			algs = NULL;
		}
	return algs;
}

static int kr_key_info(kr_key *k)
{
	json_t *algs = algs_array(k->algs), *o;
	const char *kty = k->kind == KEYKIND_RSA ? "RSA" : k->kind == KEYKIND_ED25519 ? "OKP" : "EC";

	if (algs == NULL)
		return err_nomem();
	o = json_pack("{s:s,s:s,s:o,s:s,s:s,s:s}", "name", k->name, "alg",
		      jwa_name(k->default_alg), "algs", algs, "kid", k->kid, "jkt", k->jkt, "kty",
		      kty);
	if (o == NULL)
		return err_nomem();
	if (k->kind == KEYKIND_RSA)
		json_object_set_new(o, "bits", json_integer(EVP_PKEY_get_bits(k->pub)));
	else
		json_object_set(o, "crv", json_object_get(k->jwk, "crv"));
	json_object_set_new(o, "uri", json_string(k->uri ? k->uri : ""));
	json_object_set_new(o, "has_cert", json_boolean(k->cert != NULL));
	json_object_set_new(o, "state", json_string(pol_state_name(POL_STATE_ACTIVE)));
	k->info = o;
	return 0;
}

int kr_add(keyring *kr, const char *name, const char *uri, EVP_PKEY *pub, const uint8_t *cert,
	   size_t cert_len, unsigned algs, jws_sign_fn sign, void *sign_ctx)
{
	kr_key *k = NULL, **nk;
	int r;

	if (kr_find(kr, name) != NULL)
		return err_set(P11J_E_BAD_REQUEST, "two keys are named '%s'; names must be unique",
			       name);
	k = calloc(1, sizeof(*k));
	if (k == NULL)
		return err_nomem();
	k->kind = jwa_keykind_of(pub);
	if (k->kind == KEYKIND_UNKNOWN) {
		r = err_set(P11J_E_UNSUPPORTED_ALG, "key '%s' is of an unsupported type", name);
		goto fail;
	}
	k->algs = jwa_algs_for_kind(k->kind) & (algs ? algs : ~0u);
	k->default_alg = jwa_default_for_kind(k->kind);
	if (!(k->algs & JWA_BIT(k->default_alg))) {
		for (int a = JWA_NONE + 1; a < JWA__COUNT; a++)
			if (k->algs & JWA_BIT(a)) {
				k->default_alg = (jwa_alg)a;
				break;
			}
	}
	if (k->algs == 0) {
		r = err_set(P11J_E_UNSUPPORTED_ALG, "key '%s': the token offers no usable mechanism",
			    name);
		goto fail;
	}
	k->name = strdup(name);
	k->uri = uri ? strdup(uri) : NULL;
	if (k->name == NULL || (uri && k->uri == NULL)) {
		r = err_nomem();
		goto fail;
	}
	EVP_PKEY_up_ref(pub);
	k->pub = pub;
	k->sigmax = jwa_max_sig_len(pub);
	k->sign = sign;
	k->sign_ctx = sign_ctx;
	if (cert != NULL && cert_len > 0) {
		k->cert = malloc(cert_len);
		if (k->cert == NULL) {
			r = err_nomem();
			goto fail;
		}
		memcpy(k->cert, cert, cert_len);
		k->cert_len = cert_len;
		if ((r = jwk_x5t(cert, cert_len, &k->x5t)) < 0 ||
		    (r = jwk_x5t_s256(cert, cert_len, &k->x5t_s256)) < 0 ||
		    (r = jwk_x5c_entry(cert, cert_len, &k->x5c)) < 0)
			goto fail;
	}
	if ((r = jwk_from_pkey(pub, &k->jwk)) < 0 || (r = jwk_thumbprint(k->jwk, &k->kid)) < 0)
		goto fail;
	if ((k->jkt = strdup(k->kid)) == NULL) {
		r = err_nomem();
		goto fail;
	}
	if (json_object_set_new(k->jwk, "kid", json_string(k->kid)) < 0 ||
	    json_object_set_new(k->jwk, "alg", json_string(jwa_name(k->default_alg))) < 0 ||
	    json_object_set_new(k->jwk, "use", json_string("sig")) < 0) {
		r = err_nomem();
		goto fail;
	}
	if ((r = kr_key_info(k)) < 0 || (r = kr_key_headers(k)) < 0)
		goto fail;
	nk = realloc(kr->keys, (kr->n + 1) * sizeof(*nk));
	if (nk == NULL) {
		r = err_nomem();
		goto fail;
	}
	kr->keys = nk;
	kr->keys[kr->n++] = k;
	return 0;
fail:
	kr_key_free(k);
	return r;
}

static int kr_cmp_name(const void *a, const void *b)
{
	return strcmp((*(kr_key *const *)a)->name, (*(kr_key *const *)b)->name);
}

static int kr_set_id(kr_key *k, const tok_key *tk)
{
	size_t id_len = 0;
	const uint8_t *id = tok_key_id(tk, &id_len);
	char *hex = NULL;
	int r;

	if ((r = util_hex(id, id_len, &hex)) < 0)
		return r;
	r = json_object_set_new(k->info, "id_hex", json_string(hex));
	free(hex);
	return r < 0 ? err_nomem() : 0;
}

/* A token key a rescan found gone is refused before the token is asked:
 * its object is destroyed, and C_Sign on a stale handle would make the
 * token layer recover the whole token under every other request. */
static int kr_tok_sign(void *signer, jwa_alg alg, const uint8_t *in, size_t inlen,
		       uint8_t *sig, size_t *siglen)
{
	tok_signer *ts = signer;

	if (ts != NULL && ts->key != NULL && tok_key_gone(ts->key))
		return err_set(P11J_E_UNKNOWN_KEY, "key '%s' is no longer on token '%s'",
			       tok_key_name(ts->key), tok_label(ts->ctx));
	return tok_signer_fn(signer, alg, in, inlen, sig, siglen);
}

bool kr_key_gone(const kr_key *k)
{
	return k->sign == kr_tok_sign && k->tsigner.key != NULL && tok_key_gone(k->tsigner.key);
}

int kr_add_tok_key(keyring *kr, const char *name, tok_ctx *tok, const tok_key *tk)
{
	const uint8_t *cert;
	size_t cert_len = 0;
	int r;

	cert = tok_key_cert(tk, &cert_len);
	r = kr_add(kr, name, tok_key_uri(tk), tok_key_pubkey(tk), cert, cert_len,
		   tok_key_algs(tk), kr_tok_sign, NULL);
	if (r < 0)
		return r;
	/* the CKA_ID, for clients that name keys by it (jwks --kid id) */
	if ((r = kr_set_id(kr->keys[kr->n - 1], tk)) < 0)
		return r;
	/* the signer lives inside the key so that its address is stable */
	kr->keys[kr->n - 1]->tsigner.ctx = tok;
	kr->keys[kr->n - 1]->tsigner.key = tk;
	kr->keys[kr->n - 1]->sign_ctx = &kr->keys[kr->n - 1]->tsigner;
	return 0;
}

int kr_add_from_tok(keyring *kr, tok_ctx *tok)
{
	for (size_t i = 0; i < tok_key_count(tok); i++) {
		const tok_key *tk = tok_key_at(tok, i);
		int r;

		if ((r = kr_add_tok_key(kr, tok_key_name(tk), tok, tk)) < 0)
			return r;
	}
	/* token order is arbitrary; clients see keys sorted by name */
	qsort(kr->keys, kr->n, sizeof(*kr->keys), kr_cmp_name);
	return 0;
}

int kr_key_configure(kr_key *k, const pol_key *pol, jwa_alg default_alg, const char *kid)
{
	k->pol = pol;
	if (default_alg != JWA_NONE) {
		if (!(k->algs & JWA_BIT(default_alg)))
			return err_set(P11J_E_UNSUPPORTED_ALG, "key '%s': alg %s does not fit the key",
				       k->name, jwa_name(default_alg));
		k->default_alg = default_alg;
	} else if (pol != NULL && pol->algs != 0 && !(pol->algs & JWA_BIT(k->default_alg))) {
		/* the first alg the policy allows and the key signs */
		for (int a = JWA_NONE + 1; a < JWA__COUNT; a++)
			if (k->algs & pol->algs & JWA_BIT(a)) {
				k->default_alg = (jwa_alg)a;
				break;
			}
	}
	if (pol != NULL && pol->algs != 0 && !(k->algs & pol->algs))
		return err_set(P11J_E_UNSUPPORTED_ALG, "key '%s' signs none of the algs its policy "
			       "allows", k->name);
	if (kid != NULL) {
		char *d = strdup(kid);

		if (d == NULL)
			return err_nomem();
		free(k->kid);
		k->kid = d;
	}
	if (pol != NULL && pol->state == POL_STATE_RETIRING) {
		char when[32];

		pol_format_time(pol->retire_after, when, sizeof(when));
		if (json_object_set_new(k->info, "retire_after", json_string(when)) < 0)
			return err_nomem();
	}
	if (json_object_set_new(k->jwk, "kid", json_string(k->kid)) < 0 ||
	    json_object_set_new(k->jwk, "alg", json_string(jwa_name(k->default_alg))) < 0 ||
	    json_object_set_new(k->info, "state",
				json_string(pol_state_name(pol ? pol->state : POL_STATE_ACTIVE))) < 0 ||
	    json_object_set_new(k->info, "kid", json_string(k->kid)) < 0 ||
	    json_object_set_new(k->info, "alg", json_string(jwa_name(k->default_alg))) < 0 ||
	    /* what a client may sign with: the token's algs its policy allows */
	    json_object_set_new(k->info, "algs",
				algs_array(k->algs & (pol && pol->algs ? pol->algs : ~0u))) < 0)
		return err_nomem();
	return kr_key_headers(k);
}

void kr_sort(keyring *kr)
{
	qsort(kr->keys, kr->n, sizeof(*kr->keys), kr_cmp_name);
}

bool kr_any_usable(const keyring *kr, uid_t owner, uid_t uid, gid_t gid)
{
	if (uid == owner || uid == 0)
		return true;
	for (size_t i = 0; kr != NULL && i < kr->n; i++)
		if (pol_may_use(kr->keys[i]->pol, owner, uid, gid))
			return true;
	return false;
}

const kr_key *kr_find(const keyring *kr, const char *name)
{
	if (name == NULL)
		return NULL;
	for (size_t i = 0; i < kr->n; i++)
		if (strcmp(kr->keys[i]->name, name) == 0)
			return kr->keys[i];
	return NULL;
}

void kr_free(keyring *kr)
{
	if (kr == NULL)
		return;
	for (size_t i = 0; i < kr->n; i++)
		kr_key_free(kr->keys[i]);
	free(kr->keys);
	kr->keys = NULL;
	kr->n = 0;
}
