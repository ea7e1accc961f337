/* SPDX-License-Identifier: MIT */
/*
 * Test support: the protocol handler's environment as the unit tests set it
 * up (agent uid 1000, version "test") and a fixed clock, so that JWTs and
 * audit records are the same on every run.
 */
#ifndef P11J_TEST_PROTOENV_H
#define P11J_TEST_PROTOENV_H

#include <stdint.h>
#include "agent/proto.h"

#define PROTOENV_NOW INT64_C(1700000000)
#define PROTOENV_OWNER 1000

/* env serves kr for owner uid PROTOENV_OWNER; util_now() says PROTOENV_NOW
 * until protoenv_fini(). */
void protoenv_init(proto_env *env, const keyring *kr);
void protoenv_fini(void);

/* The fixed clock itself (for jws_verify_jwks and the like). */
int64_t protoenv_now(void);

#endif
