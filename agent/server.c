/* SPDX-License-Identifier: MIT */
#include "agent/server.h"
#include "common/err.h"
#include "common/sockdir.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 16384
#define IN_CAP SRV_FRAME_CAP        /* one maximal line and its newline */
#define OUT_HIGH (64 * 1024)         /* stop taking requests while this much is unsent */
#define DRAIN_MS 1000                /* discard input this long after a fatal error line */
#define DRAIN_MAX (4 * 1024 * 1024)
#define TICK_MS 250                  /* timer resolution */
#define TURN_REQUESTS 8              /* requests a turn answers between looks at the epoll set */
#define STOP_DEADLINE_MS 10000       /* srv_stop(): in-flight answers get this long */
#define LINGER_NS 50000              /* watch a quiet connection this long before epoll */
#define LOG_EVERY_MS 10000           /* a log line that could come once per client: this often */
#define ACCEPT_PAUSE_MS TICK_MS      /* accept() failing for want of resources: retry after */
#define ADMIN_SLOTS_MAX 16           /* slots kept for the agent's uid and root */

enum conn_state {
	C_OPEN,  /* reading requests */
	C_DRAIN, /* an error line is being sent; then half-close and discard input */
};

struct conn {
	int fd;
	enum conn_state state;
	proto_peer peer;
	/* owned by the thread holding the connection's one-shot event */
	char *in; /* unprocessed input: at most IN_CAP bytes (served lines are
		     wiped at once) */
	size_t in_len, in_cap;
	size_t in_hwm; /* how far into in anything was ever written: what a
			  free must wipe */
	char *out; /* unsent answers (signed JWTs: wiped when freed) */
	size_t out_len, out_off, out_cap;
	bool eof; /* the client shut down its side */
	bool wr_shut;
	bool answered_in_stop;
	size_t drained;
	bool uid_counted; /* held against max_connections_per_uid */
	/* read by the timer thread */
	_Atomic uint64_t line_since;  /* when the current partial line began (0: none) */
	_Atomic uint64_t out_since;   /* when unsent output last moved (0: none pending) */
	_Atomic uint64_t drain_until; /* 0: not draining */
	_Atomic uint64_t idle_since;  /* armed with nothing to read, sign or send, since
					 (0: not idle; the timer claims it by setting 0) */
	_Atomic int kick;             /* set by the timer thread, acted on by the owner */
	/* s->mu */
	struct conn *next, *prev;
};

/* A log line that can come once per client (a refusal, accept() failing)
 * comes at most every LOG_EVERY_MS and says how many were left out. Only
 * the thread holding the listening socket's one-shot event uses these. */
struct loglimit {
	uint64_t last_ms;
	uint64_t missed;
};

/* Connections of a uid held to max_connections_per_uid. */
struct uid_count {
	uid_t uid;
	size_t n;
};

struct srv {
	srv_config cfg;
	int listen_fd, ep, wake[2];
	unsigned nworkers;
	unsigned line_timeout, idle_timeout;
	size_t per_uid;     /* max_connections_per_uid in force */
	size_t admin_slots; /* the last connections: only for the agent's uid and root */
	uid_t owner_uid;
	/* Only the accepting thread: an fd held open to be closed when accept()
	 * fails with EMFILE/ENFILE, so that the client can be told "busy" and
	 * let go instead of being left in the backlog with the listening
	 * socket ready for ever (a spin). */
	int reserve_fd;
	struct loglimit ll_conns, ll_uid, ll_fds, ll_accept;
	_Atomic uint64_t accept_resume; /* not re-armed until then (0: armed) */
	pthread_mutex_t mu; /* the connection list, its count and uids */
	pthread_cond_t cv;
	struct conn *conns;
	size_t nconns;
	struct uid_count *uids;
	size_t nuids, uids_cap;
	_Atomic bool stopping, quit;
	/* counters for srv_get_stats() */
	_Atomic uint64_t n_requests, n_accepted, n_refused;
	_Atomic uint64_t n_errors[SRV_NCODES];
};

static void count_error(srv *s, int code)
{
	if (code < 0 && -code < SRV_NCODES)
		atomic_fetch_add_explicit(&s->n_errors[-code], 1, memory_order_relaxed);
}

/* epoll tags for the non-connection fds */
static char tag_listen, tag_wake;

static void srv_log(const srv *s, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void srv_log(const srv *s, int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	p11j_vlog(s->cfg.log, NULL, level, fmt, ap);
	va_end(ap);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ms(void)
{
	return now_ns() / 1000000;
}

/* Make the socket's directory (0700) if it is missing, then hold it to the
 * rule the CLI checks too (common/sockdir.h): ours or root's, a real
 * directory that nobody else may write to, 0700 exactly in /tmp. */
static int make_socket_dir(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;
	uid_t me = geteuid();

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash == dir)
		return err_set(P11J_E_INSECURE, "refusing to put the socket directly in /");
	if (slash != NULL) {
		*slash = '\0';
		if (mkdir(dir, 0700) < 0 && errno != EEXIST)
			return err_set(P11J_E_SYSTEM, "cannot create socket directory '%s': %s",
				       dir, strerror(errno));
	}
	return sockdir_check(path, &me, 1);
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

/* ---- framing ------------------------------------------------------------ */

srv_frame_result srv_frame_next(const char *buf, size_t len, size_t off, size_t *ret_len)
{
	const char *nl = len > off ? memchr(buf + off, '\n', len - off) : NULL;

	if (nl == NULL)
		return len - off >= SRV_FRAME_CAP ? SRV_FRAME_TOO_LONG : SRV_FRAME_PARTIAL;
	*ret_len = (size_t)(nl - (buf + off));
	return SRV_FRAME_LINE;
}

bool srv_frame_has_line(const char *buf, size_t len, size_t off)
{
	return len > off && memchr(buf + off, '\n', len - off) != NULL;
}

size_t srv_frame_compact(char *buf, size_t len, size_t off)
{
	if (off == 0)
		return len;
	memmove(buf, buf + off, len - off);
	memset(buf + len - off, 0, off);
	return len - off;
}

/* since was set (not 0), and limit has passed since then. A worker may
 * set it a little after the timer read the clock: that is not a wrap. */
static bool passed(uint64_t since, uint64_t now, uint64_t limit)
{
	return since != 0 && now >= since && now - since >= limit;
}

/* Whether a line that can come once per client may be logged now; then
 * *ret_missed is how many were left out since the last one. */
static bool loglimit_pass(struct loglimit *l, uint64_t now, uint64_t *ret_missed)
{
	if (l->last_ms != 0 && now - l->last_ms < LOG_EVERY_MS) {
		l->missed++;
		return false;
	}
	*ret_missed = l->missed;
	l->missed = 0;
	l->last_ms = now;
	return true;
}

/* ---- connections -------------------------------------------------------- */

/* A worker's own buffers: socket reads while draining, and the audit
 * records of the requests it is answering, written in one go (wbuf). */
/* Answers held until the audit records of their requests are written. */
#define PEND_MAX 16
struct pend {
	char *resp;
	size_t len;
	int result;
	bool audited_ok; /* a successful audited request: refused if its record is lost */
};

struct wctx {
	char *scratch;
	jsonf_buf ab; /* the turn's audit records, not yet written */
	/* the turn's answers not yet committed (conn_commit): held until
	 * they are sent, so that the last answer of a batch and the next
	 * batch's answers share one audit write */
	struct pend pend[PEND_MAX];
	int np;
};

enum { KICK_NONE, KICK_LINE, KICK_HARD };

static void conn_rearm(srv *s, struct conn *c)
{
	uint32_t ev = EPOLLONESHOT;
	struct epoll_event e;

	if (c->state == C_DRAIN)
		ev |= c->wr_shut ? EPOLLIN : 0;
	else if (!c->eof && c->in_len < IN_CAP)
		ev |= EPOLLIN;
	/* complete lines left because the output was over OUT_HIGH: once it
	 * drains, no more input may come to wake us, so ask for a writable
	 * event (at once if the socket has room) and serve them then */
	if (c->out_len > c->out_off ||
	    (c->state == C_OPEN && srv_frame_has_line(c->in, c->in_len, 0)))
		ev |= EPOLLOUT;
	/* nothing buffered either way and the client still there: the idle
	 * clock starts (the timer closes it after idle_timeout) */
	atomic_store(&c->idle_since, c->state == C_OPEN && !c->eof && c->in_len == 0 &&
					     c->out_len == c->out_off
				     ? now_ms()
				     : 0);
	e = (struct epoll_event){ .events = ev, .data.ptr = c };
	epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void conn_free_bufs(struct conn *c)
{
	if (c->in)
		freezero_buf(c->in, c->in_cap);
	if (c->out)
		freezero_buf(c->out, c->out_cap);
	c->in = c->out = NULL;
	c->in_len = c->in_cap = c->in_hwm = c->out_len = c->out_off = c->out_cap = 0;
}

/* The uid table (s->mu held): how many connections uid has, counted in
 * when add. NULL when it has none and add is false, or out of memory. */
static struct uid_count *uid_find(srv *s, uid_t uid, bool add)
{
	for (size_t i = 0; i < s->nuids; i++)
		if (s->uids[i].uid == uid)
			return &s->uids[i];
	if (!add)
		return NULL;
	if (s->nuids == s->uids_cap) {
		size_t cap = s->uids_cap ? 2 * s->uids_cap : 16;
		struct uid_count *grown = realloc(s->uids, cap * sizeof(*grown));

		if (grown == NULL)
			return NULL;
		s->uids = grown;
		s->uids_cap = cap;
	}
	s->uids[s->nuids] = (struct uid_count){ .uid = uid };
	return &s->uids[s->nuids++];
}

static void uid_put(srv *s, uid_t uid)
{
	struct uid_count *u = uid_find(s, uid, false);

	if (u != NULL && --u->n == 0)
		*u = s->uids[--s->nuids]; /* the order does not matter */
}

/* Only the owner (the thread holding its one-shot event) closes. The list
 * lock covers close(): the timer thread calls shutdown() on listed fds only,
 * so it never touches a number the kernel has given to someone else. */
static void conn_close(srv *s, struct conn *c)
{
	pthread_mutex_lock(&s->mu);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	if (c->uid_counted)
		uid_put(s, c->peer.uid);
	epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (s->stopping && s->nconns == 0)
		pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	conn_free_bufs(c);
	free(c);
}

/* Queue an answer (taking ownership of resp). The output buffer stays
 * while its connection is served (conn_flush empties it, conn_turn frees it
 * when the connection goes back to epoll), and starts at OUT_START: growing
 * it by doubling from the first answer's size, and allocating it again for
 * every batch, was a malloc_consolidate() per batch at 2 clients. */
#define OUT_START 8192
static int conn_queue(struct conn *c, char *resp, size_t len)
{
	if (c->out_off > 0) {
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if ((c->out == NULL &&
	     util_secret_reserve(&c->out, &c->out_cap, 0, len < OUT_START ? OUT_START : len) < 0) ||
	    util_secret_reserve(&c->out, &c->out_cap, c->out_len, len) < 0) {
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
		atomic_store(&c->out_since, now);
	}
	if (c->out_off == c->out_len && c->out) {
		/* all sent: the answers leave the buffer, which stays */
		util_wipe(c->out, c->out_len);
		c->out_len = c->out_off = 0;
		atomic_store(&c->out_since, 0);
	}
	return 0;
}

/* A fatal error line: send it, then half-close and discard what the client
 * still sends for a moment, so it reads the line before it sees EOF (closing
 * with unread input would make the kernel send a reset instead). */
static int conn_fatal(struct conn *c, int code, const char *msg)
{
	char *resp = NULL;
	size_t rlen = 0;

	if (c->in) {
		freezero_buf(c->in, c->in_cap);
		c->in = NULL;
		c->in_len = c->in_cap = c->in_hwm = 0;
	}
	c->state = C_DRAIN;
	atomic_store(&c->line_since, 0);
	if (proto_error_line(NULL, code, msg, &resp, &rlen) < 0)
		return -1;
	return conn_queue(c, resp, rlen);
}

/* Read what is there (bounded per turn, so one busy client cannot hold a
 * thread forever). Returns -1 when the connection must close now. */
static int conn_read(srv *s, struct conn *c, char *scratch)
{
	for (int turns = 0; turns < 8; turns++) {
		size_t room;
		ssize_t n;

		if (c->state == C_DRAIN) {
			n = recv(c->fd, scratch, READ_CHUNK, MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				return -1;
			if (n < 0)
				return 0;
			if ((c->drained += (size_t)n) > DRAIN_MAX)
				return -1;
			continue;
		}
		if (c->eof || c->in_len >= IN_CAP)
			return 0;
		/* 4 KiB to start (requests are small), doubled when less than
		 * 1 KiB is left, up to one maximal line */
		if (c->in_cap - c->in_len < 1024 && c->in_cap < IN_CAP) {
			size_t want = c->in_cap ? 2 * c->in_cap : 4096;

			if (want > IN_CAP + 1)
				want = IN_CAP + 1;
			if (util_secret_reserve(&c->in, &c->in_cap, c->in_len,
						want - c->in_len - 1) < 0)
				return -1;
		}
		room = (c->in_cap < IN_CAP ? c->in_cap : IN_CAP) - c->in_len;
		n = recv(c->fd, c->in + c->in_len, room, MSG_DONTWAIT);
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		if (n == 0) {
			c->eof = true;
			return 0;
		}
		c->in_len += (size_t)n;
		if (c->in_len > c->in_hwm)
			c->in_hwm = c->in_len;
		if ((size_t)n < room)
			return 0; /* drained the socket */
	}
	(void)s;
	return 0;
}

/* Write the batch's audit records (one write), then queue its answers in
 * order. If the records cannot be written, every successful audited
 * answer of the batch becomes an error: no JWT leaves without its record. */
static int conn_commit(srv *s, struct conn *c, struct wctx *w, struct pend *p, int *np)
{
	int ar = 0, r = 0;

	if (w->ab.len > 0) {
		ar = s->cfg.audit_write(s->cfg.audit_ud, w->ab.p, w->ab.len);
		w->ab.len = 0;
	}
	for (int i = 0; i < *np; i++) {
		if (ar < 0 && p[i].audited_ok) {
			freezero_buf(p[i].resp, p[i].len);
			p[i].resp = NULL;
			p[i].result = P11J_E_INTERNAL;
			if (proto_error_line(NULL, P11J_E_INTERNAL, "cannot write the audit record",
					     &p[i].resp, &p[i].len) < 0)
				r = -1;
		}
		atomic_fetch_add_explicit(&s->n_requests, 1, memory_order_relaxed);
		count_error(s, p[i].result);
		if (r == 0 && p[i].resp != NULL && conn_queue(c, p[i].resp, p[i].len) < 0)
			r = -1; /* conn_queue freed it */
		else if (r < 0 && p[i].resp != NULL)
			freezero_buf(p[i].resp, p[i].len);
		p[i].resp = NULL;
	}
	*np = 0;
	return r;
}

/* Answer the complete lines in the buffer, in order, on this thread, at
 * most budget of them. Returns how many were answered, or -1 when the
 * connection must close. Answers are queued, not sent, except just before
 * the last complete line in the buffer is signed: then everything answered
 * so far goes out in one send(), so that a pipelining client sends its
 * next requests while that signature is made, and the token does not wait
 * for them. Every send wakes the client, which costs the sender several µs
 * on a virtual machine, so there is one per batch; the caller sends the
 * rest when nothing more came (conn_turn). */
static int conn_serve_lines(srv *s, struct conn *c, struct wctx *w, uint64_t now, int budget)
{
	size_t off = 0; /* served bytes at the front of c->in, already wiped */
	int r = 0, served = 0;
	struct pend *pend = w->pend;
	int np = w->np;

	while (served < budget && c->state == C_OPEN && c->out_len - c->out_off <= OUT_HIGH) {
		char *line = c->in + off;
		proto_audit aud = { 0 };
		char *resp = NULL;
		size_t len = 0, rlen = 0;
		srv_frame_result fr = srv_frame_next(c->in, c->in_len, off, &len);

		if (fr == SRV_FRAME_TOO_LONG) {
			srv_log(s, LOG_WARNING, "uid %u pid %d: request line too large, closed",
				(unsigned)c->peer.uid, (int)c->peer.pid);
			count_error(s, P11J_E_REQUEST_TOO_LARGE);
			/* the answers before it go first, with their records */
			r = np > 0 ? conn_commit(s, c, w, pend, &np) : 0;
			w->np = 0;
			if (r < 0)
				return r;
			return conn_fatal(c, P11J_E_REQUEST_TOO_LARGE,
					  "request line over 65536 bytes; closing");
		}
		if (fr == SRV_FRAME_PARTIAL)
			break;
		if (atomic_load(&s->stopping) && c->answered_in_stop)
			break; /* stopping: the line being served was answered */
		if ((np > 0 || c->out_len > c->out_off) &&
		    !srv_frame_has_line(c->in, c->in_len, off + len + 1) &&
		    ((r = conn_commit(s, c, w, pend, &np)) < 0 || (r = conn_flush(c, now)) < 0))
			break;
		aud.no_fields = s->cfg.audit == NULL; /* nobody reads the record */
		if (proto_handle_ex(s->cfg.env, &c->peer, line, len, &aud, &resp, &rlen) < 0) {
			proto_audit_clear(&aud);
			r = -1; /* out of memory: drop this client */
			break;
		}
		pend[np] = (struct pend){ .resp = resp, .len = rlen, .result = aud.result };
		if (proto_audit_has_record(&aud) && s->cfg.audit != NULL) {
			if (s->cfg.audit(s->cfg.audit_ud, &c->peer, &aud, &w->ab) == 0) {
				pend[np].audited_ok = aud.result == 0;
			} else if (aud.result == 0) {
				/* no record, no JWT */
				freezero_buf(resp, rlen);
				pend[np].resp = NULL;
				pend[np].result = P11J_E_INTERNAL;
				if (proto_error_line(NULL, P11J_E_INTERNAL,
						     "cannot write the audit record", &pend[np].resp,
						     &pend[np].len) < 0)
					r = -1;
			}
		}
		np++;
		proto_audit_clear(&aud);
		memset(line, 0, len + 1); /* the request leaves the buffer */
		off += len + 1;
		if (r < 0)
			break;
		if (atomic_load(&s->stopping))
			c->answered_in_stop = true;
		served++;
		if (np == PEND_MAX && (r = conn_commit(s, c, w, pend, &np)) < 0)
			break;
	}
	/* the rest is committed when it is sent (conn_turn) */
	w->np = np;
	c->in_len = srv_frame_compact(c->in, c->in_len, off); /* the rest, to the front once */
	if (r < 0)
		return r;
	/* a partial line starts its clock; a complete one (waiting because of
	 * unsent output) does not */
	if (c->state == C_OPEN && c->in_len && !srv_frame_has_line(c->in, c->in_len, 0)) {
		if (atomic_load(&c->line_since) == 0)
			atomic_store(&c->line_since, now);
	} else {
		atomic_store(&c->line_since, 0);
	}
	return served;
}

/* Something in the epoll set is ready: a connection, a new client or the
 * stop signal waits for a worker. */
static bool others_ready(srv *s)
{
	struct pollfd p = { .fd = s->ep, .events = POLLIN };

	return poll(&p, 1, 0) > 0;
}

/* The client of a connection whose answers just went out usually sends
 * again a few tens of microseconds later: the next request of a client
 * that waits for each answer, the next batch of a pipelining one. Going
 * to sleep in epoll_wait() and being woken for it costs the agent about
 * 30 µs more per request on a virtual machine (the idle CPU halts; the
 * wake-up is an inter-processor interrupt), so the worker that answered
 * watches the connection up to LINGER_NS longer before arming it in epoll
 * (so no other worker is woken for it). Only while nothing else waits:
 * the epoll set itself is watched too, and any ready connection (or a new
 * one, or the stop signal) ends it, so that lingering never delays anyone
 * else's request. It yields the CPU between looks, so that a client thread
 * waiting for this CPU runs first. True when input (or EOF, or an error)
 * came on c. */
static bool conn_linger(srv *s, struct conn *c)
{
	uint64_t start;

	if (c->state != C_OPEN || c->eof || c->out_len != 0 || atomic_load(&s->stopping) ||
	    atomic_load(&c->kick) != KICK_NONE)
		return false;
	start = now_ns();
	for (;;) {
		struct pollfd p[2] = {
			{ .fd = c->fd, .events = POLLIN },
			{ .fd = s->ep, .events = POLLIN }, /* readable: something is ready */
		};

		if (poll(p, 2, 0) != 0)
			/* input, or an error that the read will see; unless
			 * someone else waits: then c queues behind them */
			return p[0].revents != 0 && p[1].revents == 0;
		sched_yield(); /* a thread waiting for this CPU (a client) goes first */
		if (now_ns() - start > LINGER_NS)
			return false;
	}
}

/* The owner's turn on c: one event's worth of work, then re-arm or close. */
static void conn_turn(srv *s, struct conn *c, uint32_t events, struct wctx *w)
{
	uint64_t now;
	int kick;

again:
	now = now_ms();
	atomic_store(&c->idle_since, 0); /* not idle while its owner serves it */
	kick = atomic_load(&c->kick);
	if (kick == KICK_HARD || (events & EPOLLERR))
		goto close;
	if (kick == KICK_LINE && c->state == C_OPEN) {
		srv_log(s, LOG_WARNING, "uid %u pid %d: half a request line for over %u ms, dropped",
			(unsigned)c->peer.uid, (int)c->peer.pid, s->line_timeout);
		count_error(s, P11J_E_BAD_REQUEST);
		if (conn_fatal(c, P11J_E_BAD_REQUEST,
			       "request line not finished in time; closing") < 0)
			goto close;
		/* our read side is shut: send the line, then close */
		conn_flush(c, now);
		goto close;
	}
	if ((events & (EPOLLIN | EPOLLHUP)) && conn_read(s, c, w->scratch) < 0)
		goto close;
	for (int budget = TURN_REQUESTS;;) {
		int served = conn_serve_lines(s, c, w, now, budget);
		size_t had;

		if (served < 0)
			goto close;
		/* A pipelining client (more than one request in a round) has
		 * usually sent more while we signed: take it now rather than by
		 * a trip through epoll_ctl and epoll_wait, and hold the last
		 * answer for the next send (conn_serve_lines). A client that
		 * waits for each answer is not asked again (it has nothing
		 * yet). TURN_REQUESTS answers at a time, and then only while no
		 * other connection is ready, so that the other clients get their
		 * turn: letting a turn go on while its client kept sending made
		 * them wait whole cycles (p99 of 0.5 s with 256 pipelining
		 * clients). */
		budget -= served;
		if (served < 2 || c->state != C_OPEN || c->eof ||
		    c->out_len - c->out_off > OUT_HIGH || atomic_load(&c->kick) != KICK_NONE ||
		    atomic_load(&s->stopping))
			break;
		if (budget <= 0) {
			if (others_ready(s))
				break;
			budget = TURN_REQUESTS;
		}
		had = c->in_len;
		if (conn_read(s, c, w->scratch) < 0)
			goto close;
		if (c->in_len == had && !srv_frame_has_line(c->in, c->in_len, 0))
			break;
		now = now_ms();
	}
	if ((w->np > 0 && conn_commit(s, c, w, w->pend, &w->np) < 0) || conn_flush(c, now) < 0)
		goto close;
	if (c->state == C_DRAIN && c->out_len == 0 && !c->wr_shut) {
		shutdown(c->fd, SHUT_WR);
		c->wr_shut = true;
		atomic_store(&c->drain_until, now + DRAIN_MS);
	}
	if (atomic_load(&s->stopping) && c->out_len == 0)
		goto close;
	/* the client is done: close once its last answer is out */
	if (c->eof && c->out_len == 0)
		goto close;
	if ((events & EPOLLHUP) && c->state != C_DRAIN && c->out_len > 0)
		goto close; /* gone both ways: nobody to read the answers */
	if (conn_linger(s, c)) {
		events = EPOLLIN;
		goto again;
	}
	/* a connection waiting in epoll holds no empty buffer (1000 idle
	 * clients hold none); only the part of the input buffer ever written
	 * can hold anything */
	if (c->in_len == 0 && c->in) {
		freezero_buf(c->in, c->in_hwm);
		c->in = NULL;
		c->in_cap = c->in_hwm = 0;
	}
	if (c->out_len == 0 && c->out) {
		freezero_buf(c->out, c->out_cap); /* compaction may have left copies */
		c->out = NULL;
		c->out_cap = 0;
	}
	conn_rearm(s, c);
	return;
close:
	/* answers signed in this turn: their records are written, though
	 * nobody will read the answers */
	if (w->np > 0)
		conn_commit(s, c, w, w->pend, &w->np);
	conn_close(s, c);
}

/* Answer "busy" (msg says which limit) and close. The log line (what,
 * the client's uid and pid when known) comes at most every LOG_EVERY_MS
 * per limit: a client that reconnects in a loop must not flood the log. */
static void refuse(srv *s, int fd, struct loglimit *ll, const char *msg, const char *what)
{
	char *resp = NULL;
	size_t rlen = 0;
	uint64_t missed = 0;

	atomic_fetch_add_explicit(&s->n_refused, 1, memory_order_relaxed);
	count_error(s, P11J_E_BUSY);
	if (proto_error_line(NULL, P11J_E_BUSY, msg, &resp, &rlen) == 0)
		(void)send(fd, resp, rlen, MSG_NOSIGNAL | MSG_DONTWAIT);
	free(resp);
	close(fd);
	if (loglimit_pass(ll, now_ms(), &missed)) {
		if (missed > 0)
			srv_log(s, LOG_WARNING, "%s, refused (busy); %llu more since the last message",
				what, (unsigned long long)missed);
		else
			srv_log(s, LOG_WARNING, "%s, refused (busy)", what);
	}
}

/* accept() failed with EMFILE or ENFILE (which it does before it looks
 * at the backlog): take the client with the reserve fd's number, tell it
 * "busy" and let it go, so that it neither hangs in the backlog nor keeps
 * the listening socket ready. 1: a client was refused (look for more); 0:
 * nobody was waiting; -1: not possible (no reserve): the caller stops
 * accepting for a while. */
static int accept_out_of_fds(srv *s, int err)
{
	char what[160];
	int fd, e;

	snprintf(what, sizeof(what), "accept: %s (RLIMIT_NOFILE; LimitNOFILE= under systemd)",
		 strerror(err));
	if (s->reserve_fd < 0) {
		uint64_t missed = 0;

		if (loglimit_pass(&s->ll_fds, now_ms(), &missed))
			srv_log(s, LOG_ERR, "%s; not accepting for %d ms (%llu more since the last "
				"message)", what, ACCEPT_PAUSE_MS, (unsigned long long)missed);
		return -1;
	}
	close(s->reserve_fd);
	fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	e = errno;
	if (fd >= 0)
		refuse(s, fd, &s->ll_fds, "out of file descriptors; try again later", what);
	s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (fd >= 0 || e == EINTR || e == ECONNABORTED)
		return 1;
	return e == EAGAIN ? 0 : -1;
}

/* Which limit refuses a client of uid, if any (s->mu held). The agent's
 * own uid and root are held to max_connections only; other uids also to
 * max_connections_per_uid each and, together, to all but the last
 * admin_slots, so that the agent's owner and root can always get in (to
 * ask for "status", for one) however many other uids fill the agent. */
static const char *conn_limit(srv *s, uid_t uid, char *what, size_t wlen,
			      struct loglimit **ret_ll)
{
	struct uid_count *u;

	*ret_ll = &s->ll_conns;
	if (s->nconns >= s->cfg.max_connections) {
		snprintf(what, wlen, "uid %u: max_connections (%zu) reached", (unsigned)uid,
			 s->cfg.max_connections);
		return "too many connections; try again later";
	}
	if (uid == 0 || uid == s->owner_uid)
		return NULL;
	if (s->nconns >= s->cfg.max_connections - s->admin_slots) {
		snprintf(what, wlen, "uid %u: the last %zu of max_connections (%zu) are kept for "
			 "uid %u and root", (unsigned)uid, s->admin_slots, s->cfg.max_connections,
			 (unsigned)s->owner_uid);
		return "too many connections; try again later";
	}
	u = uid_find(s, uid, false);
	if (u != NULL && u->n >= s->per_uid) {
		*ret_ll = &s->ll_uid;
		snprintf(what, wlen, "uid %u: max_connections_per_uid (%zu) reached", (unsigned)uid,
			 s->per_uid);
		return "too many connections from this uid (max_connections_per_uid); try again "
		       "later";
	}
	return NULL;
}

/* Take the clients waiting in the backlog. False when accept() failed for
 * want of resources: the listening socket is then left unarmed for
 * ACCEPT_PAUSE_MS (srv_timers() re-arms it), rather than woken again at
 * once for the same failure. */
static bool srv_accept(srv *s)
{
	if (s->reserve_fd < 0) /* given up to a refused client and not yet back */
		s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	for (;;) {
		struct ucred cred;
		socklen_t clen = sizeof(cred);
		struct epoll_event e;
		struct conn *c;
		const char *busy;
		struct loglimit *ll = NULL;
		char what[200];
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			uint64_t missed = 0;

			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN)
				return true;
			if (errno == EMFILE || errno == ENFILE) {
				int r = accept_out_of_fds(s, errno);

				if (r > 0)
					continue;
				return r == 0;
			}
			if (loglimit_pass(&s->ll_accept, now_ms(), &missed))
				srv_log(s, LOG_ERR, "accept: %s; not accepting for %d ms (%llu more "
					"since the last message)", strerror(errno), ACCEPT_PAUSE_MS,
					(unsigned long long)missed);
			return false; /* ENOBUFS, ENOMEM: not better at once */
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0) {
			srv_log(s, LOG_ERR, "SO_PEERCRED: %s", strerror(errno));
			close(fd);
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
		pthread_mutex_lock(&s->mu);
		busy = conn_limit(s, cred.uid, what, sizeof(what), &ll);
		if (busy == NULL && cred.uid != 0 && cred.uid != s->owner_uid) {
			struct uid_count *u = uid_find(s, cred.uid, true);

			if (u == NULL) {
				snprintf(what, sizeof(what), "uid %u: out of memory", (unsigned)cred.uid);
				busy = "out of memory; try again later";
			} else {
				u->n++;
				c->uid_counted = true;
			}
		}
		if (busy != NULL) {
			pthread_mutex_unlock(&s->mu);
			free(c);
			refuse(s, fd, ll, busy, what);
			continue;
		}
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		s->nconns++;
		atomic_store(&c->idle_since, now_ms());
		e = (struct epoll_event){ .events = EPOLLIN | EPOLLONESHOT, .data.ptr = c };
		if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &e) < 0) {
			srv_log(s, LOG_ERR, "epoll_ctl: %s", strerror(errno));
			s->conns = c->next;
			if (c->next)
				c->next->prev = NULL;
			s->nconns--;
			if (c->uid_counted)
				uid_put(s, cred.uid);
			pthread_mutex_unlock(&s->mu);
			close(fd);
			free(c);
			continue;
		}
		pthread_mutex_unlock(&s->mu);
		atomic_fetch_add_explicit(&s->n_accepted, 1, memory_order_relaxed);
	}
}

/* ---- threads ------------------------------------------------------------ */

/* Every worker waits on the one epoll set; a one-shot event makes the
 * thread that got it the connection's only owner until it re-arms, so
 * requests are read, signed and answered on one thread with no hand-off.
 * One set per worker (connections bound to a thread for life) was tried:
 * ~8% more throughput at 2 clients one request at a time, but a worker
 * that the scheduler puts aside holds up every connection it owns, and
 * p99/p50 at 256 clients went from 1.3 to between 3 and 80. With one set,
 * whichever worker runs takes the next ready connection. */
static void *worker_main(void *arg)
{
	srv *s = arg;
	struct wctx w = { .scratch = malloc(READ_CHUNK) };

	if (w.scratch == NULL)
		return NULL;
	for (;;) {
		struct epoll_event ev;
		int n;

		n = epoll_wait(s->ep, &ev, 1, TICK_MS);

		if (n < 0 && errno != EINTR)
			break;
		if (n <= 0) {
			if (atomic_load(&s->stopping)) {
				bool empty;

				pthread_mutex_lock(&s->mu);
				empty = s->nconns == 0;
				pthread_mutex_unlock(&s->mu);
				if (empty || atomic_load(&s->quit))
					break;
			}
			continue;
		}
		if (ev.data.ptr == &tag_listen) {
			if (!atomic_load(&s->stopping)) {
				struct epoll_event e = { .events = EPOLLIN | EPOLLONESHOT,
							 .data.ptr = &tag_listen };

				if (srv_accept(s))
					epoll_ctl(s->ep, EPOLL_CTL_MOD, s->listen_fd, &e);
				else /* srv_timers() re-arms it */
					atomic_store(&s->accept_resume, now_ms() + ACCEPT_PAUSE_MS);
			}
		} else if (ev.data.ptr == &tag_wake) {
			/* level-triggered: every worker sees it */
			continue;
		} else {
			conn_turn(s, ev.data.ptr, ev.events, &w);
		}
	}
	free(w.scratch);
	jsonf_free(&w.ab);
	return NULL;
}

/* Clients that stall: half a line for too long, answers left unread, a
 * drain past its deadline; and clients idle for too long. The owner does
 * the closing: it is woken by shutdown() (EPOLLIN for the read side,
 * EPOLLHUP for both). Also re-arms the listening socket after a pause. */
static void srv_timers(srv *s, uint64_t now)
{
	uint64_t resume = atomic_load(&s->accept_resume);

	if (resume != 0 && now >= resume &&
	    atomic_compare_exchange_strong(&s->accept_resume, &resume, 0)) {
		struct epoll_event e = { .events = EPOLLIN | EPOLLONESHOT, .data.ptr = &tag_listen };

		epoll_ctl(s->ep, EPOLL_CTL_MOD, s->listen_fd, &e);
	}
	pthread_mutex_lock(&s->mu);
	for (struct conn *c = s->conns; c != NULL; c = c->next) {
		uint64_t ls = atomic_load(&c->line_since), os = atomic_load(&c->out_since);
		uint64_t du = atomic_load(&c->drain_until), is = atomic_load(&c->idle_since);

		if (atomic_load(&c->kick) != KICK_NONE)
			continue;
		if (passed(ls, now, s->line_timeout)) {
			atomic_store(&c->kick, KICK_LINE);
			shutdown(c->fd, SHUT_RD);
		} else if (passed(os, now, SRV_SEND_TIMEOUT_MS) || (du && now >= du)) {
			if (passed(os, now, SRV_SEND_TIMEOUT_MS))
				srv_log(s, LOG_WARNING, "uid %u pid %d: answers unread for %d ms, dropped",
					(unsigned)c->peer.uid, (int)c->peer.pid, SRV_SEND_TIMEOUT_MS);
			atomic_store(&c->kick, KICK_HARD);
			shutdown(c->fd, SHUT_RDWR);
		} else if (passed(is, now, s->idle_timeout) &&
			   atomic_compare_exchange_strong(&c->idle_since, &is, 0)) {
			/* Idle, and its owner did not take it meanwhile (it clears
			 * idle_since first): it reads EOF and closes. A request that
			 * came just now is still read and answered first. */
			shutdown(c->fd, SHUT_RD);
		}
	}
	pthread_mutex_unlock(&s->mu);
}

int srv_new(const srv_config *cfg, int listen_fd, srv **ret)
{
	srv *s = calloc(1, sizeof(*s));
	struct epoll_event e;
	struct rlimit fds;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	if (s == NULL)
		return err_nomem();
	s->cfg = *cfg;
	s->listen_fd = listen_fd;
	s->wake[0] = s->wake[1] = s->ep = -1;
	s->line_timeout = cfg->line_timeout_ms ? cfg->line_timeout_ms : SRV_LINE_TIMEOUT_MS;
	s->idle_timeout = cfg->idle_timeout_ms ? cfg->idle_timeout_ms : SRV_IDLE_TIMEOUT_MS;
	s->nworkers = cfg->workers ? cfg->workers : (unsigned)(ncpu > 1 ? 2 * ncpu : 2);
	if (s->nworkers > SRV_MAX_WORKERS)
		s->nworkers = SRV_MAX_WORKERS;
	s->owner_uid = cfg->env != NULL ? cfg->env->owner_uid : geteuid();
	if (getrlimit(RLIMIT_NOFILE, &fds) == 0 && fds.rlim_cur != RLIM_INFINITY) {
		size_t keep = SRV_FD_RESERVE + s->nworkers;
		size_t room = fds.rlim_cur > keep + 1 ? (size_t)fds.rlim_cur - keep : 1;

		if (s->cfg.max_connections > room) {
			srv_log(s, LOG_WARNING, "max_connections %zu lowered to %zu: the file "
				"descriptor limit is %llu (RLIMIT_NOFILE: LimitNOFILE= under systemd, "
				"ulimit -n), and %zu are kept for the token, the audit trail and the "
				"workers", s->cfg.max_connections, room,
				(unsigned long long)fds.rlim_cur, keep);
			s->cfg.max_connections = room;
		}
	}
	if (s->cfg.max_connections == 0)
		s->cfg.max_connections = 1;
	s->per_uid = cfg->max_connections_per_uid ? cfg->max_connections_per_uid
						  : (s->cfg.max_connections + 3) / 4;
	s->admin_slots = s->cfg.max_connections / 16;
	if (s->admin_slots > ADMIN_SLOTS_MAX)
		s->admin_slots = ADMIN_SLOTS_MAX;
	s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0 ||
	    (s->ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		goto sysfail;
	fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
	e = (struct epoll_event){ .events = EPOLLIN | EPOLLONESHOT, .data.ptr = &tag_listen };
	if (epoll_ctl(s->ep, EPOLL_CTL_ADD, listen_fd, &e) < 0)
		goto sysfail;
	e = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &tag_wake };
	if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake[0], &e) < 0)
		goto sysfail;
	*ret = s;
	return 0;
sysfail:
	{
		int r = err_set(P11J_E_SYSTEM, "event loop: %s", strerror(errno));

		srv_free(s);
		return r;
	}
}

void srv_stop(srv *s)
{
	ssize_t n = write(s->wake[1], "x", 1);

	(void)n;
}

void srv_get_stats(srv *s, srv_stats *ret)
{
	memset(ret, 0, sizeof(*ret));
	ret->requests = atomic_load(&s->n_requests);
	ret->accepted = atomic_load(&s->n_accepted);
	ret->refused = atomic_load(&s->n_refused);
	for (int i = 0; i < SRV_NCODES; i++)
		ret->errors[i] = atomic_load_explicit(&s->n_errors[i], memory_order_relaxed);
	pthread_mutex_lock(&s->mu);
	ret->connections = s->nconns;
	pthread_mutex_unlock(&s->mu);
}

int srv_run(srv *s)
{
	pthread_t *th = calloc(s->nworkers, sizeof(*th));
	struct pollfd wake = { .fd = s->wake[0], .events = POLLIN };
	unsigned started = 0;
	uint64_t deadline = 0;
	int r = 0;

	if (th == NULL)
		return err_nomem();
	for (; started < s->nworkers; started++) {
		pthread_attr_t attr;
		int e;

		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 512 * 1024);
		e = pthread_create(&th[started], &attr, worker_main, s);
		pthread_attr_destroy(&attr);
		if (e != 0) {
			r = err_set(P11J_E_SYSTEM, "cannot start signing threads: %s", strerror(e));
			srv_stop(s);
			break;
		}
	}
	/* this thread keeps the timers and waits for srv_stop() */
	for (;;) {
		int n = poll(&wake, 1, TICK_MS);
		uint64_t now = now_ms();

		if (n > 0 && !atomic_load(&s->stopping)) {
			/* stop taking clients; each connection answers the request
			 * it is serving, then closes (woken by the read shutdown) */
			atomic_store(&s->stopping, true);
			deadline = now + STOP_DEADLINE_MS;
			if (s->cfg.on_stopping != NULL)
				s->cfg.on_stopping(s->cfg.stopping_ud);
			epoll_ctl(s->ep, EPOLL_CTL_DEL, s->listen_fd, NULL);
			epoll_ctl(s->ep, EPOLL_CTL_DEL, s->wake[0], NULL);
			pthread_mutex_lock(&s->mu);
			for (struct conn *c = s->conns; c; c = c->next)
				shutdown(c->fd, SHUT_RD);
			pthread_mutex_unlock(&s->mu);
		}
		if (atomic_load(&s->stopping)) {
			bool empty;

			pthread_mutex_lock(&s->mu);
			empty = s->nconns == 0;
			if (!empty && now >= deadline) {
				for (struct conn *c = s->conns; c; c = c->next) {
					atomic_store(&c->kick, KICK_HARD);
					shutdown(c->fd, SHUT_RDWR);
				}
			}
			pthread_mutex_unlock(&s->mu);
			if (empty || now >= deadline + 2000)
				break;
		} else {
			srv_timers(s, now);
		}
	}
	atomic_store(&s->quit, true);
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	free(th);
	/* what a worker could not close before the deadline */
	while (s->conns) {
		struct conn *c = s->conns;

		s->conns = c->next;
		close(c->fd);
		conn_free_bufs(c);
		free(c);
	}
	return r;
}

void srv_free(srv *s)
{
	if (s == NULL)
		return;
	if (s->ep >= 0)
		close(s->ep);
	if (s->wake[0] >= 0) {
		close(s->wake[0]);
		close(s->wake[1]);
	}
	if (s->reserve_fd >= 0)
		close(s->reserve_fd);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s->uids);
	free(s);
}
