/* SPDX-License-Identifier: MIT */
#include "cli/cache.h"
#include "common/err.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

static int read_entry(const char *path, json_t **ret)
{
	struct stat st;
	char *buf;
	ssize_t n;
	size_t len = 0;
	json_t *e;
	int fd, r;

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
	r = cache_entry_parse(buf, len, &e);
	freezero_buf(buf, (size_t)st.st_size + 1);
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

int cache_put(const tcache *c, const char *key, const json_t *entry)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	char *s;
	size_t len, off = 0;
	int fd, r = 0;

	if (!key_ok(key))
		return err_set(P11J_E_INTERNAL, "bad cache key");
	snprintf(path, sizeof(path), "%s/%s.json", c->dir, key);
	snprintf(tmp, sizeof(tmp), "%s/.%s.XXXXXX", c->dir, key);
	s = json_dumps(entry, JSON_COMPACT);
	if (s == NULL)
		return err_nomem();
	len = strlen(s);
	fd = mkstemp(tmp); /* 0600 */
	if (fd < 0) {
		freezero_str(s);
		return err_set(P11J_E_SYSTEM, "cannot create a file in %s: %s", c->dir,
			       strerror(errno));
	}
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
	freezero_str(s);
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
		bool tmp = de->d_name[0] == '.' && l > 66;

		if (!entry && !lock && !tmp)
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
