/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for a token cache file's bytes (cache_entry_parse) and the
 * state the CLI derives from an entry (cache_entry_state) at a few times.
 * The cache directory is the user's own, but its files are read on every
 * `p11jwt token` and `call`, and one that does not parse must be ignored,
 * never trusted.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "cli/cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const int64_t when[] = { 0, 1700000000, INT64_MAX, INT64_MIN };
	json_t *e = NULL;

	if (cache_entry_parse((const char *)data, size, &e) < 0) {
		if (e != NULL)
			abort();
		return 0;
	}
	/* what cache_get() promises its callers */
	if (!json_is_string(json_object_get(e, "access_token")) ||
	    !json_is_integer(json_object_get(e, "obtained_at")))
		abort();
	for (size_t i = 0; i < sizeof(when) / sizeof(when[0]); i++) {
		cache_state st = cache_entry_state(e, when[i], 60);

		if (st != CACHE_FRESH && st != CACHE_REFRESHABLE && st != CACHE_STALE)
			abort();
	}
	json_decref(e);
	return 0;
}
