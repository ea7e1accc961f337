/* SPDX-License-Identifier: MIT */
#include "agent/server.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#define SRV_STACK (512 * 1024)
#define SRV_SEND_TIMEOUT 30 /* seconds a client may leave a response unread */

struct conn {
	int fd;
	proto_peer peer;
	srv *s;
	struct conn *next, *prev;
};

struct srv {
	srv_config cfg;
	int listen_fd;
	int wake[2]; /* self-pipe: srv_stop() writes, srv_run() polls */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct conn *conns;
	size_t nconns;
};

static void srv_log(const srv *s, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void srv_log(const srv *s, int level, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (s->cfg.log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	s->cfg.log(level, buf);
}

static int make_socket_dir(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;
	struct stat st;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		return 0; /* relative name in the current directory */
	if (slash == dir)
		return err_set(P11J_E_INSECURE, "refusing to put the socket directly in /");
	*slash = '\0';
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return err_set(P11J_E_SYSTEM, "cannot create socket directory '%s': %s", dir,
			       strerror(errno));
	if (lstat(dir, &st) < 0)
		return err_set(P11J_E_SYSTEM, "cannot stat '%s': %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return err_set(P11J_E_INSECURE, "'%s' is not a directory", dir);
	if (st.st_uid != geteuid())
		return err_set(P11J_E_INSECURE, "socket directory '%s' is owned by uid %u, not us",
			       dir, (unsigned)st.st_uid);
	if (st.st_mode & 077)
		return err_set(P11J_E_INSECURE,
			       "socket directory '%s' is accessible by others (mode %04o); it must "
			       "be 0700",
			       dir, (unsigned)(st.st_mode & 07777));
	return 0;
}

int srv_listen(const char *path, int *ret_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	mode_t old;
	int fd = -1, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return err_set(P11J_E_BAD_REQUEST, "socket path '%s' is longer than %zu bytes", path,
			       sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if ((r = make_socket_dir(path)) < 0)
		return r;
	if (lstat(path, &st) == 0) {
		int probe;

		if (!S_ISSOCK(st.st_mode))
			return err_set(P11J_E_INSECURE, "'%s' exists and is not a socket", path);
		probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(probe);
			return err_set(P11J_E_BAD_REQUEST, "an agent is already listening on '%s'",
				       path);
		}
		if (probe >= 0)
			close(probe);
		unlink(path); /* stale: nobody listens */
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(P11J_E_SYSTEM, "socket: %s", strerror(errno));
	old = umask(077);
	r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0) {
		r = err_set(P11J_E_SYSTEM, "cannot bind '%s': %s", path, strerror(errno));
		goto fail;
	}
	if (chmod(sa.sun_path, 0600) < 0 || listen(fd, 128) < 0) {
		int e = errno;

		unlink(sa.sun_path);
		r = err_set(P11J_E_SYSTEM, "cannot listen on '%s': %s", sa.sun_path, strerror(e));
		goto fail;
	}
	*ret_fd = fd;
	return 0;
fail:
	close(fd);
	return r;
}

int srv_new(const srv_config *cfg, int listen_fd, srv **ret)
{
	srv *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	s->cfg = *cfg;
	s->listen_fd = listen_fd;
	if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		free(s);
		return err_set(P11J_E_SYSTEM, "pipe: %s", strerror(errno));
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	*ret = s;
	return 0;
}

void srv_stop(srv *s)
{
	ssize_t n = write(s->wake[1], "x", 1);

	(void)n;
}

static int send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Closing a socket with unread input makes the kernel send a reset, and the
 * client may then lose the error we just sent. Half-close, and discard what
 * the client still sends for a moment, so it reads our answer, then EOF. */
static void linger_close(int fd, char *scratch, size_t len)
{
	struct timeval tv = { .tv_sec = 1 };
	size_t total = 0;

	shutdown(fd, SHUT_WR);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	while (total < 4 * 1024 * 1024) {
		ssize_t n = recv(fd, scratch, len, 0);

		if (n <= 0)
			break;
		total += (size_t)n;
	}
}

static void conn_unlink(struct conn *c)
{
	srv *s = c->s;

	pthread_mutex_lock(&s->mu);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* One connection: read, split at newlines, answer in order. The buffer holds
 * at most one maximal line plus its newline; past that the line is too long. */
static void *conn_main(void *arg)
{
	struct conn *c = arg;
	const size_t cap = PROTO_MAX_LINE + 1;
	char *buf = malloc(cap);
	size_t len = 0;

	if (buf == NULL)
		goto out;
	for (;;) {
		char *nl;
		ssize_t n;

		while ((nl = memchr(buf, '\n', len)) != NULL) {
			size_t linelen = (size_t)(nl - buf);
			char *resp = NULL;
			size_t rlen = 0;

			if (proto_handle(c->s->cfg.env, &c->peer, buf, linelen, &resp, &rlen) < 0)
				goto out; /* out of memory: drop this client */
			if (send_all(c->fd, resp, rlen) < 0) {
				free(resp);
				goto out;
			}
			free(resp);
			memmove(buf, nl + 1, len - linelen - 1);
			len -= linelen + 1;
		}
		if (len == cap) {
			char *resp = NULL;
			size_t rlen = 0;

			if (proto_error_line(NULL, P11J_E_REQUEST_TOO_LARGE,
					     "request line over 65536 bytes; closing", &resp,
					     &rlen) == 0)
				send_all(c->fd, resp, rlen);
			free(resp);
			linger_close(c->fd, buf, cap);
			srv_log(c->s, LOG_WARNING, "uid %u pid %d: request line too large, closed",
				(unsigned)c->peer.uid, (int)c->peer.pid);
			goto out;
		}
		n = recv(c->fd, buf + len, cap - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
out:
	free(buf);
	close(c->fd);
	conn_unlink(c);
	free(c);
	return NULL;
}

static void refuse(srv *s, int fd, const char *msg)
{
	char *resp = NULL;
	size_t rlen = 0;

	if (proto_error_line(NULL, P11J_E_BUSY, msg, &resp, &rlen) == 0)
		(void)send(fd, resp, rlen, MSG_NOSIGNAL | MSG_DONTWAIT);
	free(resp);
	close(fd);
	srv_log(s, LOG_WARNING, "%s", msg);
}

static void srv_accept(srv *s)
{
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	struct timeval tv = { .tv_sec = SRV_SEND_TIMEOUT };
	pthread_attr_t attr;
	struct conn *c;
	pthread_t th;
	int fd;

	fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
			srv_log(s, LOG_ERR, "accept: %s", strerror(errno));
		return;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0) {
		srv_log(s, LOG_ERR, "SO_PEERCRED: %s", strerror(errno));
		close(fd);
		return;
	}
	pthread_mutex_lock(&s->mu);
	if (s->nconns >= s->cfg.max_connections) {
		pthread_mutex_unlock(&s->mu);
		refuse(s, fd, "too many connections; try again later");
		return;
	}
	pthread_mutex_unlock(&s->mu);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		return;
	}
	c->fd = fd;
	c->s = s;
	c->peer.uid = cred.uid;
	c->peer.gid = cred.gid;
	c->peer.pid = cred.pid;
	pthread_mutex_lock(&s->mu);
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->nconns++;
	pthread_mutex_unlock(&s->mu);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, SRV_STACK);
	if (pthread_create(&th, &attr, conn_main, c) != 0) {
		srv_log(s, LOG_ERR, "cannot start a connection thread");
		close(fd);
		conn_unlink(c);
		free(c);
	}
	pthread_attr_destroy(&attr);
}

int srv_run(srv *s)
{
	struct pollfd p[2] = { { .fd = s->listen_fd, .events = POLLIN },
			       { .fd = s->wake[0], .events = POLLIN } };

	for (;;) {
		int n = poll(p, 2, -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return err_set(P11J_E_SYSTEM, "poll: %s", strerror(errno));
		}
		if (p[1].revents)
			break;
		if (p[0].revents & POLLIN)
			srv_accept(s);
	}
	/* Stop reading from every client; a request being signed finishes and
	 * its answer is still sent, then the thread sees EOF and ends. */
	pthread_mutex_lock(&s->mu);
	for (struct conn *c = s->conns; c != NULL; c = c->next)
		shutdown(c->fd, SHUT_RD);
	while (s->nconns > 0)
		pthread_cond_wait(&s->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	return 0;
}

void srv_free(srv *s)
{
	if (s == NULL)
		return;
	close(s->wake[0]);
	close(s->wake[1]);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s);
}
