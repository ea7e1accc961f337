/* SPDX-License-Identifier: MIT */
/* JWK (RFC 7517/7518/8037) for public keys, RFC 7638 thumbprints, x5t/x5c. */
#ifndef P11J_JWK_H
#define P11J_JWK_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <openssl/evp.h>

/* Public JWK of an RSA, EC (P-256/384/521) or Ed25519 key: only the required
 * public members (kty, n, e | kty, crv, x, y | kty, crv, x). New reference. */
int jwk_from_pkey(const EVP_PKEY *pk, json_t **ret_jwk);

/* OpenSSL public key from a JWK (kty RSA, EC, OKP/Ed25519). Private members
 * are ignored. P11J_E_BAD_REQUEST for a malformed JWK. */
int jwk_to_pkey(const json_t *jwk, EVP_PKEY **ret_pk);

/* OpenSSL public keys from raw components, shared by the JWK importer and
 * the token layer (which reads them from PKCS#11 attributes).
 * RSA: big-endian modulus and exponent. EC: an uncompressed point
 * (0x04 || X || Y) on "P-256", "P-384" or "P-521". P11J_E_BAD_REQUEST when
 * OpenSSL does not accept the key (e.g. a point not on the curve). */
int jwk_pkey_rsa(const uint8_t *n, size_t nlen, const uint8_t *e, size_t elen, EVP_PKEY **ret);
int jwk_pkey_ec(const char *crv, const uint8_t *pt, size_t ptlen, EVP_PKEY **ret);

/* RFC 7638 thumbprint: base64url(SHA-256(canonical required members)). */
int jwk_thumbprint(const json_t *jwk, char **ret_b64u);

/* x5t = base64url(SHA-1(der)), x5t#S256 = base64url(SHA-256(der)),
 * x5c entry = standard base64(der). */
int jwk_x5t(const uint8_t *der, size_t len, char **ret);
int jwk_x5t_s256(const uint8_t *der, size_t len, char **ret);
int jwk_x5c_entry(const uint8_t *der, size_t len, char **ret);

/* Find the JWK in a JWKS ({"keys": [...]}) whose kid equals kid (or the only
 * key when kid is NULL and there is exactly one). Borrowed reference.
 * P11J_E_NOT_FOUND when none matches. */
int jwk_find(const json_t *jwks, const char *kid, const json_t **ret_jwk);

/* jwk_find for verifying a signature: only a key whose "use", if present, is
 * "sig" and whose "key_ops", if present, holds "verify" (RFC 7517 4.2, 4.3).
 * With a kid, the first such key with that kid (another key with the same
 * kid but for encryption is passed over); without, the JWKS's only key.
 * P11J_E_NOT_FOUND when no key with kid exists or none of them may verify
 * (the message names the kid and why); P11J_E_BAD_REQUEST when a key with
 * kid has a "use" that is not a string or a "key_ops" that is not an array
 * of distinct strings. Borrowed reference. */
int jwk_find_verify(const json_t *jwks, const char *kid, const json_t **ret_jwk);

/* A name from outside (a kid, a "use", a crit member), fit for a message:
 * at most size - 4 bytes of it, control characters shown as '?' (so a
 * hostile JWT or JWKS cannot drive the terminal), "..." when cut. size is
 * at least 5. Returns buf. */
const char *jwk_show(const char *s, char *buf, size_t size);

#endif
