/* SPDX-License-Identifier: MIT */
/*
 * The token cache: one JSON file per cache key under
 * $XDG_RUNTIME_DIR/p11jwt/cache (else /tmp/p11jwt-UID/cache). The
 * directory is 0700 and ours; files are 0600, written to a temporary file
 * and renamed; a lock file per key makes parallel callers wait for one
 * exchange. A file that is not ours, not private, not a regular file or
 * not a valid entry is ignored (and replaced on the next write).
 */
#ifndef P11J_CACHE_H
#define P11J_CACHE_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

#define CACHE_MAX_FILE (256 * 1024)

typedef struct {
	char dir[PATH_MAX - 256]; /* room for "/KEY.json" in PATH_MAX */
} tcache;

/* Find (and create) the cache directory. P11J_E_INSECURE when it exists
 * but is not a directory owned by us; loose modes on our own directory are
 * tightened to 0700. */
int cache_open(tcache *c);

/* Take the key's lock, waiting at most timeout_ms (P11J_E_TIMEOUT). */
int cache_lock(const tcache *c, const char *key, long timeout_ms, int *ret_fd);
void cache_unlock(int fd);

/* The entry for key. P11J_E_NOT_FOUND when there is none; P11J_E_INSECURE
 * or P11J_E_BAD_RESPONSE (with the reason) when a file is there but is not
 * to be trusted: callers ignore it. An entry is an object with "v": 1,
 * a string "access_token" and an integer "obtained_at". */
int cache_get(const tcache *c, const char *key, json_t **ret);
/* The bytes of a cache file: an entry as cache_get() promises it, or
 * P11J_E_BAD_RESPONSE with the reason. */
int cache_entry_parse(const char *buf, size_t len, json_t **ret);
/* Store the entry atomically (0600). */
int cache_put(const tcache *c, const char *key, const json_t *entry);
/* Whether an entry holds a DPoP-bound token (token_type DPoP, any case).
 * cache_entry_parse() refuses such an entry without a string "jkt", the
 * RFC 7638 thumbprint of the key it is bound to; token_type and jkt are
 * strings when present. */
bool cache_entry_is_dpop(const json_t *entry);

/* The last DPoP-Nonce (RFC 9449 8, 9) a server gave, per server name
 * (the CLI's is "token ORIGIN" or "api ORIGIN", ORIGIN as
 * "https://host[:port]"), in DIR/SHA256(name).nonce: {"v":1, "origin": name,
 * "nonce", "at"}, 0600, written atomically (last writer wins: a stale
 * nonce costs one use_dpop_nonce retry). get: P11J_E_NOT_FOUND when there
 * is none, P11J_E_INSECURE / P11J_E_BAD_RESPONSE when the file is not to be
 * trusted (callers go on without it). put: P11J_E_BAD_REQUEST for a value
 * that is not a nonce (dpop_nonce_check). cache_clear() removes them. */
int cache_nonce_get(const tcache *c, const char *origin, char **ret);
int cache_nonce_put(const tcache *c, const char *origin, const char *nonce, int64_t now);

/* Remove the entry (no error when there is none). */
int cache_del(const tcache *c, const char *key);

/* Every valid entry, as [{"key": ..., "entry": {...}}], sorted by key;
 * *ret_skipped counts files ignored. */
int cache_list(const tcache *c, json_t **ret, int *ret_skipped);
/* Remove every entry, lock and nonce file; *ret_n counts entries removed. */
int cache_clear(const tcache *c, int *ret_n);

/* Entry state at time now, with a margin in seconds. */
typedef enum {
	CACHE_FRESH,       /* the access token may be used */
	CACHE_REFRESHABLE, /* expired (or near), a refresh token is there */
	CACHE_STALE,       /* nothing usable */
} cache_state;
cache_state cache_entry_state(const json_t *entry, int64_t now, int64_t margin);

#endif
