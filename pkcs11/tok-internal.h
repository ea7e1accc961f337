/* SPDX-License-Identifier: MIT */
/* Test hooks of the token layer, and what pkcs11/admin.c needs beyond the
 * public API; not part of the public API. */
#ifndef P11J_TOK_INTERNAL_H
#define P11J_TOK_INTERNAL_H

#include <stdbool.h>
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

#endif
