/* SPDX-License-Identifier: MIT */
/* Compact JWS: assembly with a pluggable signer, parsing, verification. */
#ifndef P11J_JWS_H
#define P11J_JWS_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <openssl/evp.h>
#include "jwa.h"

/* Produces the JWS signature over in[0..inlen) in the JWS encoding (raw R||S
 * for ES*, not DER). *siglen holds the size of sig on entry and the
 * signature length on return. Returns 0 or a P11J_E_* code. */
typedef int (*jws_sign_fn)(void *ctx, jwa_alg alg, const uint8_t *in, size_t inlen,
			   uint8_t *sig, size_t *siglen);

/* BASE64URL(header) "." BASE64URL(claims) "." BASE64URL(sig), with header and
 * claims serialised compactly in insertion order. sigmax is the largest
 * signature the signer can produce. *ret_jwt is malloc'ed. */
int jws_sign_compact(const json_t *header, const json_t *claims, jwa_alg alg,
		     jws_sign_fn sign, void *ctx, size_t sigmax, char **ret_jwt);

/* The same with header already serialised (the agent pre-serialises). */
int jws_sign_compact_raw(const char *header_json, size_t header_len,
			 const char *claims_json, size_t claims_len, jwa_alg alg,
			 jws_sign_fn sign, void *ctx, size_t sigmax, char **ret_jwt);

typedef struct {
	json_t *header;       /* decoded protected header (object) */
	json_t *claims;       /* decoded payload (object) */
	jwa_alg alg;          /* from header "alg" (JWA_NONE if unknown) */
	uint8_t *sig;
	size_t sig_len;
	size_t signing_input_len; /* bytes of the JWT before the second '.' */
} jws_parsed;

/* Split and decode; header and payload must be JSON objects. Bounded: a JWT
 * over 64 KiB is P11J_E_REQUEST_TOO_LARGE. P11J_E_BAD_JWT with a reason
 * otherwise. Does not verify. */
int jws_parse(const char *jwt, jws_parsed *ret);
void jws_parsed_clear(jws_parsed *p);

/* Verify a JWS signature (raw R||S converted to DER for OpenSSL; PSS with
 * MGF1 same hash and salt = hash length). P11J_E_BAD_SIGNATURE on mismatch,
 * P11J_E_UNSUPPORTED_ALG when alg does not fit the key. */
int jws_verify_sig(jwa_alg alg, EVP_PKEY *pub, const uint8_t *in, size_t inlen,
		   const uint8_t *sig, size_t siglen);

/* RFC 7515 4.1.11: check the header's "crit". understood is a NULL-ended
 * list of the extension Header Parameters the caller implements (NULL for
 * none). P11J_E_BAD_JWT, with the reason, when crit is present and is not an
 * array, is empty, holds a non-string or the same name twice, lists a name
 * RFC 7515/7516/7518 define (alg, kid, ...) or one absent from the header,
 * or requires an extension not in understood. 0 when there is no crit. */
int jws_check_crit(const json_t *header, const char *const *understood);

/* Full check: parse; check crit (no extension is understood, so any crit is
 * refused) and that a kid is a string (P11J_E_BAD_JWT); pick the key from
 * jwks with jwk_find_verify; verify the signature, then exp (P11J_E_EXPIRED)
 * and nbf (P11J_E_NOT_YET_VALID) against now with leeway seconds. On
 * success, fills *ret if ret is not NULL. */
int jws_verify_jwks(const char *jwt, const json_t *jwks, int64_t now, int64_t leeway,
		    jws_parsed *ret);

/* ECDSA raw R||S (each half n bytes) <-> DER, exposed for tests. */
int jws_ecdsa_raw_to_der(const uint8_t *raw, size_t rawlen, uint8_t **ret_der, size_t *ret_len);
int jws_ecdsa_der_to_raw(const uint8_t *der, size_t derlen, size_t half, uint8_t *raw);

#endif
