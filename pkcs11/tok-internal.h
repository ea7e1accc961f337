/* SPDX-License-Identifier: MIT */
/* Test hooks of the token layer; not part of the public API. */
#ifndef P11J_TOK_INTERNAL_H
#define P11J_TOK_INTERNAL_H

#include <stdbool.h>
#include "pkcs11/tok.h"

/* Pretend the token lacks CKM_SHA*_RSA_PKCS so RS* goes through the
 * software-hash + DigestInfo + CKM_RSA_PKCS fallback. For tests only. */
void tok_test_force_raw_rsa(tok_ctx *ctx, bool on);

/* Number of sessions the pool has open right now. */
size_t tok_test_open_sessions(tok_ctx *ctx);

#endif
