/* SPDX-License-Identifier: MIT */
/* Test hooks of the token layer, and what pkcs11/admin.c needs beyond the
 * public API; not part of the public API. */
#ifndef P11J_TOK_INTERNAL_H
#define P11J_TOK_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>
#include "pkcs11/tok.h"

/* Pretend the token lacks CKM_SHA*_RSA_PKCS so RS* goes through the
 * software-hash + DigestInfo + CKM_RSA_PKCS fallback. For tests only. */
void tok_test_force_raw_rsa(tok_ctx *ctx, bool on);

/* Let the next call after a fault try to recover at once (no back-off). */
void tok_test_recover_now(tok_ctx *ctx);

/* Number of sessions the pool has open right now. */
size_t tok_test_open_sessions(tok_ctx *ctx);

/* For pkcs11/admin.c (key generation, storing certificates): tok_open()
 * that also accepts a token holding no usable key yet. */
int tok_open_any(const tok_config *cfg, tok_ctx **ret);

/* The chosen token's module and slot. Sessions opened on it are logged in
 * already (login is per token); the caller closes the ones it opens. */
CK_FUNCTION_LIST *tok_module(tok_ctx *ctx, CK_SLOT_ID *ret_slot);

/* The public key of object o (a public key, or a private key with its
 * public attributes) of type kt (CKK_RSA, CKK_EC, CKK_EC_EDWARDS), read
 * from its attributes on session s; name is for messages. The agent reads
 * keys with it at open; admin.c reads the keys it has just generated. */
int tok_pub_from_object(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_KEY_TYPE kt,
                        const char *name, EVP_PKEY **ret);

/* CKA_EC_PARAMS of the curves the token layer knows (DER OIDs; for
 * Ed25519 the PrintableString "edwards25519" SoftHSM takes). */
extern const uint8_t tok_oid_p256[10], tok_oid_p384[7], tok_oid_p521[7];
extern const uint8_t tok_str_ed25519[14];

#endif
