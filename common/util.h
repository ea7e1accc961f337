/* SPDX-License-Identifier: MIT */
/* Small helpers shared by all modules. */
#ifndef P11J_UTIL_H
#define P11J_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Wipe len bytes in a way the compiler may not drop (explicit_bzero). */
void util_wipe(void *p, size_t len);
/* Free after wiping len bytes (util_wipe). NULL is fine. */
void freezero_buf(void *p, size_t len);
/* Free a NUL-terminated secret string after wiping it. */
void freezero_str(char *s);

/* Read a whole small file (at most max bytes, else P11J_E_REQUEST_TOO_LARGE).
 * With secret=true the file must be a regular file owned by the caller (or
 * root) and not readable or writable by group or others (P11J_E_INSECURE),
 * and the buffer is wiped when it grows. *ret_buf is NUL-terminated. */
int util_read_file(const char *path, size_t max, bool secret, char **ret_buf, size_t *ret_len);

/* Whether w is one of the space-separated words of list (NULL: none). */
bool util_word_in(const char *list, const char *w);

/* Make room for need more bytes (plus a NUL) after used in a secret buffer:
 * a bigger buffer is allocated, the old one copied, wiped and freed, so no
 * stale copy of a token or secret is left behind (realloc may leave one). */
int util_secret_reserve(char **buf, size_t *cap, size_t used, size_t need);

/* free() and realloc() that wipe what they release (the whole block, by
 * malloc_usable_size), for libraries that take allocator hooks (Jansson,
 * libcurl) and hold tokens, assertions and secrets in their strings. */
void util_wipe_free(void *p);
void *util_wipe_realloc(void *p, size_t n);

/* Strip one trailing "\n" or "\r\n" in place. */
void util_chomp(char *s);

/* Random UUID v4 as 36 chars + NUL into out[37], from RAND_bytes. */
int util_uuid4(char out[37]);
/* n (at most UTIL_RANDOM_MAX) random bytes for unique values (jti), from a
 * per-thread pool RAND_bytes fills (never repeated, also across fork()).
 * Not for keys. 0 or P11J_E_CRYPTO. */
#define UTIL_RANDOM_MAX 64
int util_random(uint8_t *out, size_t n);
/* Tests that compare two runs byte for byte (tests/support/fastdiff.c) may
 * replace the bytes util_random() and util_uuid4() give with fn's (NULL
 * restores RAND_bytes), as util_set_clock() does the time. */
void util_set_random(int (*fn)(uint8_t *out, size_t n));

/* Hex of bytes into a fresh string (lowercase). */
int util_hex(const uint8_t *in, size_t len, char **ret);

/* Wall clock in seconds since the epoch. Tests may override it with
 * util_set_clock() (NULL restores the real clock). */
int64_t util_now(void);
void util_set_clock(int64_t (*fn)(void));

#endif
