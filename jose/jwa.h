/* SPDX-License-Identifier: MIT */
/* JWS algorithms (RFC 7518, RFC 8037) and how they fit keys. */
#ifndef P11J_JWA_H
#define P11J_JWA_H

#include <stddef.h>
#include <stdbool.h>
#include <openssl/evp.h>

typedef enum {
	JWA_NONE = 0,
	JWA_RS256, JWA_RS384, JWA_RS512,
	JWA_PS256, JWA_PS384, JWA_PS512,
	JWA_ES256, JWA_ES384, JWA_ES512,
	JWA_EDDSA,
	JWA__COUNT
} jwa_alg;

/* Bit for an alg in a mask of algs. */
#define JWA_BIT(a) (1u << (unsigned)(a))

const char *jwa_name(jwa_alg alg);            /* "RS256"; "none" for JWA_NONE */
jwa_alg jwa_from_name(const char *name);      /* JWA_NONE if unknown (case-sensitive) */
const EVP_MD *jwa_md(jwa_alg alg);            /* digest; NULL for EdDSA/none */
bool jwa_is_rsa(jwa_alg alg);                 /* RS* or PS* */
bool jwa_is_pss(jwa_alg alg);
bool jwa_is_ec(jwa_alg alg);                  /* ES* */
/* Fixed raw R||S width of an ES* signature (64, 96, 132), 64 for EdDSA,
 * 0 for RSA (size depends on the key). */
size_t jwa_sig_len(jwa_alg alg);

/* Kinds of public key the project serves. */
typedef enum { KEYKIND_UNKNOWN = 0, KEYKIND_RSA, KEYKIND_P256, KEYKIND_P384,
	       KEYKIND_P521, KEYKIND_ED25519 } jwa_keykind;

/* Classify a public key. RSA keys under 2048 bits are KEYKIND_UNKNOWN. */
jwa_keykind jwa_keykind_of(const EVP_PKEY *pk);

/* Mask of algs a key kind can sign (RSA: RS*, PS*; P-256: ES256 ...). */
unsigned jwa_algs_for_kind(jwa_keykind kind);

/* Default alg: RSA->RS256, P-256->ES256, P-384->ES384, P-521->ES512,
 * Ed25519->EdDSA. */
jwa_alg jwa_default_for_kind(jwa_keykind kind);

/* Maximum signature size a key can produce (RSA: modulus bytes). */
size_t jwa_max_sig_len(const EVP_PKEY *pk);

#endif
