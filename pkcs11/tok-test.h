/* SPDX-License-Identifier: MIT */
/* Test hooks of the token layer; not part of the public API. */
#ifndef P11J_TOK_TEST_H
#define P11J_TOK_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include "pkcs11/tok.h"

/* Pretend the token lacks CKM_SHA*_RSA_PKCS so RS* goes through the
 * software-hash + DigestInfo + CKM_RSA_PKCS fallback (tok-mech.c). */
void tok_test_force_raw_rsa(tok_ctx *ctx, bool on);

/* Let the next call after a fault try to recover at once, with no back-off
 * (tok-recover.c). */
void tok_test_recover_now(tok_ctx *ctx);

/* Number of sessions the pool has open right now (tok-pool.c). */
size_t tok_test_open_sessions(tok_ctx *ctx);

#endif
