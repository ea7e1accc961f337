/* SPDX-License-Identifier: MIT */
/*
 * Differential fuzz target for the protocol handler's fast path
 * (agent/proto-fast.c): the first byte picks the peer, a signer failure
 * and the audit options (fastdiff_opts_from_byte), the rest is one request
 * line, run through the fast path and the Jansson path
 * (tests/support/fastdiff.c). Any difference in the answer, the result or
 * the audit line aborts.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "support/fastdiff.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char msg[16384];
	fastdiff_opts o;
	bool taken;

	if (size == 0)
		return 0;
	fastdiff_opts_from_byte(data[0], &o);
	if (fastdiff_run((const char *)data + 1, size - 1, &o, &taken, msg, sizeof(msg)) != 0) {
		fprintf(stderr, "fuzz_proto_fast: %s\n", msg);
		abort();
	}
	return 0;
}
