/* SPDX-License-Identifier: MIT */
/*
 * DPoP proofs (RFC 9449): the pieces of a proof JWT, pure and unit-tested.
 * The agent checks a request's fields with the validators, normalises the
 * htu, and signs dpop_header() + dpop_claims() with the key; the CLI
 * computes ath from the access token, so that the agent never sees it.
 */
#ifndef P11J_DPOP_H
#define P11J_DPOP_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "jwa.h"

#define DPOP_MAX_HTU 4096  /* bytes of a request's htu */
#define DPOP_MAX_HTM 32    /* bytes of a method */
#define DPOP_MAX_NONCE 512 /* bytes of a server's nonce */
#define DPOP_ATH_LEN 43    /* base64url of a SHA-256 hash */
#define DPOP_JTI_BYTES 16  /* 128 random bits */
#define DPOP_JTI_LEN 22    /* their base64url */
#define DPOP_TYP "dpop+jwt"

/* htu (RFC 9449 4.2: the URI without query and fragment, compared after
 * RFC 3986 6.2.2/6.2.3 normalisation): an absolute http or https URL with
 * a host and no userinfo, in printable ASCII. The result has the scheme
 * and host in lower case, no port when it is the scheme's default (80,
 * 443) or empty, the port without leading zeros otherwise, "/" for an
 * empty path, percent-encodings in upper case and those of unreserved
 * characters decoded, and neither query nor fragment. Dot segments are
 * kept as they are. *ret is malloc'ed. P11J_E_BAD_REQUEST naming what is
 * wrong. */
int dpop_htu_normalise(const char *url, size_t len, char **ret);

/* htm: an RFC 9110 method token of 1 to DPOP_MAX_HTM characters, without
 * lower-case letters (methods are case-sensitive: "post" is not POST).
 * 0 or P11J_E_BAD_REQUEST. */
int dpop_htm_check(const char *m, size_t len);

/* nonce: 1 to DPOP_MAX_NONCE characters of RFC 9449's NQCHAR (printable
 * ASCII but '"' and '\'). 0 or P11J_E_BAD_REQUEST. */
int dpop_nonce_check(const char *s, size_t len);

/* ath: exactly DPOP_ATH_LEN base64url characters that decode to 32 bytes.
 * 0 or P11J_E_BAD_REQUEST. */
int dpop_ath_check(const char *s, size_t len);

/* ath of an access token: base64url(SHA-256(token)) into out (NUL-ended).
 * 0 or P11J_E_CRYPTO. */
int dpop_ath(const char *token, size_t len, char out[DPOP_ATH_LEN + 1]);

/* A fresh jti: DPOP_JTI_BYTES random bytes, base64url. 0 or P11J_E_CRYPTO. */
int dpop_jti(char out[DPOP_JTI_LEN + 1]);

/* The proof's public JWK: only the public members of jwk (kty, crv, x, y,
 * n, e, in jwk's order; never kid, alg, use or a private member). New
 * reference, or NULL when out of memory. */
json_t *dpop_public_jwk(const json_t *jwk);

/* The proof header, serialised: {"typ":"dpop+jwt","alg":ALG,"jwk":{...}}
 * with dpop_public_jwk(jwk). *ret is malloc'ed. 0 or P11J_E_NOMEM. */
int dpop_header(jwa_alg alg, const json_t *jwk, char **ret, size_t *ret_len);

typedef struct {
	const char *jti;   /* required */
	const char *htm;   /* required, checked */
	const char *htu;   /* required, normalised */
	int64_t iat;
	const char *nonce; /* NULL: no nonce claim */
	const char *ath;   /* NULL: no ath claim */
} dpop_claims_in;

/* The proof claims, serialised in this order:
 * {"jti":..,"htm":..,"htu":..,"iat":..[,"nonce":..][,"ath":..]}.
 * *ret is malloc'ed (free with freezero_str). 0, P11J_E_NOMEM, or
 * P11J_E_BAD_REQUEST for a missing member or a string that is not UTF-8. */
int dpop_claims(const dpop_claims_in *in, char **ret, size_t *ret_len);

#endif
