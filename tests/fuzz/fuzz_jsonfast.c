/* SPDX-License-Identifier: MIT */
/*
 * Differential fuzz target: jsonfast against Jansson. Whatever Jansson
 * parses, jsonf_append() must print byte for byte as json_dumps(v,
 * JSON_COMPACT | JSON_ENCODE_ANY) does, or decline (1) and leave the buffer
 * as it was; jsonf_append_any() must always match json_dumps; and each
 * string, quoted by jsonf_quote(), must read back as the same string. The
 * agent signs what jsonfast prints, so any difference is a JWT whose bytes
 * are not the JSON it was asked for.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jose/jsonfast.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY)

static void check_strings(const json_t *v, int depth)
{
	const char *k;
	json_t *x;
	size_t i;

	if (depth > 8)
		return;
	if (json_is_string(v)) {
		jsonf_buf b = { 0 };
		json_t *back;

		if (jsonf_quote(&b, json_string_value(v), json_string_length(v)) != 0)
			abort(); /* Jansson made it from valid UTF-8 */
		back = json_loadb(b.p, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		if (back == NULL || !json_equal(back, (json_t *)v))
			abort();
		json_decref(back);
		jsonf_free(&b);
	} else if (json_is_object(v)) {
		json_object_foreach((json_t *)v, k, x)
			check_strings(x, depth + 1);
	} else if (json_is_array(v)) {
		json_array_foreach(v, i, x)
			check_strings(x, depth + 1);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *v = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	jsonf_buf b = { 0 };
	char *want;
	int r;

	if (v == NULL)
		return 0;
	want = json_dumps(v, DUMP_FLAGS);
	/* a prefix, to see that a declined value leaves it alone */
	if (jsonf_raw(&b, "[", 1) < 0)
		abort();
	r = jsonf_append(&b, v);
	if (r == 0) {
		if (want == NULL || b.len != 1 + strlen(want) || memcmp(b.p + 1, want, b.len - 1))
			abort();
	} else if (r == 1) {
		if (b.len != 1)
			abort();
	} else {
		abort(); /* out of memory, on fuzz-sized input */
	}
	b.len = 0;
	r = jsonf_append_any(&b, v);
	if (want != NULL && (r != 0 || b.len != strlen(want) || memcmp(b.p, want, b.len)))
		abort();
	jsonf_free(&b);
	check_strings(v, 0);
	free(want);
	json_decref(v);
	return 0;
}
