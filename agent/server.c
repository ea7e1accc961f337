/* SPDX-License-Identifier: MIT */
#include "agent/server.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 16384
#define IN_CAP (PROTO_MAX_LINE + 1)  /* one maximal line and its newline */
#define OUT_HIGH (64 * 1024)         /* stop taking requests while this much is unsent */
#define DRAIN_MS 1000                /* discard input this long after a fatal error line */
#define DRAIN_MAX (4 * 1024 * 1024)
#define TICK_MS 250                  /* timer resolution */
#define STOP_DEADLINE_MS 10000       /* srv_stop(): in-flight answers get this long */

enum conn_state {
	C_OPEN,  /* reading requests */
	C_DRAIN, /* an error line is being sent; then half-close and discard input */
	C_DEAD,  /* closed: freed after this loop round, or when its worker answers */
};

struct conn {
	int fd;
	enum conn_state state;
	proto_peer peer;
	char *in; /* unprocessed input: at most IN_CAP bytes */
	size_t in_len, in_cap;
	char *out; /* unsent answers (signed JWTs: wiped when freed) */
	size_t out_len, out_off, out_cap;
	bool busy; /* one request at a worker: answers stay in order */
	bool eof;  /* the client shut down its side */
	bool wr_shut;
	uint64_t line_since; /* when the current partial line began (0: none) */
	uint64_t out_since;  /* when unsent output last moved (0: none pending) */
	uint64_t drain_until;
	size_t drained;
	uint32_t events; /* epoll interest now */
	struct conn *next, *prev;
};

struct job {
	struct conn *c;
	proto_peer peer;
	char *line;
	size_t len;
	char *resp;
	size_t rlen;
	int rc;
	struct job *next;
};

struct srv {
	srv_config cfg;
	int listen_fd, ep, wake[2], done_fd;
	pthread_t *workers;
	unsigned nworkers;
	pthread_mutex_t mu; /* the two queues below */
	pthread_cond_t cv;
	struct job *q_head, *q_tail;       /* to the workers */
	struct job *done_head, *done_tail; /* back to the loop */
	bool quit;
	/* owned by the loop thread */
	struct conn *conns;
	struct conn *grave; /* closed, not at a worker: freed after each round */
	size_t nconns;      /* open sockets (not counting C_DEAD) */
	size_t inflight;
	bool stopping;
	char scratch[READ_CHUNK];
};

/* epoll tags for the non-connection fds */
static char tag_listen, tag_wake, tag_done;

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

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
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
	if (chmod(sa.sun_path, 0600) < 0 || listen(fd, SOMAXCONN) < 0) {
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

/* ---- workers ------------------------------------------------------------ */

static void *worker_main(void *arg)
{
	srv *s = arg;

	for (;;) {
		struct job *j;
		uint64_t one = 1;
		ssize_t n;

		pthread_mutex_lock(&s->mu);
		while (s->q_head == NULL && !s->quit)
			pthread_cond_wait(&s->cv, &s->mu);
		j = s->q_head;
		if (j == NULL) {
			pthread_mutex_unlock(&s->mu);
			return NULL;
		}
		s->q_head = j->next;
		if (s->q_head == NULL)
			s->q_tail = NULL;
		pthread_mutex_unlock(&s->mu);

		/* the only work off the loop: parse, check, sign (C_Sign blocks) */
		j->rc = proto_handle(s->cfg.env, &j->peer, j->line, j->len, &j->resp, &j->rlen);
		freezero_buf(j->line, j->len);
		j->line = NULL;

		pthread_mutex_lock(&s->mu);
		j->next = NULL;
		if (s->done_tail)
			s->done_tail->next = j;
		else
			s->done_head = j;
		s->done_tail = j;
		pthread_mutex_unlock(&s->mu);
		n = write(s->done_fd, &one, sizeof(one));
		(void)n;
	}
}

static void submit(srv *s, struct job *j)
{
	pthread_mutex_lock(&s->mu);
	j->next = NULL;
	if (s->q_tail)
		s->q_tail->next = j;
	else
		s->q_head = j;
	s->q_tail = j;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* ---- connections -------------------------------------------------------- */

static void conn_unlink(srv *s, struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
}

static void conn_free_bufs(struct conn *c)
{
	if (c->in)
		freezero_buf(c->in, c->in_cap);
	if (c->out)
		freezero_buf(c->out, c->out_cap);
	c->in = c->out = NULL;
	c->in_len = c->in_cap = c->out_len = c->out_off = c->out_cap = 0;
}

/* Close the socket now; the struct lives until nothing can refer to it
 * (the end of this loop round, or its worker's answer), so callers may look
 * at c->state after any call that might close. */
static void conn_close(srv *s, struct conn *c)
{
	if (c->state == C_DEAD)
		return;
	epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	s->nconns--;
	conn_free_bufs(c);
	conn_unlink(s, c);
	c->state = C_DEAD;
	if (!c->busy) {
		c->next = s->grave;
		s->grave = c;
	}
}

static void bury(srv *s)
{
	while (s->grave) {
		struct conn *c = s->grave;

		s->grave = c->next;
		free(c);
	}
}

static void conn_interest(srv *s, struct conn *c)
{
	uint32_t ev = 0;

	if (c->state == C_DRAIN)
		ev = c->wr_shut ? EPOLLIN : 0;
	else if (!c->eof && c->in_len < IN_CAP)
		ev = EPOLLIN;
	if (c->out_len > c->out_off)
		ev |= EPOLLOUT;
	if (ev != c->events) {
		struct epoll_event e = { .events = ev, .data.ptr = c };

		epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &e);
		c->events = ev;
	}
}

/* Queue an answer (taking ownership of resp). */
static int conn_queue(struct conn *c, char *resp, size_t len)
{
	if (c->out == NULL) {
		c->out = resp;
		c->out_len = c->out_cap = len;
		c->out_off = 0;
		return 0;
	}
	if (c->out_off > 0) {
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if (util_secret_reserve(&c->out, &c->out_cap, c->out_len, len) < 0) {
		freezero_buf(resp, len);
		return -1;
	}
	memcpy(c->out + c->out_len, resp, len);
	c->out_len += len;
	freezero_buf(resp, len);
	return 0;
}

/* Send what can be sent now. Returns -1 when the client is gone. */
static int conn_flush(struct conn *c, uint64_t now)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			return -1;
		}
		c->out_off += (size_t)n;
		c->out_since = now;
	}
	if (c->out_off == c->out_len && c->out) {
		freezero_buf(c->out, c->out_cap);
		c->out = NULL;
		c->out_len = c->out_off = c->out_cap = 0;
		c->out_since = 0;
	}
	return 0;
}

/* A fatal error line: send it, then half-close and discard what the client
 * still sends for a moment, so it reads the line before it sees EOF (closing
 * with unread input would make the kernel send a reset instead). */
static void conn_fatal(srv *s, struct conn *c, int code, const char *msg)
{
	char *resp = NULL;
	size_t rlen = 0;

	if (c->in) {
		freezero_buf(c->in, c->in_cap);
		c->in = NULL;
		c->in_len = c->in_cap = 0;
	}
	c->state = C_DRAIN;
	c->line_since = 0;
	if (proto_error_line(NULL, code, msg, &resp, &rlen) == 0 && conn_queue(c, resp, rlen) < 0)
		conn_close(s, c);
}

/* Hand the next complete line to a worker, if this connection may have one. */
static void conn_dispatch(srv *s, struct conn *c, uint64_t now)
{
	struct job *j;
	char *nl;
	size_t len;

	if (c->state != C_OPEN || c->busy || s->stopping || c->out_len - c->out_off > OUT_HIGH)
		return;
	nl = c->in_len ? memchr(c->in, '\n', c->in_len) : NULL;
	if (nl == NULL) {
		if (c->in_len == IN_CAP) {
			conn_fatal(s, c, P11J_E_REQUEST_TOO_LARGE, "request line over 65536 bytes; closing");
			srv_log(s, LOG_WARNING, "uid %u pid %d: request line too large, closed",
				(unsigned)c->peer.uid, (int)c->peer.pid);
		} else if (c->in_len && c->line_since == 0) {
			c->line_since = now;
		}
		return;
	}
	len = (size_t)(nl - c->in);
	j = calloc(1, sizeof(*j));
	if (j == NULL || (j->line = malloc(len + 1)) == NULL) {
		free(j);
		conn_close(s, c);
		return;
	}
	memcpy(j->line, c->in, len);
	j->line[len] = '\0';
	j->len = len;
	j->c = c;
	j->peer = c->peer;
	c->in_len -= len + 1;
	memmove(c->in, nl + 1, c->in_len);
	memset(c->in + c->in_len, 0, len + 1); /* the request is gone from the buffer */
	if (c->in_len == 0) {
		freezero_buf(c->in, c->in_cap);
		c->in = NULL;
		c->in_cap = 0;
		c->line_since = 0;
	} else {
		c->line_since = memchr(c->in, '\n', c->in_len) ? 0 : now;
	}
	c->busy = true;
	s->inflight++;
	submit(s, j);
}

static void conn_readable(srv *s, struct conn *c, uint64_t now)
{
	ssize_t n;

	if (c->state == C_DRAIN) {
		n = recv(c->fd, s->scratch, sizeof(s->scratch), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			conn_close(s, c);
		else if (n > 0 && (c->drained += (size_t)n) > DRAIN_MAX)
			conn_close(s, c);
		return;
	}
	if (c->in_cap < IN_CAP && c->in_cap - c->in_len < READ_CHUNK) {
		size_t want = c->in_len + READ_CHUNK;

		if (want > IN_CAP)
			want = IN_CAP;
		if (util_secret_reserve(&c->in, &c->in_cap, c->in_len, want - c->in_len - 1) < 0) {
			conn_close(s, c);
			return;
		}
	}
	{
		size_t room = (c->in_cap < IN_CAP ? c->in_cap : IN_CAP) - c->in_len;

		if (room == 0)
			return; /* full: conn_dispatch() deals with it */
		n = recv(c->fd, c->in + c->in_len, room, MSG_DONTWAIT);
	}
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			conn_close(s, c);
		return;
	}
	if (n == 0) {
		c->eof = true;
		return;
	}
	c->in_len += (size_t)n;
}

/* After any event on c: dispatch, flush, close when done, set interest. */
static void conn_step(srv *s, struct conn *c, uint64_t now)
{
	if (c->state == C_DEAD)
		return;
	conn_dispatch(s, c, now);
	if (c->state == C_DEAD)
		return;
	if (conn_flush(c, now) < 0) {
		conn_close(s, c);
		return;
	}
	if (c->state == C_DRAIN && c->out_len == 0 && !c->wr_shut) {
		shutdown(c->fd, SHUT_WR);
		c->wr_shut = true;
		c->drain_until = now + DRAIN_MS;
	}
	/* the client is done: close once its last answer is out */
	if (c->eof && !c->busy && c->out_len == 0 &&
	    (c->in_len == 0 || !memchr(c->in, '\n', c->in_len))) {
		conn_close(s, c);
		return;
	}
	conn_interest(s, c);
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
	for (;;) {
		struct ucred cred;
		socklen_t clen = sizeof(cred);
		struct epoll_event e;
		struct conn *c;
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE)
				srv_log(s, LOG_ERR, "accept: %s", strerror(errno));
			else if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
				srv_log(s, LOG_ERR, "accept: %s", strerror(errno));
			return;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0) {
			srv_log(s, LOG_ERR, "SO_PEERCRED: %s", strerror(errno));
			close(fd);
			continue;
		}
		if (s->nconns >= s->cfg.max_connections) {
			refuse(s, fd, "too many connections; try again later");
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (c == NULL) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->peer.uid = cred.uid;
		c->peer.gid = cred.gid;
		c->peer.pid = cred.pid;
		c->events = EPOLLIN;
		e = (struct epoll_event){ .events = EPOLLIN, .data.ptr = c };
		if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &e) < 0) {
			srv_log(s, LOG_ERR, "epoll_ctl: %s", strerror(errno));
			close(fd);
			free(c);
			continue;
		}
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		s->nconns++;
	}
}

/* Answers from the workers, in the order they finished. */
static void srv_completions(srv *s, uint64_t now)
{
	struct job *j, *next;
	uint64_t v;
	ssize_t n = read(s->done_fd, &v, sizeof(v));

	(void)n;
	pthread_mutex_lock(&s->mu);
	j = s->done_head;
	s->done_head = s->done_tail = NULL;
	pthread_mutex_unlock(&s->mu);
	for (; j != NULL; j = next) {
		struct conn *c = j->c;

		next = j->next;
		s->inflight--;
		c->busy = false;
		if (c->state == C_DEAD) {
			/* the client left while we signed; this round's events may
			 * still name it, so it goes to the grave, not free() */
			c->next = s->grave;
			s->grave = c;
			if (j->resp)
				freezero_buf(j->resp, j->rlen);
		} else if (j->rc < 0) {
			conn_close(s, c); /* out of memory: drop this client */
		} else if (conn_queue(c, j->resp, j->rlen) < 0) {
			conn_close(s, c);
		} else {
			conn_step(s, c, now);
		}
		free(j);
	}
}

/* Clients that stall: half a line for too long, answers left unread. */
static void srv_timers(srv *s, uint64_t now)
{
	uint64_t line_to = s->cfg.line_timeout_ms ? s->cfg.line_timeout_ms : SRV_LINE_TIMEOUT_MS;
	struct conn *c, *next;

	for (c = s->conns; c != NULL; c = next) {
		next = c->next;
		if (c->state == C_DRAIN && c->wr_shut && now >= c->drain_until) {
			conn_close(s, c);
		} else if (c->line_since && now - c->line_since >= line_to && !c->busy) {
			srv_log(s, LOG_WARNING,
				"uid %u pid %d: half a request line for %llu ms, dropped",
				(unsigned)c->peer.uid, (int)c->peer.pid,
				(unsigned long long)(now - c->line_since));
			conn_fatal(s, c, P11J_E_BAD_REQUEST, "request line not finished in time; closing");
			conn_step(s, c, now);
		} else if (c->out_since && now - c->out_since >= SRV_SEND_TIMEOUT_MS) {
			srv_log(s, LOG_WARNING, "uid %u pid %d: answers unread for %d ms, dropped",
				(unsigned)c->peer.uid, (int)c->peer.pid, SRV_SEND_TIMEOUT_MS);
			conn_close(s, c);
		}
	}
}

int srv_new(const srv_config *cfg, int listen_fd, srv **ret)
{
	srv *s = calloc(1, sizeof(*s));
	struct epoll_event e;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int r;

	if (s == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	s->cfg = *cfg;
	s->listen_fd = listen_fd;
	s->wake[0] = s->wake[1] = s->done_fd = s->ep = -1;
	s->nworkers = cfg->workers ? cfg->workers : (unsigned)(ncpu > 1 ? 2 * ncpu : 2);
	if (s->nworkers < 2 && cfg->workers == 0)
		s->nworkers = 2;
	if (s->nworkers > SRV_MAX_WORKERS)
		s->nworkers = SRV_MAX_WORKERS;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0 ||
	    (s->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
	    (s->ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		r = err_set(P11J_E_SYSTEM, "event loop: %s", strerror(errno));
		goto fail;
	}
	fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
	e = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &tag_listen };
	if (epoll_ctl(s->ep, EPOLL_CTL_ADD, listen_fd, &e) < 0)
		goto sysfail;
	e = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &tag_wake };
	if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake[0], &e) < 0)
		goto sysfail;
	e = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &tag_done };
	if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->done_fd, &e) < 0)
		goto sysfail;
	s->workers = calloc(s->nworkers, sizeof(*s->workers));
	if (s->workers == NULL) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto fail;
	}
	for (unsigned i = 0; i < s->nworkers; i++) {
		pthread_attr_t attr;

		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 512 * 1024);
		r = pthread_create(&s->workers[i], &attr, worker_main, s);
		pthread_attr_destroy(&attr);
		if (r != 0) {
			s->nworkers = i;
			r = err_set(P11J_E_SYSTEM, "cannot start signing threads: %s", strerror(r));
			goto fail;
		}
	}
	*ret = s;
	return 0;
sysfail:
	r = err_set(P11J_E_SYSTEM, "epoll_ctl: %s", strerror(errno));
fail:
	srv_free(s);
	return r;
}

void srv_stop(srv *s)
{
	ssize_t n = write(s->wake[1], "x", 1);

	(void)n;
}

int srv_run(srv *s)
{
	struct epoll_event ev[64];
	uint64_t last_tick = now_ms(), deadline = 0;

	for (;;) {
		int n = epoll_wait(s->ep, ev, 64, TICK_MS);
		uint64_t now = now_ms();

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return err_set(P11J_E_SYSTEM, "epoll_wait: %s", strerror(errno));
		}
		for (int i = 0; i < n; i++) {
			void *p = ev[i].data.ptr;
			struct conn *c;

			if (p == &tag_listen) {
				if (!s->stopping)
					srv_accept(s);
			} else if (p == &tag_wake) {
				if (!s->stopping) {
					/* stop taking clients and requests; answer what is
					 * at the workers */
					s->stopping = true;
					deadline = now + STOP_DEADLINE_MS;
					epoll_ctl(s->ep, EPOLL_CTL_DEL, s->listen_fd, NULL);
				}
			} else if (p == &tag_done) {
				srv_completions(s, now);
			} else {
				c = p;
				if (c->state == C_DEAD)
					continue; /* closed earlier in this round */
				if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
					conn_readable(s, c, now);
				conn_step(s, c, now);
			}
		}
		bury(s);
		if (now - last_tick >= TICK_MS) {
			srv_timers(s, now);
			last_tick = now;
		}
		if (s->stopping) {
			bool flushed = true;

			for (struct conn *c = s->conns; c; c = c->next)
				flushed = flushed && c->out_len == 0;
			if ((s->inflight == 0 && flushed) || now >= deadline)
				break;
		}
	}
	while (s->conns)
		conn_close(s, s->conns);
	bury(s);
	return 0;
}

void srv_free(srv *s)
{
	if (s == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	s->quit = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	for (unsigned i = 0; i < s->nworkers; i++)
		pthread_join(s->workers[i], NULL);
	free(s->workers);
	/* jobs never collected (a stop past its deadline): their connections
	 * were closed and marked dead, so free both here */
	for (struct job *j = s->done_head, *next; j; j = next) {
		next = j->next;
		if (j->c && j->c->state == C_DEAD)
			free(j->c);
		if (j->resp)
			freezero_buf(j->resp, j->rlen);
		free(j);
	}
	for (struct job *j = s->q_head, *next; j; j = next) {
		next = j->next;
		if (j->c && j->c->state == C_DEAD)
			free(j->c);
		free(j->line);
		free(j);
	}
	if (s->ep >= 0)
		close(s->ep);
	if (s->done_fd >= 0)
		close(s->done_fd);
	if (s->wake[0] >= 0) {
		close(s->wake[0]);
		close(s->wake[1]);
	}
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s);
}
