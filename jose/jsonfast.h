/* SPDX-License-Identifier: MIT */
/*
 * Compact JSON serialiser for the signing hot path.
 *
 * json_dumps(v, JSON_COMPACT) spends most of its time in a per-code-point
 * escaping loop and in one callback per token. jsonf_append() prints the same
 * bytes as json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) with Jansson 2.14
 * (members in iteration order, no spaces, no key sorting, "/" and non-ASCII
 * left as they are) into a growing buffer. What it cannot promise to print
 * identically (reals, too deep a tree, strings that are not valid UTF-8) it
 * declines, and the caller falls back to json_dumps.
 *
 * The buffers hold JWTs and may hold PINs: growing one copies it into a new
 * block and wipes the old one, and jsonf_free() wipes the whole block.
 */
#ifndef P11J_JSONFAST_H
#define P11J_JSONFAST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* Containers may nest this deep (a bare array is depth 1); deeper declines. */
#define JSONF_MAX_DEPTH 64

/* Zero-initialise ({ 0 }) before first use. p is NUL-terminated only by
 * jsonf_take(). */
typedef struct {
	char *p;
	size_t len, cap;
} jsonf_buf;

/* Append the compact JSON text of v to b (growing it), exactly as
 * json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) prints it. Returns 0 on
 * success; 1 when v holds something this does not print (a real number,
 * containers nested deeper than JSONF_MAX_DEPTH, which includes a reference
 * cycle, a string or key that is not valid UTF-8, or v == NULL): then b->len
 * is unchanged, any bytes written past it are wiped, and the caller must use
 * json_dumps. A negative P11J_E_* code (P11J_E_NOMEM) when out of memory,
 * with b->len likewise unchanged. */
int jsonf_append(jsonf_buf *b, const json_t *v);

/* jsonf_append(), and for what it declines the text of json_dumps(v,
 * JSON_COMPACT | JSON_ENCODE_ANY): 0; 1 when Jansson cannot print v either
 * (invalid UTF-8 made with a *_nocheck constructor, a cycle) or runs out of
 * memory, b->len then unchanged; P11J_E_NOMEM. */
int jsonf_append_any(jsonf_buf *b, const json_t *v);

/* Append n raw bytes / a NUL-terminated string / a decimal int64. 0 or
 * P11J_E_NOMEM. */
int jsonf_raw(jsonf_buf *b, const void *s, size_t n);
int jsonf_str(jsonf_buf *b, const char *s);
int jsonf_int(jsonf_buf *b, int64_t v);
/* v in decimal, written at the end of tmp: returns where it starts; its
 * length is tmp + JSONF_INT_MAX - the result. */
#define JSONF_INT_MAX 20 /* "-9223372036854775808" */
const char *jsonf_itoa(int64_t v, char tmp[JSONF_INT_MAX]);

/* Append n bytes of s as a JSON string literal, quoted and escaped as
 * Jansson does (NUL bytes allowed). 0, P11J_E_NOMEM, or P11J_E_BAD_REQUEST
 * if s is not valid UTF-8 (Jansson refuses to print it too); b->len is
 * unchanged on failure. */
int jsonf_quote(jsonf_buf *b, const char *s, size_t n);

/* Whether n bytes of s are valid UTF-8 as Jansson takes it: what
 * jsonf_quote() prints and json_string() accepts. */
bool jsonf_utf8_valid(const char *s, size_t n);

/* Wipe (OPENSSL_cleanse over cap) and free the buffer; the struct is zeroed. */
void jsonf_free(jsonf_buf *b);

/* Make room for need more bytes (and a NUL) after b->len, so that a caller
 * who knows the usual size grows the buffer once. 0 or P11J_E_NOMEM. */
int jsonf_reserve(jsonf_buf *b, size_t need);
/* Drop (and wipe) whatever was appended after start. */
void jsonf_rollback(jsonf_buf *b, size_t start);

/* The compact text of v as a fresh NUL-terminated string (free() it, or
 * freezero_str() it), by jsonf_append() or, when that declines, by
 * json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY). 0 or a negative P11J_E_*
 * code (P11J_E_NOMEM, also when json_dumps fails); *ret and *ret_len are
 * untouched on failure. ret_len may be NULL. */
int jsonf_dumps(const json_t *v, char **ret, size_t *ret_len);

/* Hand the buffer to the caller: NUL-terminated, *ret_len (if not NULL) is
 * its length, b is zeroed. NULL if out of memory (b is then untouched). The
 * block may be larger than len + 1; past the NUL it holds nothing this module
 * left there (declined output is wiped), so wiping len bytes is enough. */
char *jsonf_take(jsonf_buf *b, size_t *ret_len);

#endif
