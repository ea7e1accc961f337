/* SPDX-License-Identifier: MIT */
#include "common/util.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* glibc's explicit_bzero: a wipe the compiler may not drop, as
 * OPENSSL_cleanse is, without making every program load libcrypto (the
 * CLI's agent commands do not, see docs/design.md). */
void util_wipe(void *p, size_t len)
{
	explicit_bzero(p, len);
}

void freezero_buf(void *p, size_t len)
{
	if (p == NULL)
		return;
	util_wipe(p, len);
	free(p);
}

void freezero_str(char *s)
{
	if (s == NULL)
		return;
	freezero_buf(s, strlen(s));
}

bool util_word_in(const char *list, const char *w)
{
	size_t n = strlen(w);

	for (const char *p = list; p && *p;) {
		const char *e = strchr(p, ' ');
		size_t l = e ? (size_t)(e - p) : strlen(p);

		if (l == n && strncmp(p, w, n) == 0)
			return true;
		p = e ? e + 1 : NULL;
	}
	return false;
}

int util_secret_reserve(char **buf, size_t *cap, size_t used, size_t need)
{
	size_t ncap = *cap ? *cap : 64;
	char *nb;

	if (used + need + 1 <= *cap)
		return 0;
	while (ncap < used + need + 1) {
		if (ncap > SIZE_MAX / 2)
			return err_nomem();
		ncap *= 2;
	}
	nb = malloc(ncap);
	if (nb == NULL)
		return err_nomem();
	if (*buf) {
		memcpy(nb, *buf, used);
		freezero_buf(*buf, *cap);
	}
	*buf = nb;
	*cap = ncap;
	return 0;
}

void util_wipe_free(void *p)
{
	if (p == NULL)
		return;
	util_wipe(p, malloc_usable_size(p));
	free(p);
}

void *util_wipe_realloc(void *p, size_t n)
{
	size_t old;
	void *np;

	if (p == NULL)
		return malloc(n);
	if (n == 0) {
		util_wipe_free(p);
		return NULL;
	}
	old = malloc_usable_size(p);
	np = malloc(n);
	if (np == NULL)
		return NULL;
	memcpy(np, p, old < n ? old : n);
	util_wipe_free(p);
	return np;
}

void util_chomp(char *s)
{
	size_t n = strlen(s);

	if (n > 0 && s[n - 1] == '\n')
		s[--n] = '\0';
	if (n > 0 && s[n - 1] == '\r')
		s[--n] = '\0';
}

int util_read_file(const char *path, size_t max, bool secret, char **ret_buf, size_t *ret_len)
{
	int fd = -1, r;
	struct stat st;
	char *buf = NULL;
	size_t len = 0, cap = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return err_set(errno == ENOENT ? P11J_E_NOT_FOUND : P11J_E_SYSTEM,
			       "cannot open '%s': %s", path, strerror(errno));
	if (fstat(fd, &st) < 0) {
		r = err_set(P11J_E_SYSTEM, "cannot stat '%s': %s", path, strerror(errno));
		goto out;
	}
	if (secret) {
		if (!S_ISREG(st.st_mode)) {
			r = err_set(P11J_E_INSECURE, "'%s' is not a regular file", path);
			goto out;
		}
		if (st.st_uid != geteuid() && st.st_uid != 0) {
			r = err_set(P11J_E_INSECURE, "'%s' is owned by uid %u, not by us", path,
				    (unsigned)st.st_uid);
			goto out;
		}
		if (st.st_mode & (S_IRWXG | S_IRWXO)) {
			r = err_set(P11J_E_INSECURE,
				    "'%s' is accessible by group or others (mode %04o); chmod 600 it",
				    path, (unsigned)(st.st_mode & 07777));
			goto out;
		}
	}
	for (;;) {
		ssize_t n;

		if (len + 1 >= cap) {
			size_t ncap = cap ? cap * 2 : 256;
			char *nb;

			if (ncap > max + 2)
				ncap = max + 2;
			if (ncap <= len + 1) {
				r = err_set(P11J_E_REQUEST_TOO_LARGE, "'%s' is larger than %zu bytes",
					    path, max);
				goto out;
			}
			nb = malloc(ncap);
			if (nb == NULL) {
				r = err_set(P11J_E_NOMEM, "out of memory reading '%s'", path);
				goto out;
			}
			if (buf != NULL) {
				memcpy(nb, buf, len);
				if (secret)
					util_wipe(buf, cap);
				free(buf);
			}
			buf = nb;
			cap = ncap;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = err_set(P11J_E_SYSTEM, "cannot read '%s': %s", path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > max) {
			r = err_set(P11J_E_REQUEST_TOO_LARGE, "'%s' is larger than %zu bytes", path,
				    max);
			goto out;
		}
	}
	if (buf == NULL) {
		buf = malloc(1);
		if (buf == NULL) {
			r = err_nomem();
			goto out;
		}
		cap = 1;
	}
	buf[len] = '\0';
	*ret_buf = buf;
	if (ret_len != NULL)
		*ret_len = len;
	buf = NULL;
	r = 0;
out:
	if (buf != NULL) {
		util_wipe(buf, cap);
		free(buf);
	}
	if (fd >= 0)
		close(fd);
	return r;
}

int util_hex(const uint8_t *in, size_t len, char **ret)
{
	static const char hex[] = "0123456789abcdef";
	char *s = malloc(len * 2 + 1);

	if (s == NULL)
		return err_nomem();
	for (size_t i = 0; i < len; i++) {
		s[2 * i] = hex[in[i] >> 4];
		s[2 * i + 1] = hex[in[i] & 15];
	}
	s[len * 2] = '\0';
	*ret = s;
	return 0;
}

static int64_t (*clock_override)(void);

int64_t util_now(void)
{
	if (clock_override != NULL)
		return clock_override();
	return (int64_t)time(NULL);
}

void util_set_clock(int64_t (*fn)(void))
{
	clock_override = fn;
}
