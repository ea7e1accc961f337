/* SPDX-License-Identifier: MIT */
/*
 * The keys an agent serves: for each, what clients see (name, kid, JWK,
 * certificate thumbprints, precomputed once) and how to sign (a jws_sign_fn,
 * the token layer's in production, a software signer in tests and fuzzing).
 */
#ifndef P11J_KEYRING_H
#define P11J_KEYRING_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <openssl/evp.h>
#include "jose/jwa.h"
#include "jose/jws.h"
#include "pkcs11/tok.h"
#include "agent/policy.h"

typedef struct kr_key {
	char *name;
	char *uri;
	char *kid;             /* RFC 7638 thumbprint of the public JWK */
	jwa_keykind kind;
	unsigned algs;         /* JWA_BIT mask the key can sign */
	jwa_alg default_alg;
	EVP_PKEY *pub;         /* owned reference */
	uint8_t *cert;         /* DER or NULL */
	size_t cert_len;
	size_t sigmax;
	jws_sign_fn sign;
	void *sign_ctx;
	tok_signer tsigner;    /* storage for sign_ctx of token keys */
	json_t *jwk;           /* public JWK + kid, alg (default), use */
	json_t *info;          /* entry of the "keys" op */
	char *x5t, *x5t_s256, *x5c; /* NULL without a certificate */
	const pol_key *pol;    /* per-key policy (owned by the config); NULL: defaults */
	/* the JWS header of a request that sets no header member and asks for no
	 * certificate, serialised once per alg the key signs:
	 * {"alg":"...","typ":"JWT","kid":"..."}; NULL for other algs */
	char *hdr_json[JWA__COUNT];
	size_t hdr_len[JWA__COUNT];
	/* DPoP (op "dpop"): the RFC 7638 thumbprint of the public JWK (the kid
	 * may be configured otherwise), and the proof header per alg,
	 * serialised once: {"typ":"dpop+jwt","alg":"...","jwk":{public members}} */
	char *jkt;
	char *dpop_hdr[JWA__COUNT];
	size_t dpop_hdr_len[JWA__COUNT];
} kr_key;

typedef struct {
	kr_key **keys;
	size_t n;
} keyring;

/* Add a key. pub is up-referenced; cert copied; algs is masked with what the
 * key kind can do (0: everything the kind can do). */
int kr_add(keyring *kr, const char *name, const char *uri, EVP_PKEY *pub, const uint8_t *cert,
	   size_t cert_len, unsigned algs, jws_sign_fn sign, void *sign_ctx);

/* Add every key the token layer found. */
int kr_add_from_tok(keyring *kr, tok_ctx *tok);

/* Add one token key under name (the configuration's name for it). */
int kr_add_tok_key(keyring *kr, const char *name, tok_ctx *tok, const tok_key *tk);

/* Apply a configured policy: default alg (JWA_NONE: keep), kid (NULL: keep
 * the thumbprint) in the key's JWK, "keys" entry and JWT headers. */
int kr_key_configure(kr_key *k, const pol_key *pol, jwa_alg default_alg, const char *kid);

/* Whether uid/gid may use at least one key (the agent's uid and root may
 * always talk to it). */
bool kr_any_usable(const keyring *kr, uid_t owner, uid_t uid, gid_t gid);

const kr_key *kr_find(const keyring *kr, const char *name);
/* A token key that a rescan found gone from its token (tok_key_gone):
 * it signs nothing (P11J_E_UNKNOWN_KEY). */
bool kr_key_gone(const kr_key *k);
/* Sort by name (the order clients see). */
void kr_sort(keyring *kr);
void kr_free(keyring *kr);

#endif
