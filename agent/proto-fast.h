/* SPDX-License-Identifier: MIT */
/*
 * The fast path of the protocol handler for the usual "sign" and "dpop"
 * requests: a small strict scanner over the request line and the claims,
 * the answer line and the audit record written straight into buffers, no
 * Jansson value at all. It answers only what it fully understands and what
 * will be signed: every request it takes gets exactly the bytes (answer
 * line and audit record) that the Jansson path in proto.c gives it, and
 * everything else, including every request the Jansson path would refuse,
 * is declined and goes to that path unchanged. tests/unit/test_proto_fast.c
 * and tests/fuzz/fuzz_proto_fast.c compare the two byte for byte.
 */
#ifndef P11J_PROTO_FAST_H
#define P11J_PROTO_FAST_H

#include <stddef.h>
#include "agent/proto.h"

#define PROTO_FAST_DECLINED 1

/* Called by proto_handle_ex() with the keyring it acquired, for a peer that
 * may use the agent at all. 0: answered (*ret_resp and *audit as
 * proto_handle_ex() fills them); PROTO_FAST_DECLINED: nothing was done
 * (audit and the outputs untouched), use the Jansson path; a negative code
 * when out of memory. env->no_fast declines everything. */
int proto_fast_handle(const proto_env *env, const proto_peer *peer, const char *line, size_t len,
                      proto_audit *audit, char **ret_resp, size_t *ret_len);

#endif
