/* SPDX-License-Identifier: MIT */
#include "cli/cache.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/dpop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/evp.h>

/* mkdir if missing, then insist on a directory of ours, mode 0700 */
static int own_dir(const char *path)
{
	struct stat st;

	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return err_set(P11J_E_SYSTEM, "cannot create %s: %s", path, strerror(errno));
	if (lstat(path, &st) < 0)
		return err_set(P11J_E_SYSTEM, "%s: %s", path, strerror(errno));
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid())
		return err_set(P11J_E_INSECURE, "%s is not a directory owned by uid %u", path,
			       (unsigned)geteuid());
	if ((st.st_mode & 077) && chmod(path, 0700) < 0)
		return err_set(P11J_E_INSECURE, "%s is open to other users and cannot be made "
						"0700: %s",
			       path, strerror(errno));
	return 0;
}

int cache_open(tcache *c)
{
	const char *rt = getenv("XDG_RUNTIME_DIR");
	char base[sizeof(c->dir) - 8];
	int r;

	if (rt && rt[0] == '/')
		r = snprintf(base, sizeof(base), "%s/p11jwt", rt);
	else
		r = snprintf(base, sizeof(base), "/tmp/p11jwt-%u", (unsigned)geteuid());
	if (r < 0 || (size_t)r >= sizeof(base))
		return err_set(P11J_E_BAD_REQUEST, "cache path too long");
	if ((r = own_dir(base)) < 0)
		return r;
	snprintf(c->dir, sizeof(c->dir), "%s/cache", base);
	return own_dir(c->dir);
}

static bool key_ok(const char *key)
{
	size_t n = strlen(key);

	return n == 64 && strspn(key, "0123456789abcdef") == n;
}

int cache_lock(const tcache *c, const char *key, long timeout_ms, int *ret_fd)
{
	char path[PATH_MAX];
	struct timespec nap = { 0, 20 * 1000 * 1000 };
	long waited = 0;
	int fd;

	if (!key_ok(key))
		return err_set(P11J_E_INTERNAL, "bad cache key");
	snprintf(path, sizeof(path), "%s/%s.lock", c->dir, key);
	fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(P11J_E_SYSTEM, "cannot open %s: %s", path, strerror(errno));
	while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno != EWOULDBLOCK && errno != EINTR) {
			close(fd);
			return err_set(P11J_E_SYSTEM, "cannot lock %s: %s", path, strerror(errno));
		}
		if (waited >= timeout_ms) {
			close(fd);
			return err_set(P11J_E_TIMEOUT,
				       "another p11jwt holds the cache lock %s for over %ld ms",
				       path, timeout_ms);
		}
		nanosleep(&nap, NULL);
		waited += 20;
	}
	*ret_fd = fd;
	return 0;
}

void cache_unlock(int fd)
{
	if (fd >= 0) {
		flock(fd, LOCK_UN);
		close(fd);
	}
}

bool cache_entry_is_dpop(const json_t *e)
{
	const char *tt = json_string_value(json_object_get(e, "token_type"));

	return tt != NULL && strcasecmp(tt, "DPoP") == 0;
}

static int entry_check(const json_t *e)
{
	const json_t *x;

	if (!json_is_object(e) || json_integer_value(json_object_get(e, "v")) != 1)
		return err_set(P11J_E_BAD_RESPONSE, "not a p11jwt cache entry (version 1)");
	if (!json_is_string(json_object_get(e, "access_token")) ||
	    !json_is_integer(json_object_get(e, "obtained_at")))
		return err_set(P11J_E_BAD_RESPONSE, "cache entry without access_token/obtained_at");
	x = json_object_get(e, "expires_at");
	if (x && !json_is_integer(x) && !json_is_null(x))
		return err_set(P11J_E_BAD_RESPONSE, "cache entry with a bad expires_at");
	x = json_object_get(e, "refresh_token");
	if (x && !json_is_string(x) && !json_is_null(x))
		return err_set(P11J_E_BAD_RESPONSE, "cache entry with a bad refresh_token");
	x = json_object_get(e, "token_type");
	if (x && !json_is_string(x))
		return err_set(P11J_E_BAD_RESPONSE, "cache entry with a bad token_type");
	x = json_object_get(e, "jkt");
	if (x && !json_is_string(x))
		return err_set(P11J_E_BAD_RESPONSE, "cache entry with a bad jkt");
	/* a DPoP-bound token is useless, and must not be offered, without
	 * the key it is bound to */
	if (cache_entry_is_dpop(e) && x == NULL)
		return err_set(P11J_E_BAD_RESPONSE, "cache entry of a DPoP token without its jkt");
	return 0;
}

int cache_entry_parse(const char *buf, size_t len, json_t **ret)
{
	json_error_t jerr;
	json_t *e = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	int r;

	if (e == NULL)
		return err_set(P11J_E_BAD_RESPONSE, "not valid JSON (%s)", jerr.text);
	if ((r = entry_check(e)) < 0) {
		json_decref(e);
		return r;
	}
	*ret = e;
	return 0;
}

/* The bytes of a private regular file of ours (at most CACHE_MAX_FILE),
 * NUL-ended; *ret is freed with freezero_buf(*ret, *ret_len + 1). */
static int read_private(const char *path, char **ret, size_t *ret_len)
{
	struct stat st;
	char *buf;
	ssize_t n;
	size_t len = 0;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			return err_set(P11J_E_NOT_FOUND, "no cache entry");
		return err_set(P11J_E_INSECURE, "%s cannot be opened safely: %s", path,
			       strerror(errno));
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
	    (st.st_mode & 077) || st.st_size > CACHE_MAX_FILE) {
		close(fd);
		return err_set(P11J_E_INSECURE,
			       "%s is not a private regular file of ours (or is too big)", path);
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		close(fd);
		return err_nomem();
	}
	while (len < (size_t)st.st_size &&
	       (n = read(fd, buf + len, (size_t)st.st_size - len)) > 0)
		len += (size_t)n;
	close(fd);
	buf[len] = '\0';
	*ret = buf;
	*ret_len = len;
	return 0;
}

static int read_entry(const char *path, json_t **ret)
{
	char *buf = NULL;
	size_t len = 0;
	json_t *e;
	int r;

	if ((r = read_private(path, &buf, &len)) < 0)
		return r;
	r = cache_entry_parse(buf, len, &e);
	freezero_buf(buf, len + 1);
	if (r < 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", err_msg()); /* err_set() reuses its buffer */
		return err_set(r, "%s: %s", path, why);
	}
	*ret = e;
	return 0;
}

int cache_get(const tcache *c, const char *key, json_t **ret)
{
	char path[PATH_MAX];

	if (!key_ok(key))
		return err_set(P11J_E_INTERNAL, "bad cache key");
	snprintf(path, sizeof(path), "%s/%s.json", c->dir, key);
	return read_entry(path, ret);
}

/* Write s to DIR/NAME.EXT atomically: a 0600 temporary file, fsync,
 * rename. */
static int write_private(const tcache *c, const char *name, const char *ext, const char *s)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	size_t len = strlen(s), off = 0;
	int fd, r = 0;

	snprintf(path, sizeof(path), "%s/%s.%s", c->dir, name, ext);
	snprintf(tmp, sizeof(tmp), "%s/.%s.XXXXXX", c->dir, name);
	fd = mkstemp(tmp); /* 0600 */
	if (fd < 0)
		return err_set(P11J_E_SYSTEM, "cannot create a file in %s: %s", c->dir,
			       strerror(errno));
	while (off < len) {
		ssize_t n = write(fd, s + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = err_set(P11J_E_SYSTEM, "writing %s: %s", tmp, strerror(errno));
			break;
		}
		off += (size_t)n;
	}
	if (r == 0 && fsync(fd) < 0)
		r = err_set(P11J_E_SYSTEM, "fsync %s: %s", tmp, strerror(errno));
	if (close(fd) < 0 && r == 0)
		r = err_set(P11J_E_SYSTEM, "closing %s: %s", tmp, strerror(errno));
	if (r == 0 && rename(tmp, path) < 0)
		r = err_set(P11J_E_SYSTEM, "rename to %s: %s", path, strerror(errno));
	if (r < 0)
		unlink(tmp);
	return r;
}

int cache_put(const tcache *c, const char *key, const json_t *entry)
{
	char *s;
	int r;

	if (!key_ok(key))
		return err_set(P11J_E_INTERNAL, "bad cache key");
	s = json_dumps(entry, JSON_COMPACT);
	if (s == NULL)
		return err_nomem();
	r = write_private(c, key, "json", s);
	freezero_str(s);
	return r;
}

/* The nonce file's name: SHA-256 of the origin, in hex. */
static int nonce_name(const char *origin, char ret[65])
{
	unsigned char md[32];
	unsigned int mdlen = 0;

	if (EVP_Digest(origin, strlen(origin), md, &mdlen, EVP_sha256(), NULL) != 1)
		return err_set_ossl(P11J_E_CRYPTO, "SHA-256");
	for (unsigned int i = 0; i < mdlen; i++)
		snprintf(ret + 2 * i, 3, "%02x", md[i]);
	return 0;
}

int cache_nonce_get(const tcache *c, const char *origin, char **ret)
{
	char name[65], path[PATH_MAX];
	char *buf = NULL;
	size_t len = 0;
	json_t *o;
	const char *n;
	int r;

	*ret = NULL;
	if ((r = nonce_name(origin, name)) < 0)
		return r;
	snprintf(path, sizeof(path), "%s/%s.nonce", c->dir, name);
	if ((r = read_private(path, &buf, &len)) < 0)
		return r;
	o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, NULL);
	freezero_buf(buf, len + 1);
	n = json_string_value(json_object_get(o, "nonce"));
	if (json_integer_value(json_object_get(o, "v")) != 1 ||
	    !json_is_string(json_object_get(o, "origin")) ||
	    strcmp(json_string_value(json_object_get(o, "origin")), origin) != 0 || n == NULL ||
	    dpop_nonce_check(n, strlen(n)) < 0) {
		json_decref(o);
		return err_set(P11J_E_BAD_RESPONSE, "%s: not a DPoP nonce file for %s", path, origin);
	}
	*ret = strdup(n);
	json_decref(o);
	return *ret ? 0 : err_nomem();
}

int cache_nonce_put(const tcache *c, const char *origin, const char *nonce, int64_t now)
{
	char name[65];
	char *s;
	json_t *o;
	int r;

	if ((r = dpop_nonce_check(nonce, strlen(nonce))) < 0)
		return r;
	if ((r = nonce_name(origin, name)) < 0)
		return r;
	o = json_pack("{s:i,s:s,s:s,s:I}", "v", 1, "origin", origin, "nonce", nonce, "at",
		      (json_int_t)now);
	s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (s == NULL)
		return err_nomem();
	r = write_private(c, name, "nonce", s);
	free(s);
	return r;
}

int cache_del(const tcache *c, const char *key)
{
	char path[PATH_MAX];

	if (!key_ok(key))
		return err_set(P11J_E_INTERNAL, "bad cache key");
	snprintf(path, sizeof(path), "%s/%s.json", c->dir, key);
	if (unlink(path) < 0 && errno != ENOENT)
		return err_set(P11J_E_SYSTEM, "cannot remove %s: %s", path, strerror(errno));
	return 0;
}

static int by_key(const void *a, const void *b)
{
	return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "key")),
		      json_string_value(json_object_get(*(json_t *const *)b, "key")));
}

int cache_list(const tcache *c, json_t **ret, int *ret_skipped)
{
	DIR *d = opendir(c->dir);
	struct dirent *de;
	json_t **items = NULL, *arr;
	size_t n = 0, cap = 0;
	int skipped = 0;

	if (d == NULL)
		return err_set(P11J_E_SYSTEM, "cannot read %s: %s", c->dir, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		char path[PATH_MAX], key[65];
		size_t l = strlen(de->d_name);
		json_t *e = NULL, *item;

		if (l != 69 || strcmp(de->d_name + 64, ".json") != 0)
			continue;
		memcpy(key, de->d_name, 64);
		key[64] = '\0';
		if (!key_ok(key))
			continue;
		snprintf(path, sizeof(path), "%s/%s", c->dir, de->d_name);
		if (read_entry(path, &e) < 0) {
			skipped++;
			continue;
		}
		item = json_pack("{s:s,s:o}", "key", key, "entry", e);
		if (item == NULL || (n == cap && (items = realloc(items, (cap = cap ? cap * 2 : 16) *
								      sizeof(*items))) == NULL)) {
			json_decref(item);
			closedir(d);
			for (size_t i = 0; i < n; i++)
				json_decref(items ? items[i] : NULL);
			free(items);
			return err_nomem();
		}
		items[n++] = item;
	}
	closedir(d);
	if (n)
		qsort(items, n, sizeof(*items), by_key);
	arr = json_array();
	for (size_t i = 0; i < n; i++)
		if (arr == NULL || json_array_append_new(arr, items[i]) < 0)
			json_decref(items[i]);
	free(items);
	if (arr == NULL)
		return err_nomem();
	*ret = arr;
	*ret_skipped = skipped;
	return 0;
}

int cache_clear(const tcache *c, int *ret_n)
{
	DIR *d = opendir(c->dir);
	struct dirent *de;
	int n = 0, r = 0;

	if (d == NULL)
		return err_set(P11J_E_SYSTEM, "cannot read %s: %s", c->dir, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name);
		bool entry = l == 69 && strcmp(de->d_name + 64, ".json") == 0;
		bool lock = l == 69 && strcmp(de->d_name + 64, ".lock") == 0;
		bool nonce = l == 70 && strcmp(de->d_name + 64, ".nonce") == 0;
		bool tmp = de->d_name[0] == '.' && l > 66;

		if (!entry && !lock && !nonce && !tmp)
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT) {
			r = err_set(P11J_E_SYSTEM, "cannot remove %s/%s: %s", c->dir, de->d_name,
				    strerror(errno));
			continue;
		}
		n += entry;
	}
	closedir(d);
	*ret_n = n;
	return r;
}

cache_state cache_entry_state(const json_t *entry, int64_t now, int64_t margin)
{
	const json_t *exp = json_object_get(entry, "expires_at");
	bool has_rt = json_is_string(json_object_get(entry, "refresh_token"));

	if (json_is_integer(exp) && json_integer_value(exp) - margin > now)
		return CACHE_FRESH;
	return has_rt ? CACHE_REFRESHABLE : CACHE_STALE;
}
