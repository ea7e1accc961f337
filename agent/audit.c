/* SPDX-License-Identifier: MIT */
#include "agent/audit.h"
#include "jose/jsonfast.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

/* The record's members, in the order of the line after the peer (jkt,
 * htm, htu and iat: dpop records). */
static const char *const audit_members[] = {"op",  "key", "alg", "kid", "jkt", "htm", "htu",
                                            "iss", "sub", "aud", "jti", "iat", "exp", NULL};

/* The record's time, "2026-11-23T10:11:12.345Z": the part up to the
 * seconds is made once per second and thread (gmtime_r and snprintf cost
 * more than the rest of a record). */
static int audit_stamp(int64_t now_ms, char *stamp, size_t len)
{
	static _Thread_local time_t last = (time_t)-1;
	static _Thread_local char head[48];
	static _Thread_local bool have;
	time_t secs = (time_t)(now_ms / 1000);
	int ms = (int)(now_ms % 1000);

	if (!have || secs != last) {
		struct tm tm;

		have = false;
		if (gmtime_r(&secs, &tm) == NULL)
			return err_set(P11J_E_INTERNAL, "time out of range");
		snprintf(head, sizeof(head), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
		         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
		last = secs;
		have = true;
	}
	if (ms >= 0 && strlen(head) + 6 < len) {
		size_t n = strlen(head);

		memcpy(stamp, head, n);
		stamp[n] = '.';
		stamp[n + 1] = (char)('0' + ms / 100);
		stamp[n + 2] = (char)('0' + ms / 10 % 10);
		stamp[n + 3] = (char)('0' + ms % 10);
		stamp[n + 4] = 'Z';
		stamp[n + 5] = '\0';
	} else {
		snprintf(stamp, len, "%s.%03dZ", head, ms);
	}
	return 0;
}

int audit_line_append(jsonf_buf *out, const proto_audit *a, const proto_peer *peer,
                      int64_t now_ms)
{
	char stamp[64];
	jsonf_buf b = *out; /* appended to; *out changes only on success */
	size_t start = out->len;
	int r;

	if ((r = audit_stamp(now_ms, stamp, sizeof(stamp))) < 0)
		return r;
	/* written straight out (one JSON object per line): time, the peer,
	 * only the listed members, whatever else a record might carry (and
	 * never a JWT or a PIN) stays out of the trail, then the result */
	if ((r = jsonf_reserve(&b, 512)) < 0 || (r = jsonf_str(&b, "{\"time\":")) < 0 ||
	    (r = jsonf_quote(&b, stamp, strlen(stamp))) < 0)
		goto out;
	if (peer != NULL &&
	    ((r = jsonf_str(&b, ",\"uid\":")) < 0 || (r = jsonf_int(&b, peer->uid)) < 0 ||
	     (r = jsonf_str(&b, ",\"gid\":")) < 0 || (r = jsonf_int(&b, peer->gid)) < 0 ||
	     (r = jsonf_str(&b, ",\"pid\":")) < 0 || (r = jsonf_int(&b, peer->pid)) < 0))
		goto out;
	if (a->text != NULL && (r = jsonf_raw(&b, a->text, a->text_len)) < 0)
		goto out;
	for (const char *const *m = audit_members; a->text == NULL && a->fields != NULL && *m != NULL;
	     m++) {
		json_t *v = json_object_get(a->fields, *m);
		size_t mark = b.len;

		if (v == NULL)
			continue;
		if ((r = jsonf_raw(&b, ",\"", 2)) < 0 || (r = jsonf_str(&b, *m)) < 0 ||
		    (r = jsonf_raw(&b, "\":", 2)) < 0)
			goto out;
		r = jsonf_append_any(&b, v);
		if (r > 0) { /* unprintable: the member is left out */
			b.len = mark;
			r = 0;
		}
		if (r < 0)
			goto out;
	}
	if ((r = jsonf_str(&b, ",\"result\":")) < 0 ||
	    (r = jsonf_str(&b, a->result == 0 ? "\"ok\"" : "\"")) < 0 ||
	    (a->result != 0 && ((r = jsonf_str(&b, err_code_name(a->result))) < 0 ||
	                        (r = jsonf_raw(&b, "\"", 1)) < 0)) ||
	    (r = jsonf_raw(&b, "}\n", 2)) < 0)
		goto out;
	*out = b;
	return 0;
out:
	/* the buffer may have moved: the caller's records go with it, and
	 * what this line added is wiped */
	jsonf_rollback(&b, start);
	*out = b;
	return err_set(r, "out of memory building an audit line");
}

int audit_line(const proto_audit *a, const proto_peer *peer, int64_t now_ms, char **ret_line,
               size_t *ret_len)
{
	jsonf_buf b = { 0 };
	char *line;
	int r;

	if ((r = audit_line_append(&b, a, peer, now_ms)) < 0 ||
	    (line = jsonf_take(&b, ret_len)) == NULL) {
		jsonf_free(&b);
		return r < 0 ? r : err_set(P11J_E_NOMEM, "out of memory building an audit line");
	}
	*ret_line = line;
	return 0;
}

enum sink_kind { SINK_NONE, SINK_SYSLOG, SINK_STDERR, SINK_FILE };

struct audit_sink {
	enum sink_kind kind;
	char *path; /* the file, or the syslog socket */
	int fd;
	pthread_mutex_t mu; /* fd, across a reopen or reconnect */
	atomic_bool reopen;
};

/* Syslog is spoken here rather than through syslog(3), which drops a
 * record without a word when nothing listens at /dev/log: the audit trail
 * must know when a record is lost, to refuse the JWT (fail closed). */
static int syslog_connect(const char *path, int *ret_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return err_set(P11J_E_BAD_REQUEST, "syslog socket path '%s' is too long", path);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(P11J_E_SYSTEM, "socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		close(fd);
		return err_set(P11J_E_SYSTEM, "no syslog daemon listening at %s: %s", path,
		               strerror(e));
	}
	*ret_fd = fd;
	return 0;
}

/* One line as one syslog message, in the format syslog(3) uses:
 * "<PRI>Mmm dd hh:mm:ss p11jwt-agent[PID]: line". s->mu held. */
static int syslog_send(audit_sink *s, const char *line, size_t n)
{
	char head[96], stamp[32];
	struct tm tm;
	time_t now = time(NULL);
	struct iovec iov[2];
	size_t hl;

	if (localtime_r(&now, &tm) == NULL || strftime(stamp, sizeof(stamp), "%b %e %T", &tm) == 0)
		stamp[0] = '\0';
	hl = (size_t)snprintf(head, sizeof(head), "<%d>%s p11jwt-agent[%d]: ",
	                      LOG_AUTHPRIV | LOG_INFO, stamp, (int)getpid());
	iov[0] = (struct iovec){ .iov_base = head, .iov_len = hl };
	iov[1] = (struct iovec){ .iov_base = (void *)line, .iov_len = n };
	for (int attempt = 0; attempt < 2; attempt++) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
		ssize_t w;

		if (s->fd < 0 && syslog_connect(s->path, &s->fd) < 0)
			return P11J_E_SYSTEM;
		do
			w = sendmsg(s->fd, &mh, MSG_NOSIGNAL);
		while (w < 0 && errno == EINTR);
		if (w >= 0)
			return 0;
		/* the daemon restarted (a new socket at the path): once more */
		err_set(P11J_E_SYSTEM, "cannot send the audit record to syslog at %s: %s", s->path,
		        strerror(errno));
		close(s->fd);
		s->fd = -1;
	}
	return P11J_E_SYSTEM;
}

static int open_file(const char *path, int *ret_fd)
{
	struct stat st;
	int fd =
	    open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);

	if (fd < 0)
		return err_set(P11J_E_SYSTEM, "cannot open audit file '%s': %s", path,
		               strerror(errno));
	if (fstat(fd, &st) < 0) {
		close(fd);
		return err_set(P11J_E_SYSTEM, "cannot stat audit file '%s': %s", path,
		               strerror(errno));
	}
	if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
		close(fd);
		return err_set(P11J_E_INSECURE,
		               "audit file '%s' must be a regular file of ours that group and "
		               "others cannot write (mode %04o, uid %u)",
		               path, (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid);
	}
	*ret_fd = fd;
	return 0;
}

int audit_open(const char *spec, audit_sink **ret)
{
	return audit_open_at(spec, "/dev/log", ret);
}

int audit_open_at(const char *spec, const char *syslog_path, audit_sink **ret)
{
	audit_sink *s = calloc(1, sizeof(*s));
	int r;

	if (s == NULL)
		return err_nomem();
	s->fd = -1;
	pthread_mutex_init(&s->mu, NULL);
	if (strcmp(spec, "none") == 0) {
		s->kind = SINK_NONE;
	} else if (strcmp(spec, "syslog") == 0 || strcmp(spec, "auto") == 0) {
		s->kind = SINK_SYSLOG;
		s->path = strdup(syslog_path);
		if (s->path == NULL) {
			audit_close(s);
			return err_nomem();
		}
		if ((r = syslog_connect(s->path, &s->fd)) < 0) {
			if (strcmp(spec, "syslog") == 0) {
				audit_close(s);
				return r;
			}
			/* auto: wherever the agent's stderr goes (the journal
			 * under systemd, the container's log) */
			free(s->path);
			s->path = NULL;
			s->kind = SINK_STDERR;
			s->fd = STDERR_FILENO;
		}
	} else if (strcmp(spec, "stderr") == 0) {
		s->kind = SINK_STDERR;
		s->fd = STDERR_FILENO;
	} else if (strncmp(spec, "file:", 5) == 0 && spec[5] != '\0') {
		s->kind = SINK_FILE;
		s->path = strdup(spec + 5);
		if (s->path == NULL) {
			audit_close(s);
			return err_nomem();
		}
		if ((r = open_file(s->path, &s->fd)) < 0) {
			audit_close(s);
			return r;
		}
	} else {
		audit_close(s);
		return err_set(
		    P11J_E_BAD_REQUEST,
		    "audit destination '%.200s' is not auto, syslog, stderr, file:PATH or none",
		    spec);
	}
	*ret = s;
	return 0;
}

bool audit_enabled(const audit_sink *s)
{
	return s != NULL && s->kind != SINK_NONE;
}

bool audit_on_stderr(const audit_sink *s)
{
	return s != NULL && s->kind == SINK_STDERR;
}

void audit_reopen_later(audit_sink *s)
{
	if (s != NULL)
		atomic_store(&s->reopen, true);
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int audit_write(audit_sink *s, const char *line, size_t len)
{
	int r = 0;

	if (s == NULL || s->kind == SINK_NONE)
		return 0;
	pthread_mutex_lock(&s->mu);
	if (s->kind == SINK_SYSLOG) {
		/* one message per line, without its newline */
		while (len > 0 && r == 0) {
			const char *nl = memchr(line, '\n', len);
			size_t n = nl ? (size_t)(nl - line) : len;

			if (n > 0)
				r = syslog_send(s, line, n);
			n += nl ? 1 : 0;
			line += n;
			len -= n;
		}
		pthread_mutex_unlock(&s->mu);
		return r;
	}
	if (s->kind == SINK_FILE && atomic_exchange(&s->reopen, false)) {
		int fd = -1;

		/* keep writing to the old file if the new one cannot be opened */
		if (open_file(s->path, &fd) == 0) {
			close(s->fd);
			s->fd = fd;
		}
	}
	/* O_APPEND and one write() per batch of whole lines: whole lines,
	 * even with other writers of the file */
	if (write_all(s->fd, line, len) < 0)
		r = err_set(P11J_E_SYSTEM, "cannot write the audit record to %s: %s",
		            s->path ? s->path : "stderr", strerror(errno));
	pthread_mutex_unlock(&s->mu);
	return r;
}

void audit_close(audit_sink *s)
{
	if (s == NULL)
		return;
	if ((s->kind == SINK_FILE || s->kind == SINK_SYSLOG) && s->fd >= 0)
		close(s->fd);
	pthread_mutex_destroy(&s->mu);
	free(s->path);
	free(s);
}
