/* SPDX-License-Identifier: MIT */
/*
 * Signing processes, in the model of ssh-agent's ssh-pkcs11-helper: a
 * token context can hand its C_SignInit + C_Sign work to n processes of
 * its own, each started by exec (a module initialised before fork() must
 * not be used in the child, PKCS#11 2.40 section 6.7.7), each with its own
 * C_Initialize, C_Login and sessions, so that a module which serialises
 * signatures inside one process signs on several CPUs, and a module that
 * crashes takes one request with it instead of the agent.
 *
 * Parent side (tok_proc_start .. tok_proc_stop): a slot per process, a
 * supervisor thread that starts, reaps (pidfd) and restarts them with a
 * back-off, and tok_proc_sign(), which takes an idle process, sends one
 * frame and waits for one answer on the signing thread itself. Child side:
 * tok_proc_serve(), one request at a time over the same token layer.
 *
 * Frames (docs/design.md, "Signing processes"): a header of two host-order
 * u32, the body's length (at most SP_FRAME_MAX) and the type, then the
 * body, a sequence of fields, each a u32 length and that many bytes
 * (length SP_NULL: an absent string). Both ends are the same program, so
 * host order and no version field.
 */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

extern char **environ;

#define SP_FRAME_MAX (256 * 1024) /* a signing input is under 64 KiB * 4/3 */
#define SP_NULL UINT32_MAX
#define SP_FD 3               /* the socket's number in the process */
#define SP_START_MS 30000     /* C_Initialize + C_Login + the key list */
#define SP_BACKOFF_MIN_MS 100 /* after a process died: 100, 200, 400 ... */
#define SP_BACKOFF_MAX_MS 10000
#define SP_STEADY_MS 10000   /* lived this long (or signed): the streak ends */
#define SP_REAP_WAIT_MS 2000 /* a lost process not gone by then is killed */
#define SP_SPIN_PARENT_US 60
#define SP_SPIN_WORKER_US 30

enum { FR_INIT = 1, FR_RESULT, FR_SIGN, FR_LOGIN, FR_LOCK, FR_RECOVER, FR_LOG };

/* ---- frames --------------------------------------------------------------- */

typedef struct {
	uint8_t *p;
	size_t len, cap;
	bool bad; /* over SP_FRAME_MAX or out of memory */
} fbuf;

static void fb_grow(fbuf *b, size_t more)
{
	size_t need = b->len + more, cap;
	uint8_t *n;

	if (b->bad)
		return;
	if (need > SP_FRAME_MAX + 8) {
		b->bad = true;
		return;
	}
	if (need <= b->cap)
		return;
	cap = b->cap ? b->cap : 512;
	while (cap < need)
		cap *= 2;
	/* frames carry the PIN and signing inputs: wipe what is left behind */
	n = malloc(cap);
	if (n == NULL) {
		b->bad = true;
		return;
	}
	if (b->p != NULL) {
		memcpy(n, b->p, b->len);
		OPENSSL_cleanse(b->p, b->cap);
		free(b->p);
	}
	b->p = n;
	b->cap = cap;
}

static void fb_free(fbuf *b)
{
	if (b->p != NULL) {
		OPENSSL_cleanse(b->p, b->cap);
		free(b->p);
	}
	memset(b, 0, sizeof(*b));
}

static void fb_start(fbuf *b, uint32_t type)
{
	uint32_t h[2] = {0, type};

	b->len = 0;
	b->bad = false;
	fb_grow(b, sizeof(h));
	if (!b->bad) {
		memcpy(b->p, h, sizeof(h));
		b->len = sizeof(h);
	}
}

static void fb_bytes(fbuf *b, const void *p, size_t n)
{
	uint32_t l = p == NULL ? SP_NULL : (uint32_t)n;

	if (p != NULL && n >= SP_NULL) {
		b->bad = true;
		return;
	}
	fb_grow(b, 4 + (p != NULL ? n : 0));
	if (b->bad)
		return;
	memcpy(b->p + b->len, &l, 4);
	b->len += 4;
	if (p != NULL && n > 0) {
		memcpy(b->p + b->len, p, n);
		b->len += n;
	}
}

static void fb_str(fbuf *b, const char *s)
{
	fb_bytes(b, s, s != NULL ? strlen(s) : 0);
}

static void fb_u64(fbuf *b, uint64_t v)
{
	fb_bytes(b, &v, sizeof(v));
}

/* the header's length; the frame is ready to send */
static int fb_end(fbuf *b)
{
	uint32_t l;

	if (b->bad)
		return err_set(P11J_E_REQUEST_TOO_LARGE,
		               "a frame to a signing process is over %d bytes", SP_FRAME_MAX);
	l = (uint32_t)(b->len - 8);
	memcpy(b->p, &l, 4);
	return 0;
}

/* a frame read: its type and a cursor over its fields */
typedef struct {
	uint32_t type;
	const uint8_t *p;
	size_t left;
} frame;

/* the next field; *ret NULL for an absent string. -1 when the frame
 * ends or lies. */
static int fr_field(frame *f, const uint8_t **ret, size_t *ret_len)
{
	uint32_t l;

	if (f->left < 4)
		return -1;
	memcpy(&l, f->p, 4);
	f->p += 4;
	f->left -= 4;
	if (l == SP_NULL) {
		*ret = NULL;
		*ret_len = 0;
		return 0;
	}
	if (l > f->left)
		return -1;
	*ret = f->p;
	*ret_len = l;
	f->p += l;
	f->left -= l;
	return 0;
}

static int fr_u64(frame *f, uint64_t *ret)
{
	const uint8_t *p;
	size_t n;

	if (fr_field(f, &p, &n) < 0 || p == NULL || n != sizeof(*ret))
		return -1;
	memcpy(ret, p, sizeof(*ret));
	return 0;
}

/* a string field as a fresh NUL-terminated copy (NULL stays NULL) */
static int fr_strdup(frame *f, char **ret)
{
	const uint8_t *p;
	size_t n;

	*ret = NULL;
	if (fr_field(f, &p, &n) < 0 || (p != NULL && memchr(p, '\0', n) != NULL))
		return -1;
	if (p == NULL)
		return 0;
	if ((*ret = malloc(n + 1)) == NULL)
		return -1;
	memcpy(*ret, p, n);
	(*ret)[n] = '\0';
	return 0;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The receiving side of one connection: bytes read ahead of the frame in
 * use (a log line and an answer may come in one read). */
typedef struct {
	fbuf in;
	size_t used; /* bytes of in consumed by the last frame returned */
} rx;

static void rx_wipe_used(rx *x)
{
	if (x->used > 0) {
		OPENSSL_cleanse(x->in.p, x->used);
		memmove(x->in.p, x->in.p + x->used, x->in.len - x->used);
		x->in.len -= x->used;
		x->used = 0;
	}
}

static uint64_t spin_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* The next frame, waiting up to timeout_ms (-1: for ever); for the first
 * spin_us it looks at the socket without sleeping (yielding the CPU
 * between looks), since being woken costs both sides here. 0, or -1 with
 * errno: 0 the peer closed, ETIMEDOUT, EPROTO a bad frame. The frame
 * points into x until the next call. */
static int rx_frame_spin(rx *x, int fd, int timeout_ms, unsigned spin_us, frame *ret)
{
	uint64_t spin_end = spin_us > 0 ? spin_now_us() + spin_us : 0;

	rx_wipe_used(x);
	for (;;) {
		uint32_t h[2];
		ssize_t n;

		if (x->in.len >= 8) {
			memcpy(h, x->in.p, 8);
			if (h[0] > SP_FRAME_MAX) {
				errno = EPROTO;
				return -1;
			}
			if (x->in.len >= 8 + (size_t)h[0]) {
				ret->type = h[1];
				ret->p = x->in.p + 8;
				ret->left = h[0];
				x->used = 8 + (size_t)h[0];
				return 0;
			}
			fb_grow(&x->in, 8 + (size_t)h[0] - x->in.len);
		} else {
			fb_grow(&x->in, 4096);
		}
		if (x->in.bad) {
			errno = ENOMEM;
			return -1;
		}
		if (spin_end != 0) {
			n = recv(fd, x->in.p + x->in.len, x->in.cap - x->in.len, MSG_DONTWAIT);
			if (n > 0) {
				x->in.len += (size_t)n;
				continue;
			}
			if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
				if (n == 0)
					errno = 0;
				return -1;
			}
			if (spin_now_us() < spin_end) {
				sched_yield();
				continue;
			}
			spin_end = 0;
		}
		if (timeout_ms >= 0) {
			struct pollfd pf = {.fd = fd, .events = POLLIN};
			int pr = poll(&pf, 1, timeout_ms);

			if (pr < 0 && errno == EINTR)
				continue;
			if (pr == 0) {
				errno = ETIMEDOUT;
				return -1;
			}
		}
		n = recv(fd, x->in.p + x->in.len, x->in.cap - x->in.len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0)
			errno = 0;
		if (n <= 0)
			return -1;
		x->in.len += (size_t)n;
	}
}

static int rx_frame(rx *x, int fd, int timeout_ms, frame *ret)
{
	return rx_frame_spin(x, fd, timeout_ms, 0, ret);
}

/* How long the agent's signing thread looks for the answer, and a
 * signing process for its next request, before sleeping (µs): a sleeping
 * thread woken over a socket costs both sides several µs here, more than
 * an ES256 signature's own overhead. Measured with p11jwt-bench's signing
 * processes section (-DP11JWT_SP_SPIN_ENV builds read P11JWT_SP_SPIN=
 * "parent,worker"): at 2 pipelined ES256 clients 60/30 signed 0.67 of raw
 * in process where 0/0 signed 0.50, and one request at a time 0.62 vs
 * 0.34. */
static unsigned sp_spin_parent = SP_SPIN_PARENT_US, sp_spin_worker = SP_SPIN_WORKER_US;
#ifdef P11JWT_SP_SPIN_ENV
static void spin_env(void)
{
	const char *e = getenv("P11JWT_SP_SPIN"); /* benchmark builds only */

	if (e != NULL)
		sscanf(e, "%u,%u", &sp_spin_parent, &sp_spin_worker);
}
#else
static void spin_env(void)
{
}
#endif

/* ---- the agent's side ------------------------------------------------------ */

/* DEAD: no process; STARTING: the supervisor starts it; IDLE; BUSY: a
 * thread owns it for one exchange; LOST: its connection failed and no
 * thread owns it, waiting to be reaped (killed if it lingers). Only a
 * slot's owner closes its socket, so a descriptor is never reused under
 * a thread that reads it. */
typedef enum { SP_DEAD, SP_STARTING, SP_IDLE, SP_BUSY, SP_LOST } sp_state;

typedef struct {
	sp_state st;
	pid_t pid;
	int fd, pidfd;
	rx x;
	bool lost;                /* a signing thread saw the socket fail */
	bool reaped;              /* the exit below is known */
	int end_code, end_status; /* waitid(): CLD_KILLED / CLD_DUMPED / CLD_EXITED */
	uint64_t started_ms, lost_ms;
	bool signed_once;
	bool was_ready;                  /* it served: its death is a crash */
	uint64_t st_sig, st_samp, st_ns; /* its tok_sign_stats() last seen */
} sp_slot;

struct tok_procs {
	tok_ctx *ctx;
	unsigned n;
	/* the token's configuration, for each process's tok_open */
	char *module_path, *init_args, *uri, *exe, *arg;
	char **allow;
	size_t nallow;
	bool allow_unsafe;
	char **envp; /* environ without the PIN and the service manager's */

	pthread_mutex_t mu; /* everything below */
	pthread_cond_t cv;  /* a slot became idle, or a lost one was reaped */
	sp_slot sp[TOK_PROC_MAX];
	bool stopping;          /* no more starts; the processes are asked to end */
	bool quit;              /* the supervisor returns */
	unsigned streak;        /* processes that died young in a row */
	uint64_t next_start_ms; /* no start before */
	uint64_t restarts, crashes, starts;
	char last_death[700]; /* for requests refused meanwhile */

	int evfd; /* wakes the supervisor */
	pthread_t thr;
	bool thr_started;
};

static void wake(struct tok_procs *p)
{
	uint64_t one = 1;

	(void)!write(p->evfd, &one, sizeof(one));
}

/* "killed by signal 11 (SIGSEGV, Segmentation fault)" */
static void death_text(const sp_slot *s, char *buf, size_t len)
{
	if (!s->reaped)
		snprintf(buf, len, "closed its socket");
	else if (s->end_code == CLD_EXITED)
		snprintf(buf, len, "exited with status %d", s->end_status);
	else
		snprintf(buf, len, "was killed by signal %d (SIG%s, %s)%s", s->end_status,
		         sigabbrev_np(s->end_status) ? sigabbrev_np(s->end_status) : "?",
		         strsignal(s->end_status),
		         s->end_code == CLD_DUMPED ? ", core dumped" : "");
}

static unsigned backoff_ms(unsigned streak)
{
	unsigned ms = SP_BACKOFF_MIN_MS;

	while (streak > 1 && ms < SP_BACKOFF_MAX_MS) {
		ms *= 2;
		streak--;
	}
	return ms < SP_BACKOFF_MAX_MS ? ms : SP_BACKOFF_MAX_MS;
}

/* mu held: the slot's process is gone (reaped): close it, schedule the
 * restart, wake whoever waits. */
static void slot_dead(struct tok_procs *p, sp_slot *s)
{
	char what[160];
	bool young = !s->signed_once && tok_now_ms() - s->started_ms < SP_STEADY_MS;
	bool crashed = s->was_ready && !p->stopping;
	unsigned ms;

	death_text(s, what, sizeof(what));
	if (s->fd >= 0)
		close(s->fd);
	if (s->pidfd >= 0)
		close(s->pidfd);
	s->fd = s->pidfd = -1;
	fb_free(&s->x.in);
	s->x.used = 0;
	s->st = SP_DEAD;
	if (!p->stopping) {
		/* processes that die young in a row wait longer and longer */
		p->streak = young ? p->streak + 1 : 1;
		ms = backoff_ms(p->streak);
		p->next_start_ms = tok_now_ms() + ms;
		p->crashes += crashed;
		snprintf(p->last_death, sizeof(p->last_death), "signing process %d %s", (int)s->pid,
		         what);
		tok_log(p->ctx, TOK_LOG_WARNING,
		        "signing process %d for token '%s' %s%s; starting another in %u ms",
		        (int)s->pid, p->ctx->label, what, s->lost ? " while signing" : "", ms);
	}
	pthread_cond_broadcast(&p->cv);
}

/* Start one process and hand it the token's configuration. mu not held. */
static int spawn_one(struct tok_procs *p, sp_slot *s)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t sa;
	sigset_t none, all;
	int sv[2] = {-1, -1}, keep = -1, r;
	char *argv[3] = {(char *)"p11jwt-agent", p->arg, NULL};
	pid_t pid = -1;
	fbuf b = {0};

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return err_set(P11J_E_SYSTEM, "socketpair for a signing process: %s",
		               strerror(errno));
	/* dup2() onto SP_FD in the child must change the descriptor, so that
	 * its close-on-exec flag is cleared */
	keep = fcntl(sv[1], F_DUPFD_CLOEXEC, SP_FD + 1);
	close(sv[1]);
	if (keep < 0) {
		close(sv[0]);
		return err_set(P11J_E_SYSTEM, "fcntl: %s", strerror(errno));
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, keep, SP_FD);
	posix_spawn_file_actions_addclosefrom_np(&fa, SP_FD + 1);
	posix_spawnattr_init(&sa);
	/* the agent's threads block signals and ignore SIGPIPE: the process
	 * starts with neither */
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&sa, &none);
	posix_spawnattr_setsigdefault(&sa, &all);
	posix_spawnattr_setflags(&sa, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	r = posix_spawn(&pid, p->exe, &fa, &sa, argv, p->envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&sa);
	close(keep);
	if (r != 0) {
		close(sv[0]);
		return err_set(P11J_E_SYSTEM, "cannot start a signing process (%s): %s", p->exe,
		               strerror(r));
	}
	s->pid = pid;
	s->fd = sv[0];
	s->pidfd = pidfd_open(pid, 0);
	s->started_ms = tok_now_ms();
	s->signed_once = s->lost = s->reaped = s->was_ready = false;
	s->st_sig = s->st_samp = s->st_ns = 0;
	s->x.used = 0;
	if (s->pidfd < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return err_set(P11J_E_SYSTEM, "pidfd_open: %s", strerror(errno));
	}
	fb_start(&b, FR_INIT);
	fb_u64(&b, (uint64_t)getpid());
	fb_u64(&b, p->allow_unsafe);
	fb_str(&b, p->module_path);
	fb_str(&b, p->init_args);
	fb_str(&b, p->uri);
	fb_u64(&b, p->nallow);
	for (size_t i = 0; i < p->nallow; i++)
		fb_str(&b, p->allow[i]);
	r = fb_end(&b);
	if (r == 0 && send_all(s->fd, b.p, b.len) < 0)
		r = err_set(P11J_E_SYSTEM, "signing process %d: %s", (int)pid, strerror(errno));
	fb_free(&b);
	return r;
}

static void log_line(struct tok_procs *p, const sp_slot *s, frame *f)
{
	uint64_t level;
	char *msg = NULL;

	if (fr_u64(f, &level) == 0 && fr_strdup(f, &msg) == 0 && msg != NULL)
		tok_log(p->ctx, (int)level, "signing process %d: %s", (int)s->pid, msg);
	free(msg);
}

/* The answer to the request just sent: code and data (a signature, or the
 * error's message); log lines before it are logged. -1 with errno when
 * the connection failed. */
/* A RESULT's optional tail: the process's tok_sign_stats() so far, added
 * to the agent's context as they grow, so that "status" counts the
 * signatures and the module's CPU made in the processes. */
static void stats_add(struct tok_procs *p, sp_slot *s, frame *f)
{
	uint64_t v[3];

	if (fr_u64(f, &v[0]) < 0 || fr_u64(f, &v[1]) < 0 || fr_u64(f, &v[2]) < 0)
		return;
	if (v[0] >= s->st_sig && v[1] >= s->st_samp && v[2] >= s->st_ns) {
		atomic_fetch_add_explicit(&p->ctx->signatures, v[0] - s->st_sig,
		                          memory_order_relaxed);
		atomic_fetch_add_explicit(&p->ctx->cpu_samples, v[1] - s->st_samp,
		                          memory_order_relaxed);
		atomic_fetch_add_explicit(&p->ctx->cpu_sampled_ns, v[2] - s->st_ns,
		                          memory_order_relaxed);
	}
	s->st_sig = v[0];
	s->st_samp = v[1];
	s->st_ns = v[2];
}

static int read_result(struct tok_procs *p, sp_slot *s, int timeout_ms, int64_t *ret_code,
                       uint64_t *ret_state, const uint8_t **ret_data, size_t *ret_len)
{
	frame f;

	for (;;) {
		if (rx_frame_spin(&s->x, s->fd, timeout_ms, timeout_ms < 0 ? sp_spin_parent : 0,
		                  &f) < 0)
			return -1;
		if (f.type == FR_LOG) {
			log_line(p, s, &f);
			continue;
		}
		if (f.type != FR_RESULT) {
			errno = EPROTO;
			return -1;
		}
		uint64_t code;

		if (fr_u64(&f, &code) < 0 || fr_u64(&f, ret_state) < 0 ||
		    fr_field(&f, ret_data, ret_len) < 0) {
			errno = EPROTO;
			return -1;
		}
		*ret_code = (int64_t)code;
		stats_add(p, s, &f);
		return 0;
	}
}

/* One request and its answer on slot s (the caller owns it: BUSY, or
 * STARTING for the supervisor). On an I/O failure the slot is marked lost
 * and P11J_E_TOKEN_UNAVAILABLE returned with the process's end in the
 * message once it is known (when wait_reap). *ret_unsent (may be NULL):
 * the request could not be sent, the process was gone before it. */
static int exchange(struct tok_procs *p, sp_slot *s, fbuf *req, int timeout_ms, bool wait_reap,
                    const char *doing, uint8_t *out, size_t *outlen, uint64_t *ret_state,
                    bool *ret_unsent)
{
	bool sent = false;
	const uint8_t *data = NULL;
	size_t len = 0;
	int64_t code = 0;
	uint64_t state = 0;
	char what[160];
	int e;

	if (fb_end(req) < 0)
		return P11J_E_REQUEST_TOO_LARGE;
	if (ret_unsent != NULL)
		*ret_unsent = false;
	if ((sent = send_all(s->fd, req->p, req->len) == 0) &&
	    read_result(p, s, timeout_ms, &code, &state, &data, &len) == 0) {
		if (ret_state != NULL)
			*ret_state = state;
		if (code == 0) {
			if (out != NULL) {
				if (len > *outlen)
					return err_set(P11J_E_PKCS11,
					               "signing process %d answered %zu bytes",
					               (int)s->pid, len);
				memcpy(out, data, len);
				*outlen = len;
			}
			return 0;
		}
		if (code >= 0 || code <= P11J_E__LAST)
			code = P11J_E_INTERNAL;
		return err_set((int)code, "%.*s", (int)(len < 900 ? len : 900), (const char *)data);
	}
	e = errno;
	pthread_mutex_lock(&p->mu);
	s->lost = true;
	s->lost_ms = tok_now_ms();
	wake(p);
	if (!sent && ret_unsent != NULL) {
		*ret_unsent = true;
		pthread_mutex_unlock(&p->mu);
		return P11J_E_TOKEN_UNAVAILABLE;
	}
	if (wait_reap) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += SP_REAP_WAIT_MS / 1000 + 1;
		while (!s->reaped && !p->stopping &&
		       pthread_cond_timedwait(&p->cv, &p->mu, &ts) == 0)
			;
	}
	if (s->reaped)
		death_text(s, what, sizeof(what));
	else if (e == ETIMEDOUT)
		snprintf(what, sizeof(what), "did not answer in time");
	else
		snprintf(what, sizeof(what), "failed: %s", e ? strerror(e) : "connection closed");
	pthread_mutex_unlock(&p->mu);
	return err_set(P11J_E_TOKEN_UNAVAILABLE,
	               "signing process %d for token '%s' %s while %s; it is started again and "
	               "the agent goes on",
	               (int)s->pid, p->ctx->label, what, doing);
}

/* The parent's PIN (or its PIN pad) to a process; op_lock held (either
 * way). 0 when nothing is to be done. */
static int send_login(struct tok_procs *p, sp_slot *s, bool wait_reap)
{
	tok_ctx *ctx = p->ctx;
	fbuf b = {0};
	int r;

	if (tok_get_state(ctx) == TOK_LOCKED || !(ctx->pin_cached || ctx->pinpad))
		return 0;
	fb_start(&b, FR_LOGIN);
	fb_u64(&b, ctx->pinpad);
	fb_bytes(&b, ctx->pinpad ? NULL : ctx->pin, ctx->pinpad ? 0 : ctx->pin_len);
	r = exchange(p, s, &b, SP_START_MS, wait_reap, "logging in", NULL, NULL, NULL, NULL);
	fb_free(&b); /* wipes the PIN */
	return r;
}

/* The supervisor: start slot i's process and wait until it has opened
 * the token and logged in. The parent's op_lock is held shared meanwhile,
 * so that a login or lock waits for it and then reaches it too. */
static void start_slot(struct tok_procs *p, unsigned i)
{
	sp_slot *s = &p->sp[i];
	int64_t code;
	uint64_t state;
	const uint8_t *data;
	size_t len;
	char msg[600];
	int r;

	pthread_rwlock_rdlock(&p->ctx->op_lock);
	pthread_mutex_lock(&p->mu);
	if (p->stopping) {
		pthread_mutex_unlock(&p->mu);
		pthread_rwlock_unlock(&p->ctx->op_lock);
		return;
	}
	s->st = SP_STARTING;
	pthread_mutex_unlock(&p->mu);
	r = spawn_one(p, s);
	if (r == 0) {
		if (read_result(p, s, SP_START_MS, &code, &state, &data, &len) < 0) {
			r = err_set(P11J_E_TOKEN_UNAVAILABLE, "no answer (%s)",
			            errno ? strerror(errno) : "it exited");
		} else if (code < 0) {
			r = err_set(code > P11J_E__LAST ? (int)code : P11J_E_INTERNAL, "%.*s",
			            (int)(len < 500 ? len : 500), (const char *)data);
		} else {
			r = send_login(p, s, false);
		}
	}
	pthread_mutex_lock(&p->mu);
	p->starts++;
	if (p->starts > p->n)
		p->restarts++;
	if (r == 0) {
		s->st = SP_IDLE;
		s->was_ready = true;
		if (p->stopping) /* tok_proc_stop() came meanwhile */
			shutdown(s->fd, SHUT_RDWR);
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
		pthread_rwlock_unlock(&p->ctx->op_lock);
		tok_log(p->ctx, TOK_LOG_INFO, "signing process %d for token '%s' is ready",
		        (int)s->pid, p->ctx->label);
		return;
	}
	snprintf(msg, sizeof(msg), "%s", err_msg());
	if (s->pid > 0 && s->pidfd >= 0) {
		/* reaped by the supervisor's loop, which schedules the next try */
		kill(s->pid, SIGKILL);
		s->st = SP_LOST;
		s->lost = true;
		s->lost_ms = tok_now_ms();
		snprintf(p->last_death, sizeof(p->last_death),
		         "signing process %d did not start: %s", (int)s->pid, msg);
	} else {
		s->st = SP_DEAD;
		p->streak++;
		p->next_start_ms = tok_now_ms() + backoff_ms(p->streak);
		snprintf(p->last_death, sizeof(p->last_death), "%s", msg);
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	pthread_rwlock_unlock(&p->ctx->op_lock);
	tok_log(p->ctx, TOK_LOG_WARNING, "a signing process for token '%s' did not start: %s",
	        p->ctx->label, msg);
}

/* Reap slot s if its process has ended (its pidfd is readable). mu held. */
static void try_reap(struct tok_procs *p, sp_slot *s)
{
	siginfo_t si;

	memset(&si, 0, sizeof(si));
	if (waitid(P_PIDFD, (id_t)s->pidfd, &si, WEXITED | WNOHANG) < 0 || si.si_pid == 0)
		return;
	s->reaped = true;
	s->end_code = si.si_code;
	s->end_status = si.si_status;
	pthread_cond_broadcast(&p->cv);
	/* an owned slot is closed by its owner (give_slot) */
	if (s->st != SP_BUSY)
		slot_dead(p, s);
}

static void *supervisor(void *arg)
{
	struct tok_procs *p = arg;
	struct pollfd pf[TOK_PROC_MAX + 1];
	sp_slot *who[TOK_PROC_MAX + 1];

	pthread_mutex_lock(&p->mu);
	while (!p->quit) {
		uint64_t now = tok_now_ms();
		int timeout = -1, npf = 1;
		unsigned i;

		for (i = 0; i < p->n; i++) {
			sp_slot *s = &p->sp[i];

			if (s->st == SP_DEAD && now >= p->next_start_ms && !p->stopping) {
				pthread_mutex_unlock(&p->mu);
				start_slot(p, i);
				pthread_mutex_lock(&p->mu);
				now = tok_now_ms();
				continue;
			}
			if (s->st == SP_DEAD) {
				uint64_t d = p->next_start_ms - now;

				if (timeout < 0 || d < (uint64_t)timeout)
					timeout = (int)d;
			}
			/* a process whose socket failed and that is still there
			 * after a while is stopped */
			if ((s->st == SP_BUSY || s->st == SP_LOST) && s->lost && !s->reaped) {
				if (now - s->lost_ms >= SP_REAP_WAIT_MS / 2)
					kill(s->pid, SIGKILL);
				else if (timeout < 0 || timeout > 50)
					timeout = 50;
			}
		}
		pf[0] = (struct pollfd){.fd = p->evfd, .events = POLLIN};
		for (i = 0; i < p->n; i++)
			if (p->sp[i].st != SP_DEAD && p->sp[i].pidfd >= 0 && !p->sp[i].reaped) {
				pf[npf] = (struct pollfd){.fd = p->sp[i].pidfd, .events = POLLIN};
				who[npf++] = &p->sp[i];
			}
		pthread_mutex_unlock(&p->mu);
		(void)poll(pf, (nfds_t)npf, timeout);
		if (pf[0].revents & POLLIN) {
			uint64_t v;

			(void)!read(p->evfd, &v, sizeof(v));
		}
		pthread_mutex_lock(&p->mu);
		for (int j = 1; j < npf; j++)
			if (pf[j].revents != 0 && who[j]->st != SP_DEAD && !who[j]->reaped)
				try_reap(p, who[j]);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* An idle process, taken (BUSY); or at once an error when none runs. */
static int take_slot(struct tok_procs *p, sp_slot **ret)
{
	pthread_mutex_lock(&p->mu);
	for (;;) {
		bool alive = false;
		unsigned i;

		for (i = 0; i < p->n && !p->stopping; i++) {
			sp_slot *s = &p->sp[i];

			if (s->st == SP_IDLE && !s->lost) {
				s->st = SP_BUSY;
				pthread_mutex_unlock(&p->mu);
				*ret = s;
				return 0;
			}
			alive |= (s->st == SP_BUSY && !s->lost) || s->st == SP_STARTING;
		}
		if (!alive || p->stopping) {
			uint64_t now = tok_now_ms(), at = p->next_start_ms;
			int r =
			    err_set(P11J_E_TOKEN_UNAVAILABLE,
			            "no signing process for token '%s' is running (%s); the next "
			            "starts in %llu ms",
			            p->ctx->label, p->last_death[0] ? p->last_death : "starting",
			            (unsigned long long)(at > now ? at - now : 0));

			pthread_mutex_unlock(&p->mu);
			return r;
		}
		pthread_cond_wait(&p->cv, &p->mu);
	}
}

static void give_slot(struct tok_procs *p, sp_slot *s)
{
	pthread_mutex_lock(&p->mu);
	if (s->reaped)
		slot_dead(p, s);
	else if (s->lost)
		s->st = SP_LOST; /* the supervisor reaps it */
	else
		s->st = SP_IDLE;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	if (s->lost)
		wake(p);
}

static int sign_on(struct tok_procs *p, sp_slot *s, const tok_key *k, jwa_alg alg,
                   const uint8_t *in, size_t inlen, uint8_t *sig, size_t *siglen,
                   uint64_t *ret_state, bool *ret_unsent);

int tok_proc_sign(tok_ctx *ctx, const tok_key *k, jwa_alg alg, const uint8_t *in, size_t inlen,
                  uint8_t *sig, size_t *siglen, bool *ret_fault)
{
	struct tok_procs *p = ctx->procs;
	sp_slot *s = NULL;
	uint64_t state = 0;
	size_t cap = *siglen;
	bool unsent = false;
	int r;

	*ret_fault = false;
	/* a process found gone before it got the request (it died while
	 * idle) costs the request nothing: the next one takes it */
	for (unsigned tries = 0;; tries++) {
		if ((r = take_slot(p, &s)) < 0)
			return r;
		r = sign_on(p, s, k, alg, in, inlen, sig, siglen, &state, &unsent);
		if (r == 0 || !unsent || tries >= p->n)
			break;
		give_slot(p, s);
		*siglen = cap;
	}
	/* the process answered that its token failed: this context's token
	 * is the same one */
	*ret_fault = r == P11J_E_TOKEN_UNAVAILABLE && state == TOK_UNAVAILABLE && !s->lost;
	give_slot(p, s);
	if (r == 0 && *siglen != k->sig_len)
		return err_set(P11J_E_PKCS11,
		               "signing process answered %zu bytes for %s, expected %zu", *siglen,
		               jwa_name(alg), k->sig_len);
	return r;
}

static int sign_on(struct tok_procs *p, sp_slot *s, const tok_key *k, jwa_alg alg,
                   const uint8_t *in, size_t inlen, uint8_t *sig, size_t *siglen,
                   uint64_t *ret_state, bool *ret_unsent)
{
	fbuf b = {0};
	char doing[200];
	int r;

	fb_start(&b, FR_SIGN);
	fb_u64(&b, (uint64_t)alg);
	fb_u64(&b, (uint64_t)k->kind);
	fb_str(&b, k->name);
	fb_bytes(&b, k->id != NULL ? k->id : (const uint8_t *)"", k->id_len);
	fb_bytes(&b, in != NULL ? in : (const uint8_t *)"", inlen);
	snprintf(doing, sizeof(doing), "signing %s with key '%s'", jwa_name(alg), k->name);
	r = exchange(p, s, &b, -1, true, doing, sig, siglen, ret_state, ret_unsent);
	fb_free(&b);
	if (r == 0)
		s->signed_once = true;
	return r;
}

/* op_lock held exclusively: every live process is idle. Send each the
 * frame make() builds; a process that fails is stopped (and so started
 * again in the context's new state). */
static void each_idle(tok_ctx *ctx, uint32_t type, const char *doing)
{
	struct tok_procs *p = ctx->procs;

	for (unsigned i = 0; p != NULL && i < p->n; i++) {
		sp_slot *s = &p->sp[i];
		fbuf b = {0};
		int r;

		pthread_mutex_lock(&p->mu);
		if (s->st != SP_IDLE || s->lost) {
			pthread_mutex_unlock(&p->mu);
			continue;
		}
		s->st = SP_BUSY;
		pthread_mutex_unlock(&p->mu);
		if (type == FR_LOGIN) {
			r = send_login(p, s, false);
		} else {
			fb_start(&b, type);
			r = exchange(p, s, &b, SP_START_MS, false, doing, NULL, NULL, NULL, NULL);
			fb_free(&b);
		}
		if (r < 0 && !s->lost) {
			tok_log(
			    ctx, TOK_LOG_WARNING,
			    "signing process %d for token '%s' failed %s (%s); starting another",
			    (int)s->pid, ctx->label, doing, err_msg());
			pthread_mutex_lock(&p->mu);
			s->lost = true;
			s->lost_ms = tok_now_ms();
			kill(s->pid, SIGKILL);
			pthread_mutex_unlock(&p->mu);
		}
		give_slot(p, s);
	}
}

void tok_proc_recovered(tok_ctx *ctx)
{
	struct tok_procs *p = ctx->procs;

	if (p == NULL)
		return;
	each_idle(ctx, FR_RECOVER, "recovering");
	/* processes that could not start while the token was away: now */
	pthread_mutex_lock(&p->mu);
	p->next_start_ms = 0;
	p->streak = 0;
	pthread_mutex_unlock(&p->mu);
	wake(p);
}

void tok_proc_login(tok_ctx *ctx)
{
	each_idle(ctx, FR_LOGIN, "logging in");
}

void tok_proc_lock(tok_ctx *ctx)
{
	each_idle(ctx, FR_LOCK, "locking");
}

static char *dup_or_null(const char *s, bool *bad)
{
	char *d = s != NULL ? strdup(s) : NULL;

	if (s != NULL && d == NULL)
		*bad = true;
	return d;
}

static void procs_free(struct tok_procs *p)
{
	if (p == NULL)
		return;
	free(p->module_path);
	free(p->init_args);
	free(p->uri);
	free(p->exe);
	free(p->arg);
	for (size_t i = 0; p->allow != NULL && i < p->nallow; i++)
		free(p->allow[i]);
	free(p->allow);
	for (size_t i = 0; p->envp != NULL && p->envp[i] != NULL; i++)
		free(p->envp[i]);
	free(p->envp);
	if (p->evfd >= 0)
		close(p->evfd);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
}

/* The environment a process gets: the agent's, without the PIN and
 * what the service manager meant for the agent alone. */
static bool env_keep(const char *e)
{
	static const char *const drop[] = {
	    "P11JWT_PIN=", "CREDENTIALS_DIRECTORY=", "NOTIFY_SOCKET=", "LISTEN_FDS=",
	    "LISTEN_PID=", "LISTEN_FDNAMES="};

	for (size_t i = 0; i < ARRAY_SIZE(drop); i++)
		if (strncmp(e, drop[i], strlen(drop[i])) == 0)
			return false;
	return true;
}

int tok_proc_start(tok_ctx *ctx, const tok_config *cfg, const tok_proc_config *pc)
{
	struct tok_procs *p;
	bool bad = false;
	size_t n = 0, i;
	uint64_t deadline;
	int r = 0;

	if (ctx == NULL || cfg == NULL || pc == NULL || pc->exe == NULL || pc->arg == NULL ||
	    pc->n < 1 || pc->n > TOK_PROC_MAX || ctx->procs != NULL)
		return err_set(P11J_E_BAD_REQUEST, "tok_proc_start: bad arguments");
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return err_nomem();
	spin_env();
	p->ctx = ctx;
	p->n = pc->n;
	p->evfd = -1;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	for (i = 0; i < TOK_PROC_MAX; i++) {
		p->sp[i].fd = p->sp[i].pidfd = -1;
		p->sp[i].st = SP_DEAD;
	}
	p->module_path = dup_or_null(cfg->module_path, &bad);
	p->init_args = dup_or_null(cfg->module_init_args, &bad);
	p->uri = dup_or_null(cfg->uri != NULL ? cfg->uri : "pkcs11:", &bad);
	p->exe = dup_or_null(pc->exe, &bad);
	p->arg = dup_or_null(pc->arg, &bad);
	p->allow_unsafe = cfg->allow_unsafe_keys;
	while (cfg->module_allow != NULL && cfg->module_allow[n] != NULL)
		n++;
	if ((p->allow = calloc(n + 1, sizeof(char *))) == NULL)
		bad = true;
	for (i = 0; !bad && i < n; i++)
		p->allow[p->nallow++] = dup_or_null(cfg->module_allow[i], &bad);
	for (n = 0; environ != NULL && environ[n] != NULL; n++)
		;
	if ((p->envp = calloc(n + 1, sizeof(char *))) == NULL)
		bad = true;
	for (i = 0, n = 0; !bad && environ != NULL && environ[i] != NULL; i++)
		if (env_keep(environ[i]))
			p->envp[n++] = dup_or_null(environ[i], &bad);
	if (bad) {
		procs_free(p);
		return err_nomem();
	}
	if ((p->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		r = err_set(P11J_E_SYSTEM, "eventfd: %s", strerror(errno));
		procs_free(p);
		return r;
	}
	ctx->procs = p;
	if (pthread_create(&p->thr, NULL, supervisor, p) != 0) {
		ctx->procs = NULL;
		procs_free(p);
		return err_set(P11J_E_SYSTEM, "cannot start the signing processes' supervisor");
	}
	p->thr_started = true;
	/* the first ones before the agent serves: the one that does not
	 * start says why */
	deadline = tok_now_ms() + SP_START_MS + 5000;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		unsigned idle = 0;

		for (i = 0; i < p->n; i++)
			idle += p->sp[i].st == SP_IDLE;
		if (idle == p->n)
			break;
		if (p->last_death[0] != '\0' || tok_now_ms() > deadline) {
			r = err_set(P11J_E_TOKEN_UNAVAILABLE,
			            "the signing processes for token '%s' do not start: %s",
			            ctx->label, p->last_death[0] ? p->last_death : "timed out");
			break;
		}
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&p->cv, &p->mu, &ts);
	}
	pthread_mutex_unlock(&p->mu);
	if (r < 0) {
		char msg[700];

		snprintf(msg, sizeof(msg), "%s", err_msg());
		tok_proc_stop(ctx);
		return err_set(r, "%s", msg);
	}
	tok_log(ctx, TOK_LOG_INFO, "token '%s': %u signing processes", ctx->label, p->n);
	return 0;
}

void tok_proc_stop(tok_ctx *ctx)
{
	struct tok_procs *p = ctx != NULL ? ctx->procs : NULL;
	uint64_t deadline;

	if (p == NULL)
		return;
	/* No signature is in flight (tok_close). Closing a process's socket
	 * ends it (C_Finalize, exit); the supervisor, still running, reaps
	 * them and starts none; one still there after 2 s is killed. The
	 * supervisor must outlive them: it is the thread their
	 * PR_SET_PDEATHSIG watches. */
	pthread_mutex_lock(&p->mu);
	p->stopping = true;
	for (unsigned i = 0; i < p->n; i++)
		if (p->sp[i].st != SP_DEAD && p->sp[i].fd >= 0)
			shutdown(p->sp[i].fd, SHUT_RDWR);
	pthread_cond_broadcast(&p->cv);
	wake(p);
	deadline = tok_now_ms() + 2000;
	for (bool killed = false;;) {
		unsigned alive = 0;
		struct timespec ts;

		for (unsigned i = 0; i < p->n; i++)
			alive += p->sp[i].st != SP_DEAD;
		if (alive == 0 || !p->thr_started)
			break;
		if (tok_now_ms() >= deadline && !killed) {
			for (unsigned i = 0; i < p->n; i++)
				if (p->sp[i].st != SP_DEAD && !p->sp[i].reaped)
					kill(p->sp[i].pid, SIGKILL);
			killed = true;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 20 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&p->cv, &p->mu, &ts);
	}
	p->quit = true;
	pthread_mutex_unlock(&p->mu);
	wake(p);
	if (p->thr_started)
		pthread_join(p->thr, NULL);
	ctx->procs = NULL;
	procs_free(p);
}

bool tok_proc_stats_get(tok_ctx *ctx, tok_proc_stats *ret)
{
	struct tok_procs *p = ctx != NULL ? ctx->procs : NULL;

	memset(ret, 0, sizeof(*ret));
	if (p == NULL)
		return false;
	pthread_mutex_lock(&p->mu);
	ret->n = p->n;
	ret->restarts = p->restarts;
	ret->crashes = p->crashes;
	for (unsigned i = 0; i < p->n; i++)
		if ((p->sp[i].st == SP_IDLE || p->sp[i].st == SP_BUSY) && !p->sp[i].lost) {
			ret->pid[i] = (int)p->sp[i].pid;
			ret->running++;
		}
	pthread_mutex_unlock(&p->mu);
	return true;
}

/* ---- the signing process ---------------------------------------------------- */

typedef struct {
	int fd;
	fbuf out;
} sv_ctx;

/* the token layer's warnings and errors go to the agent, which logs them */
static void sv_log(int level, const char *msg, void *ud)
{
	sv_ctx *sv = ud;
	fbuf b = {0};

	if (level > TOK_LOG_WARNING)
		return;
	fb_start(&b, FR_LOG);
	fb_u64(&b, (uint64_t)level);
	fb_str(&b, msg);
	if (fb_end(&b) == 0)
		(void)send_all(sv->fd, b.p, b.len);
	fb_free(&b);
}

static int sv_result(sv_ctx *sv, tok_ctx *ctx, int code, const void *data, size_t len)
{
	fbuf *b = &sv->out;
	int r;

	if (code < 0 && data == NULL) {
		data = err_msg();
		len = strlen(err_msg());
	}
	fb_start(b, FR_RESULT);
	fb_u64(b, (uint64_t)(int64_t)code);
	fb_u64(b, ctx != NULL ? (uint64_t)tok_get_state(ctx) : TOK_UNAVAILABLE);
	fb_bytes(b, data != NULL ? data : "", len);
	if (ctx != NULL) {
		uint64_t nsig, nsamp, ns;

		tok_sign_stats(ctx, &nsig, &nsamp, &ns);
		fb_u64(b, nsig);
		fb_u64(b, nsamp);
		fb_u64(b, ns);
	}
	r = fb_end(b);
	if (r == 0)
		r = send_all(sv->fd, b->p, b->len);
	OPENSSL_cleanse(b->p, b->len);
	return r;
}

/* The key the agent means: the same name, CKA_ID and kind; listed again
 * once when this process does not know it (a key made since it
 * started). */
static const tok_key *sv_key(tok_ctx *ctx, const char *name, const uint8_t *id, size_t idlen,
                             uint64_t kind)
{
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < tok_key_count(ctx); i++) {
			const tok_key *k = tok_key_at(ctx, i);

			if (strcmp(k->name, name) == 0 && k->id_len == idlen &&
			    (idlen == 0 || memcmp(k->id, id, idlen) == 0) &&
			    (uint64_t)k->kind == kind)
				return k;
		}
		if (pass == 0 && tok_rescan(ctx, NULL, NULL) < 0)
			break;
	}
	return NULL;
}

static int sv_sign(sv_ctx *sv, tok_ctx *ctx, frame *f)
{
	uint64_t alg, kind;
	const uint8_t *id, *in;
	size_t idlen, inlen;
	char *name = NULL;
	uint8_t sig[TOK_SIG_MAX];
	size_t siglen = sizeof(sig);
	const tok_key *k;
	int r;

	if (fr_u64(f, &alg) < 0 || fr_u64(f, &kind) < 0 || fr_strdup(f, &name) < 0 ||
	    name == NULL || fr_field(f, &id, &idlen) < 0 || fr_field(f, &in, &inlen) < 0 ||
	    id == NULL || in == NULL) {
		free(name);
		return -1;
	}
	k = sv_key(ctx, name, id, idlen, kind);
	if (k == NULL)
		r = err_set(P11J_E_UNKNOWN_KEY,
		            "key '%s' is not on token '%s' for the signing process", name,
		            ctx->label);
	else
		r = tok_sign(ctx, k, (jwa_alg)alg, in, inlen, sig, &siglen);
	free(name);
	r = r == 0 ? sv_result(sv, ctx, 0, sig, siglen) : sv_result(sv, ctx, r, NULL, 0);
	OPENSSL_cleanse(sig, sizeof(sig));
	return r;
}

static int sv_open(sv_ctx *sv, frame *f, tok_ctx **ret)
{
	tok_config tc = {0};
	uint64_t ppid, unsafe, nallow;
	char *module = NULL, *init = NULL, *uri = NULL, *allow[33] = {0};
	int r = -1;

	*ret = NULL;
	if (f->type != FR_INIT || fr_u64(f, &ppid) < 0 || fr_u64(f, &unsafe) < 0 ||
	    fr_strdup(f, &module) < 0 || fr_strdup(f, &init) < 0 || fr_strdup(f, &uri) < 0 ||
	    fr_u64(f, &nallow) < 0 || nallow > 32)
		goto out;
	for (uint64_t i = 0; i < nallow; i++)
		if (fr_strdup(f, &allow[i]) < 0 || allow[i] == NULL)
			goto out;
	/* the agent's death ends this process too */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || (uint64_t)getppid() != ppid)
		goto out;
	tc.module_path = module;
	tc.module_init_args = init;
	tc.module_allow = nallow > 0 ? (const char *const *)allow : NULL;
	tc.uri = uri;
	tc.allow_unsafe_keys = unsafe != 0;
	tc.allow_locked = true;
	tc.no_pin_sources = true;
	tc.log = sv_log;
	tc.log_ud = sv;
	r = tok_open(&tc, ret);
	r = sv_result(sv, *ret, r, NULL, 0) < 0 || r < 0 ? -1 : 0;
out:
	free(module);
	free(init);
	free(uri);
	for (int i = 0; i < 33; i++)
		free(allow[i]);
	return r;
}

int tok_proc_serve(int fd)
{
	struct rlimit rl = {0, 0};
	sv_ctx sv = {.fd = fd};
	tok_ctx *ctx = NULL;
	rx x = {0};
	frame f;
	int r = 1;

	spin_env();
	/* like the agent: no core file, no ptrace by our uid (the PIN) */
	prctl(PR_SET_DUMPABLE, 0);
	setrlimit(RLIMIT_CORE, &rl);
	signal(SIGPIPE, SIG_IGN);
	if (rx_frame(&x, fd, SP_START_MS, &f) < 0 || sv_open(&sv, &f, &ctx) < 0)
		goto out;
	for (;;) {
		const uint8_t *pin;
		size_t pinlen;
		uint64_t pinpad;
		int e;

		if (rx_frame_spin(&x, fd, -1, sp_spin_worker, &f) < 0) {
			r = errno == 0 ? 0 : 1; /* the agent closed: done */
			break;
		}
		switch (f.type) {
		case FR_SIGN:
			e = sv_sign(&sv, ctx, &f);
			break;
		case FR_LOGIN:
			if (fr_u64(&f, &pinpad) < 0 || fr_field(&f, &pin, &pinlen) < 0) {
				e = -1;
				break;
			}
			e = tok_login(ctx, pinpad ? NULL : (const char *)pin, pinpad ? 0 : pinlen);
			/* the PIN's bytes in the frame are wiped by the next
			 * rx_frame (rx_wipe_used) */
			e = sv_result(&sv, ctx, e, NULL, 0);
			break;
		case FR_LOCK:
			e = sv_result(&sv, ctx, tok_lock(ctx), NULL, 0);
			break;
		case FR_RECOVER:
			e = tok_recover(ctx, true, false);
			e = sv_result(&sv, ctx, e, NULL, 0);
			break;
		default:
			e = -1;
		}
		rx_wipe_used(&x);
		if (e < 0)
			break;
	}
out:
	tok_close(ctx);
	fb_free(&x.in);
	fb_free(&sv.out);
	close(fd);
	return r;
}
