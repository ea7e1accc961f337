/* SPDX-License-Identifier: MIT */
/*
 * Test support: the protocol handler's fast path (agent/proto-fast.h) and
 * its Jansson path side by side on one request line, for
 * tests/unit/test_proto_fast.c and tests/fuzz/fuzz_proto_fast.c. One
 * keyring of software keys with and without policies, a deterministic
 * signer (no two lines sign alike, the same line always does), a fixed
 * clock and fixed random bytes, so both paths must give the same answer
 * line, result and audit line, byte for byte.
 */
#ifndef P11J_TEST_FASTDIFF_H
#define P11J_TEST_FASTDIFF_H

#include <stdbool.h>
#include <stddef.h>
#include "agent/proto.h"

/* Peers: the agent's own uid, root, uid 2000 (key "pol" lets it), uid 3000
 * (no key does: forbidden), and no peer at all (proto_handle's NULL). */
enum { FD_OWNER, FD_ROOT, FD_SHARED, FD_STRANGER, FD_NOPEER, FD__PEERS };

/* The signer's failures: none, an error code, or a signature of the wrong
 * length (P11J_E_INTERNAL from the size check). */
#define FD_FAIL_SHORT 1

typedef struct {
	int peer;       /* FD_* */
	int sign_fail;  /* 0, a P11J_E_* code, or FD_FAIL_SHORT */
	bool rescan;    /* env.unknown_key set (answers 0: nothing new) */
	bool no_fields; /* proto_audit.no_fields */
	bool no_audit;  /* audit NULL, as proto_handle() */
} fastdiff_opts;

/* The keyring and environment (once; abort()s on failure). */
void fastdiff_init(void);
void fastdiff_fini(void);

/* Run line through the Jansson path, the fast path directly and
 * proto_handle_ex() with the fast path on. 0 when every answer, result and
 * audit line is the same (*ret_taken: the fast path answered it itself);
 * -1 with what differs in msg (and both answers). */
int fastdiff_run(const char *line, size_t len, const fastdiff_opts *o, bool *ret_taken, char *msg,
                 size_t msglen);

/* Turn the fuzzer's first byte into options (the rest is the line). */
void fastdiff_opts_from_byte(unsigned char b, fastdiff_opts *o);

#endif
