/* SPDX-License-Identifier: MIT */
/*
 * A fault-injecting PKCS#11 module for the tests (built, never installed).
 * C_GetFunctionList hands out the real module's function list
 * ($P11JWT_FAULT_TARGET, default SoftHSM) with the calls the agent makes
 * wrapped; every other call goes straight through. The wrappers obey a
 * control file named by $P11JWT_FAULT_CTL, re-read whenever its mtime or
 * size changes:
 *
 *   fail C_Sign CKR_DEVICE_REMOVED 3   next 3 calls of C_Sign fail so (0 or
 *                                      no count: every call)
 *   removed on|off                     token pulled out: slot lists show no
 *                                      token, session calls fail
 *                                      CKR_DEVICE_REMOVED; on the way in,
 *                                      every session is closed (and so the
 *                                      user logged out), as on a real card
 *   delay C_Sign 200ms [N]             sleep before the call (the next N
 *                                      calls only, when N is given)
 *   pinpad PIN                         the token has a PIN pad
 *                                      (CKF_PROTECTED_AUTHENTICATION_PATH);
 *                                      C_Login with a NULL PIN logs in as if
 *                                      PIN had been typed on it ("C_Login 1
 *                                      pinpad" in the log)
 *   always_auth LABEL                  the private key LABEL behaves as
 *                                      CKA_ALWAYS_AUTHENTICATE: C_Sign after
 *                                      C_SignInit needs C_Login(CKU_CONTEXT_
 *                                      SPECIFIC), else CKR_USER_NOT_LOGGED_IN
 *   latency 5 | latency 2-8 [serial]   an HSM's signing time: every C_Sign
 *                                      that signs (not a length query)
 *                                      sleeps 5 ms, or uniformly 2 to 8 ms,
 *                                      holding no lock, so sessions sign in
 *                                      parallel; "serial": one C_Sign at a
 *                                      time per session
 *   max_sessions 16 [hidden]           C_OpenSession beyond 16 open sessions
 *                                      answers CKR_SESSION_COUNT (a
 *                                      smartcard's 1, a network HSM's 16);
 *                                      C_GetTokenInfo reports the limit in
 *                                      ulMaxSessionCount and the open ones
 *                                      in ulSessionCount, unless "hidden"
 *                                      (a token that does not say, or whose
 *                                      other sessions another application
 *                                      holds)
 *   session_stats PATH                 rewrite PATH at each C_OpenSession and
 *                                      close: "open 3 peak 16 refused 0"
 *                                      (sessions open through this module
 *                                      now, at most so far, and opens
 *                                      refused by max_sessions)
 *   crash C_Sign [N] [segv|abort|kill] the next N calls (default 1; 0: every
 *                                      call) crash the calling process: a
 *                                      write through NULL (segv, the
 *                                      default), abort() or SIGKILL. N
 *                                      counts across every process that
 *                                      loads the module, in the file
 *                                      $P11JWT_FAULT_CTL.crashes (under
 *                                      flock), so that "crash C_Sign 1"
 *                                      takes exactly one of the agent's
 *                                      signing processes down
 *
 * Counters start again when the file changes. Each wrapped call appends a
 * line to $P11JWT_FAULT_LOG ("C_Login 1 rv=0x0"), which tests count.
 *
 * $P11JWT_FAULT_HIDE_MECHS (read at each call) hides mechanisms, as a
 * token without them would: "CKM_SHA256_RSA_PKCS_PSS,0x43" (names of the
 * signing mechanisms, or hex) are left out of C_GetMechanismList, and
 * C_GetMechanismInfo and C_SignInit answer CKR_MECHANISM_INVALID for them.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define MAX_RULES 32
#define MAX_SESSIONS 256

struct rule {
	char fn[40];
	CK_RV rv;
	long left; /* -1: every call */
	long delay_ms;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST ours;
static void *real_dl;
static struct rule rules[MAX_RULES];
static size_t nrules;
static int removed;
static int pending_close;
/* Held shared around every call into the real module, exclusively while
 * "removed on" closes every session: SoftHSM must not close a session
 * another thread is signing in. */
static pthread_rwlock_t calls = PTHREAD_RWLOCK_INITIALIZER;
#define REAL(call)                                                                                 \
	({                                                                                         \
		CK_RV rv_;                                                                         \
		pthread_rwlock_rdlock(&calls);                                                     \
		rv_ = (call);                                                                      \
		pthread_rwlock_unlock(&calls);                                                     \
		rv_;                                                                               \
	})
static char always_label[128];
static char pinpad_pin[128]; /* "": no PIN pad */
/* latency mode (lat_*, under mu): C_Sign sleeps lat_lo..lat_hi ms */
static long lat_lo, lat_hi;
static int lat_serial;
static unsigned long max_sess; /* 0: no limit */
static int max_sess_hidden;    /* not in C_GetTokenInfo */
static unsigned long nsess;    /* sessions open through us */
static unsigned long nsess_peak, nsess_refused;
static char stats_path[256]; /* "": no session_stats */
/* "crash FN [N] [MODE]" (under mu): crash_n 0 every call */
static char crash_fn[40];
static long crash_n;
static char crash_mode[16];
static struct timespec ctl_mtime;
static off_t ctl_size = -1;
/* sessions where a C_SignInit on an always_auth key awaits a context login:
 * 1 needs login, 2 logged in for this operation */
static struct {
	CK_SESSION_HANDLE h;
	int st;
} aa[MAX_SESSIONS];

static const struct {
	const char *name;
	CK_RV rv;
} rvs[] = {
    {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
    {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
    {"CKR_PIN_LOCKED", CKR_PIN_LOCKED},
    {"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
};

static void flog(const char *fn, unsigned long arg, CK_RV rv)
{
	const char *path = getenv("P11JWT_FAULT_LOG");
	char line[160];
	int fd, n;

	if (path == NULL)
		return;
	n = snprintf(line, sizeof(line), "%s %lu rv=0x%lx\n", fn, arg, (unsigned long)rv);
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	(void)!write(fd, line, (size_t)n);
	close(fd);
}

/* ---- latency mode: "latency LO[-HI] [serial]", "max_sessions N" ---- */

/* per-session C_Sign locks for "serial", by handle (SoftHSM's handles are
 * small and sequential, so two live sessions rarely share one) */
static pthread_mutex_t lat_mu[MAX_SESSIONS];
static pthread_once_t lat_once = PTHREAD_ONCE_INIT;

static void lat_init(void)
{
	size_t i;

	for (i = 0; i < MAX_SESSIONS; i++)
		pthread_mutex_init(&lat_mu[i], NULL);
}

/* mu held */
static void lat_parse(const char *ms, int serial)
{
	char *end = NULL;

	lat_lo = strtol(ms, &end, 10);
	lat_hi = end != NULL && *end == '-' ? strtol(end + 1, NULL, 10) : lat_lo;
	if (lat_lo < 0 || lat_hi < lat_lo)
		lat_lo = lat_hi = 0;
	lat_serial = serial;
}

/* This C_Sign's delay in microseconds, uniform in [lo, hi] ms; 0: none.
 * *serial: hold the session's lock across the delay and the call. */
static long lat_pick(int *serial)
{
	static __thread unsigned int seed;
	long lo, hi;

	pthread_mutex_lock(&mu); /* pre() has read the control file */
	lo = lat_lo;
	hi = lat_hi;
	*serial = lat_serial;
	pthread_mutex_unlock(&mu);
	if (hi <= 0)
		return 0;
	if (seed == 0)
		seed = (unsigned int)time(NULL) ^ (unsigned int)(uintptr_t)&seed;
	if (hi == lo)
		return lo * 1000;
	return lo * 1000 + (long)(rand_r(&seed) % ((hi - lo) * 1000 + 1));
}

static void lat_sleep(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* the real C_Sign after the latency; nothing global is held meanwhile */
static CK_RV lat_sign(CK_SESSION_HANDLE s, CK_BYTE *d, CK_ULONG dl, CK_BYTE *sig, CK_ULONG *sl)
{
	int serial = 0;
	long us = sig != NULL ? lat_pick(&serial) : 0;
	pthread_mutex_t *m = NULL;
	CK_RV rv;

	if (serial) {
		pthread_once(&lat_once, lat_init);
		m = &lat_mu[s % MAX_SESSIONS];
		pthread_mutex_lock(m);
	}
	if (us > 0)
		lat_sleep(us);
	rv = REAL(real->C_Sign(s, d, dl, sig, sl));
	if (m != NULL)
		pthread_mutex_unlock(m);
	return rv;
}

/* mu held; opens and closes only, so rare enough to write each time */
static void lat_stats_write(void)
{
	char line[128];
	int fd, n;

	if (stats_path[0] == '\0')
		return;
	n = snprintf(line, sizeof(line), "open %lu peak %lu refused %lu\n", nsess, nsess_peak,
	             nsess_refused);
	fd = open(stats_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	(void)!write(fd, line, (size_t)n);
	close(fd);
}

/* CKR_OK and counted, or CKR_SESSION_COUNT past max_sessions; the count is
 * taken back by lat_session_closed or when the open fails. */
static CK_RV lat_session_take(void)
{
	CK_RV rv = CKR_OK;

	pthread_mutex_lock(&mu);
	if (max_sess > 0 && nsess >= max_sess) {
		rv = CKR_SESSION_COUNT;
		nsess_refused++;
	} else if (++nsess > nsess_peak) {
		nsess_peak = nsess;
	}
	lat_stats_write();
	pthread_mutex_unlock(&mu);
	return rv;
}

/* one session closed, or (all) every one */
static void lat_session_closed(int all)
{
	pthread_mutex_lock(&mu);
	nsess = all || nsess == 0 ? 0 : nsess - 1;
	lat_stats_write();
	pthread_mutex_unlock(&mu);
}

/* mu held */
static void lat_token_info(CK_TOKEN_INFO *ti)
{
	if (max_sess == 0 || max_sess_hidden)
		return;
	ti->ulMaxSessionCount = max_sess;
	ti->ulSessionCount = nsess;
}

static void close_all_real(void)
{
	CK_SLOT_ID slots[64];
	CK_ULONG n = 64, i;

	if (real->C_GetSlotList(CK_FALSE, slots, &n) != CKR_OK)
		return;
	for (i = 0; i < n; i++)
		real->C_CloseAllSessions(slots[i]);
	lat_session_closed(1);
}

/* mu held */
static void ctl_reload(void)
{
	const char *path = getenv("P11JWT_FAULT_CTL");
	struct stat st;
	char line[256];
	FILE *f;
	int was = removed;

	if (path == NULL || stat(path, &st) < 0) {
		if (ctl_size != -1) {
			nrules = 0;
			removed = 0;
			always_label[0] = '\0';
			lat_lo = lat_hi = 0;
			lat_serial = 0;
			max_sess = 0;
			max_sess_hidden = 0;
			stats_path[0] = '\0';
			ctl_size = -1;
		}
		return;
	}
	if (st.st_size == ctl_size && st.st_mtim.tv_sec == ctl_mtime.tv_sec &&
	    st.st_mtim.tv_nsec == ctl_mtime.tv_nsec)
		return;
	f = fopen(path, "re");
	if (f == NULL)
		return;
	ctl_size = st.st_size;
	ctl_mtime = st.st_mtim;
	nrules = 0;
	removed = 0;
	always_label[0] = '\0';
	pinpad_pin[0] = '\0';
	lat_lo = lat_hi = 0;
	lat_serial = 0;
	max_sess = 0;
	max_sess_hidden = 0;
	stats_path[0] = '\0';
	crash_fn[0] = '\0';
	while (fgets(line, sizeof(line), f) != NULL) {
		char a[64] = "", b[128] = "", c[64] = "";
		long d = 0;
		int k = sscanf(line, "%63s %127s %63s %ld", a, b, c, &d);

		if (k >= 2 && strcmp(a, "crash") == 0) {
			char n[32] = "", m[16] = "";
			char *end = NULL;

			snprintf(crash_fn, sizeof(crash_fn), "%s", b);
			crash_n = 1;
			snprintf(crash_mode, sizeof(crash_mode), "segv");
			if (sscanf(line, "%*s %*s %31s %15s", n, m) >= 1) {
				long v = strtol(n, &end, 10);

				if (end != n && *end == '\0')
					crash_n = v;
				else
					snprintf(m, sizeof(m), "%s", n);
				if (m[0] != '\0')
					snprintf(crash_mode, sizeof(crash_mode), "%s", m);
			}
		} else if (k >= 2 && strcmp(a, "removed") == 0) {
			removed = strcmp(b, "on") == 0;
		} else if (k >= 2 && strcmp(a, "pinpad") == 0) {
			snprintf(pinpad_pin, sizeof(pinpad_pin), "%s", b);
		} else if (k >= 2 && strcmp(a, "latency") == 0) {
			lat_parse(b, strcmp(c, "serial") == 0);
		} else if (k >= 2 && strcmp(a, "session_stats") == 0) {
			snprintf(stats_path, sizeof(stats_path), "%s", b);
		} else if (k >= 2 && strcmp(a, "max_sessions") == 0) {
			max_sess = strtoul(b, NULL, 10);
			max_sess_hidden = strcmp(c, "hidden") == 0;
		} else if (k >= 2 && strcmp(a, "always_auth") == 0) {
			snprintf(always_label, sizeof(always_label), "%s", b);
		} else if (k >= 3 && strcmp(a, "fail") == 0 && nrules < MAX_RULES) {
			struct rule *r = &rules[nrules++];
			size_t i;

			memset(r, 0, sizeof(*r));
			snprintf(r->fn, sizeof(r->fn), "%s", b);
			r->rv = CKR_GENERAL_ERROR;
			for (i = 0; i < sizeof(rvs) / sizeof(rvs[0]); i++)
				if (strcmp(rvs[i].name, c) == 0)
					r->rv = rvs[i].rv;
			if (strncmp(c, "0x", 2) == 0)
				r->rv = strtoul(c, NULL, 16);
			r->left = k >= 4 && d > 0 ? d : -1;
		} else if (k >= 3 && strcmp(a, "delay") == 0 && nrules < MAX_RULES) {
			struct rule *r = &rules[nrules++];

			memset(r, 0, sizeof(*r));
			snprintf(r->fn, sizeof(r->fn), "%s", b);
			r->delay_ms = strtol(c, NULL, 10);
			r->left = k >= 4 && d > 0 ? d : -1;
		}
	}
	fclose(f);
	if (removed && !was)
		pending_close = 1;
}

/* "crash": whether this call is one of the N, counted across processes in
 * CTL.crashes ("SEC NSEC SIZE COUNT" of the control file's version, under
 * flock); mu held. */
static int crash_due(const char *fn)
{
	const char *path = getenv("P11JWT_FAULT_CTL");
	char cpath[512], buf[128];
	long long sec = -1, nsec = -1, size = -1, count = 0;
	int fd, n, due;

	if (crash_fn[0] == '\0' || strcmp(crash_fn, fn) != 0 || path == NULL)
		return 0;
	if (crash_n <= 0)
		return 1;
	snprintf(cpath, sizeof(cpath), "%s.crashes", path);
	fd = open(cpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return 0;
	flock(fd, LOCK_EX);
	n = (int)pread(fd, buf, sizeof(buf) - 1, 0);
	buf[n > 0 ? n : 0] = '\0';
	if (sscanf(buf, "%lld %lld %lld %lld", &sec, &nsec, &size, &count) != 4 ||
	    sec != (long long)ctl_mtime.tv_sec || nsec != (long long)ctl_mtime.tv_nsec ||
	    size != (long long)ctl_size)
		count = 0;
	due = count < crash_n;
	if (due) {
		n = snprintf(buf, sizeof(buf), "%lld %lld %lld %lld\n", (long long)ctl_mtime.tv_sec,
		             (long long)ctl_mtime.tv_nsec, (long long)ctl_size, count + 1);
		if (ftruncate(fd, 0) == 0)
			(void)!pwrite(fd, buf, (size_t)n, 0);
	}
	close(fd); /* and the lock */
	return due;
}

static void crash_now(const char *fn)
{
	char mode[16];

	snprintf(mode, sizeof(mode), "%s", crash_mode);
	flog("crash", (unsigned long)getpid(), 0);
	(void)fn;
	if (strcmp(mode, "abort") == 0)
		abort();
	if (strcmp(mode, "kill") == 0)
		kill(getpid(), SIGKILL);
	/* SIGSEGV with its default action, as a bad pointer in a module would
	 * end a build without sanitizers. Not a write through NULL: UBSan
	 * (-fsanitize=null, halt_on_error) turns that into exit status 1
	 * before it faults; ASan's handler is off (handle_segv=0 in the
	 * tests' ASAN_OPTIONS and UBSAN_OPTIONS). */
	signal(SIGSEGV, SIG_DFL);
	raise(SIGSEGV);
	abort();
}

/* CKR_OK: go on to the real module. kind: 0 module-level (never "removed"),
 * 1 slot/token-level, 2 session-level. */
static CK_RV pre(const char *fn, int kind)
{
	CK_RV rv = CKR_OK;
	long delay = 0;
	size_t i;

	pthread_mutex_lock(&mu);
	ctl_reload();
	if (crash_due(fn))
		crash_now(fn);
	if (removed && kind == 1)
		rv = CKR_TOKEN_NOT_PRESENT;
	else if (removed && kind == 2)
		rv = CKR_DEVICE_REMOVED;
	for (i = 0; i < nrules && rv == CKR_OK; i++) {
		struct rule *r = &rules[i];

		if (strcmp(r->fn, fn) != 0)
			continue;
		if (r->delay_ms > 0) {
			if (r->left == 0)
				continue;
			if (r->left > 0)
				r->left--;
			delay = r->delay_ms;
			continue;
		}
		if (r->left == 0)
			continue;
		if (r->left > 0)
			r->left--;
		rv = r->rv;
	}
	if (pending_close) {
		pending_close = 0;
		pthread_mutex_unlock(&mu);
		pthread_rwlock_wrlock(&calls);
		close_all_real();
		pthread_rwlock_unlock(&calls);
	} else {
		pthread_mutex_unlock(&mu);
	}
	if (delay > 0) {
		struct timespec ts = {delay / 1000, (delay % 1000) * 1000000L};

		nanosleep(&ts, NULL);
	}
	return rv;
}

static int aa_find(CK_SESSION_HANDLE h, int add)
{
	int i, fr = -1;

	for (i = 0; i < MAX_SESSIONS; i++) {
		if (aa[i].st != 0 && aa[i].h == h)
			return i;
		if (aa[i].st == 0 && fr < 0)
			fr = i;
	}
	if (add && fr >= 0) {
		aa[fr].h = h;
		aa[fr].st = 1;
		return fr;
	}
	return -1;
}

static int is_always_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
	char label[128];
	CK_OBJECT_CLASS cls = 0;
	CK_ATTRIBUTE t[2] = {{CKA_LABEL, label, sizeof(label) - 1}, {CKA_CLASS, &cls, sizeof(cls)}};
	char want[128];

	pthread_mutex_lock(&mu);
	snprintf(want, sizeof(want), "%s", always_label);
	pthread_mutex_unlock(&mu);
	if (want[0] == '\0')
		return 0;
	if (REAL(real->C_GetAttributeValue(s, o, t, 2)) != CKR_OK || cls != CKO_PRIVATE_KEY)
		return 0;
	label[t[0].ulValueLen < sizeof(label) ? t[0].ulValueLen : 0] = '\0';
	return strcmp(label, want) == 0;
}

/* ---- hiding mechanisms ($P11JWT_FAULT_HIDE_MECHS) ---- */

static const struct {
	const char *name;
	CK_MECHANISM_TYPE m;
} mech_names[] = {
    {"CKM_RSA_PKCS", CKM_RSA_PKCS},
    {"CKM_RSA_PKCS_PSS", CKM_RSA_PKCS_PSS},
    {"CKM_SHA256_RSA_PKCS", CKM_SHA256_RSA_PKCS},
    {"CKM_SHA384_RSA_PKCS", CKM_SHA384_RSA_PKCS},
    {"CKM_SHA512_RSA_PKCS", CKM_SHA512_RSA_PKCS},
    {"CKM_SHA256_RSA_PKCS_PSS", CKM_SHA256_RSA_PKCS_PSS},
    {"CKM_SHA384_RSA_PKCS_PSS", CKM_SHA384_RSA_PKCS_PSS},
    {"CKM_SHA512_RSA_PKCS_PSS", CKM_SHA512_RSA_PKCS_PSS},
    {"CKM_ECDSA", CKM_ECDSA},
    {"CKM_EDDSA", 0x1057UL},
};

static int mech_hidden(CK_MECHANISM_TYPE m)
{
	const char *list = getenv("P11JWT_FAULT_HIDE_MECHS");
	char item[64];
	size_t n, i;

	while (list != NULL && *list != '\0') {
		n = strcspn(list, ", ");
		if (n > 0 && n < sizeof(item)) {
			memcpy(item, list, n);
			item[n] = '\0';
			if (strncmp(item, "0x", 2) == 0 && strtoul(item, NULL, 16) == m)
				return 1;
			for (i = 0; i < sizeof(mech_names) / sizeof(mech_names[0]); i++)
				if (strcmp(item, mech_names[i].name) == 0 && mech_names[i].m == m)
					return 1;
		}
		list += n;
		list += strspn(list, ", ");
	}
	return 0;
}

static CK_RV w_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE *list, CK_ULONG *n)
{
	CK_MECHANISM_TYPE all[512];
	CK_ULONG na = sizeof(all) / sizeof(all[0]), i, kept = 0;
	CK_RV rv;

	if (n == NULL)
		return CKR_ARGUMENTS_BAD;
	rv = REAL(real->C_GetMechanismList(slot, all, &na));
	if (rv != CKR_OK)
		return rv;
	for (i = 0; i < na; i++)
		if (!mech_hidden(all[i])) {
			if (list != NULL && kept < *n)
				list[kept] = all[i];
			kept++;
		}
	rv = list != NULL && kept > *n ? CKR_BUFFER_TOO_SMALL : CKR_OK;
	*n = kept;
	return rv;
}

static CK_RV w_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE m, CK_MECHANISM_INFO *info)
{
	if (mech_hidden(m))
		return CKR_MECHANISM_INVALID;
	return REAL(real->C_GetMechanismInfo(slot, m, info));
}

static CK_RV w_Initialize(void *args)
{
	CK_RV rv = REAL(real->C_Initialize(args));

	flog("C_Initialize", 0, rv);
	return rv;
}

static CK_RV w_Finalize(void *res)
{
	CK_RV rv = REAL(real->C_Finalize(res));

	if (rv == CKR_OK)
		lat_session_closed(1);
	flog("C_Finalize", 0, rv);
	return rv;
}

static CK_RV w_GetSlotList(CK_BBOOL present, CK_SLOT_ID *list, CK_ULONG *n)
{
	CK_RV rv = pre("C_GetSlotList", 0);
	int rem;

	pthread_mutex_lock(&mu);
	rem = removed;
	pthread_mutex_unlock(&mu);
	if (rv == CKR_OK && rem && present) {
		*n = 0;
		return CKR_OK;
	}
	if (rv == CKR_OK)
		rv = REAL(real->C_GetSlotList(present, list, n));
	return rv;
}

static CK_RV w_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO *ti)
{
	CK_RV rv = pre("C_GetTokenInfo", 1);

	if (rv == CKR_OK)
		rv = REAL(real->C_GetTokenInfo(slot, ti));
	if (rv == CKR_OK && pinpad_pin[0])
		ti->flags |= CKF_PROTECTED_AUTHENTICATION_PATH;
	if (rv == CKR_OK) {
		pthread_mutex_lock(&mu);
		lat_token_info(ti);
		pthread_mutex_unlock(&mu);
	}
	return rv;
}

static CK_RV w_OpenSession(CK_SLOT_ID slot, CK_FLAGS fl, void *app, CK_NOTIFY notify,
                           CK_SESSION_HANDLE *s)
{
	CK_RV rv = pre("C_OpenSession", 1);

	if (rv == CKR_OK && (rv = lat_session_take()) == CKR_OK) {
		rv = REAL(real->C_OpenSession(slot, fl, app, notify, s));
		if (rv != CKR_OK)
			lat_session_closed(0);
	}
	flog("C_OpenSession", 0, rv);
	return rv;
}

static CK_RV w_CloseSession(CK_SESSION_HANDLE s)
{
	CK_RV rv = pre("C_CloseSession", 2);
	int i;

	if (rv == CKR_OK)
		rv = REAL(real->C_CloseSession(s));
	if (rv == CKR_OK)
		lat_session_closed(0);
	pthread_mutex_lock(&mu);
	if ((i = aa_find(s, 0)) >= 0)
		aa[i].st = 0;
	pthread_mutex_unlock(&mu);
	return rv;
}

static CK_RV w_Login(CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR *pin, CK_ULONG len)
{
	CK_RV rv = pre("C_Login", 2);
	int i;

	if (rv == CKR_OK && user == CKU_CONTEXT_SPECIFIC) {
		pthread_mutex_lock(&mu);
		i = aa_find(s, 0);
		if (i >= 0 && aa[i].st == 1) {
			/* emulated: any non-empty PIN passes (the agent only
			 * ever sends the PIN the token accepted at login) */
			aa[i].st = 2;
			pthread_mutex_unlock(&mu);
			rv = pin != NULL && len > 0 ? CKR_OK : CKR_PIN_INCORRECT;
			flog("C_Login", (unsigned long)user, rv);
			return rv;
		}
		pthread_mutex_unlock(&mu);
	}
	if (rv == CKR_OK && user == CKU_USER && pin == NULL && pinpad_pin[0]) {
		/* the user "types" the PIN on the reader's pad */
		rv = REAL(real->C_Login(s, user, (CK_UTF8CHAR *)pinpad_pin,
					(CK_ULONG)strlen(pinpad_pin)));
		flog("C_Login 1 pinpad", 0, rv);
		return rv;
	}
	if (rv == CKR_OK)
		rv = REAL(real->C_Login(s, user, pin, len));
	flog("C_Login", (unsigned long)user, rv);
	return rv;
}

static CK_RV w_CloseAllSessions(CK_SLOT_ID slot)
{
	CK_RV rv = pre("C_CloseAllSessions", 1);

	if (rv == CKR_OK)
		rv = REAL(real->C_CloseAllSessions(slot));
	if (rv == CKR_OK)
		lat_session_closed(1);
	return rv;
}

static CK_RV w_Logout(CK_SESSION_HANDLE s)
{
	CK_RV rv = pre("C_Logout", 2);

	if (rv == CKR_OK)
		rv = REAL(real->C_Logout(s));
	flog("C_Logout", 0, rv);
	return rv;
}

static CK_RV w_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE *t,
                                 CK_ULONG n)
{
	CK_RV rv = pre("C_GetAttributeValue", 2);
	CK_ULONG i;

	if (rv != CKR_OK)
		return rv;
	rv = REAL(real->C_GetAttributeValue(s, o, t, n));
	for (i = 0; i < n; i++)
		if (t[i].type == CKA_ALWAYS_AUTHENTICATE && t[i].pValue != NULL &&
		    t[i].ulValueLen >= 1 && is_always_key(s, o)) {
			*(CK_BBOOL *)t[i].pValue = CK_TRUE;
			t[i].ulValueLen = 1;
		}
	return rv;
}

static CK_RV w_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n)
{
	CK_RV rv = pre("C_FindObjectsInit", 2);

	if (rv == CKR_OK)
		rv = REAL(real->C_FindObjectsInit(s, t, n));
	flog("C_FindObjectsInit", 0, rv);
	return rv;
}

static CK_RV w_FindObjects(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *o, CK_ULONG max, CK_ULONG *n)
{
	CK_RV rv = pre("C_FindObjects", 2);

	return rv == CKR_OK ? REAL(real->C_FindObjects(s, o, max, n)) : rv;
}

static CK_RV w_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE k)
{
	CK_RV rv = pre("C_SignInit", 2);
	int i;

	if (rv == CKR_OK && m != NULL && mech_hidden(m->mechanism))
		rv = CKR_MECHANISM_INVALID;
	if (rv == CKR_OK)
		rv = REAL(real->C_SignInit(s, m, k));
	if (rv == CKR_OK && is_always_key(s, k)) {
		pthread_mutex_lock(&mu);
		if ((i = aa_find(s, 1)) >= 0)
			aa[i].st = 1;
		pthread_mutex_unlock(&mu);
	}
	flog("C_SignInit", 0, rv);
	return rv;
}

static CK_RV w_Sign(CK_SESSION_HANDLE s, CK_BYTE *d, CK_ULONG dl, CK_BYTE *sig, CK_ULONG *sl)
{
	CK_RV rv = pre("C_Sign", 2);
	int i;

	if (rv == CKR_OK) {
		pthread_mutex_lock(&mu);
		i = aa_find(s, 0);
		if (i >= 0 && aa[i].st == 1 && sig != NULL) {
			aa[i].st = 0;
			rv = CKR_USER_NOT_LOGGED_IN;
		} else if (i >= 0 && sig != NULL) {
			aa[i].st = 0;
		}
		pthread_mutex_unlock(&mu);
		if (rv != CKR_OK) {
			/* end the operation in the real module as a failed
			 * C_Sign would */
			CK_BYTE tmp[1024];
			CK_ULONG tl = sizeof(tmp);

			REAL(real->C_Sign(s, d, dl, tmp, &tl));
		}
	}
	if (rv == CKR_OK)
		rv = lat_sign(s, d, dl, sig, sl);
	flog("C_Sign", 0, rv);
	return rv;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST **ret);
CK_RV C_GetFunctionList(CK_FUNCTION_LIST **ret)
{
	CK_RV (*gfl)(CK_FUNCTION_LIST **);
	const char *target = getenv("P11JWT_FAULT_TARGET");
	CK_RV rv = CKR_OK;

	if (ret == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&mu);
	if (real == NULL) {
		real_dl = dlopen(target ? target : "/usr/lib/softhsm/libsofthsm2.so",
		                 RTLD_NOW | RTLD_LOCAL);
		gfl = real_dl ? (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(real_dl, "C_GetFunctionList")
		              : NULL;
		if (gfl == NULL || (rv = gfl(&real)) != CKR_OK || real == NULL) {
			real = NULL;
			pthread_mutex_unlock(&mu);
			return rv != CKR_OK ? rv : CKR_GENERAL_ERROR;
		}
		ours = *real;
		ours.C_GetFunctionList = C_GetFunctionList;
		ours.C_Initialize = w_Initialize;
		ours.C_Finalize = w_Finalize;
		ours.C_GetSlotList = w_GetSlotList;
		ours.C_GetTokenInfo = w_GetTokenInfo;
		ours.C_OpenSession = w_OpenSession;
		ours.C_CloseSession = w_CloseSession;
		ours.C_CloseAllSessions = w_CloseAllSessions;
		ours.C_Login = w_Login;
		ours.C_Logout = w_Logout;
		ours.C_GetAttributeValue = w_GetAttributeValue;
		ours.C_FindObjectsInit = w_FindObjectsInit;
		ours.C_FindObjects = w_FindObjects;
		ours.C_SignInit = w_SignInit;
		ours.C_Sign = w_Sign;
		ours.C_GetMechanismList = w_GetMechanismList;
		ours.C_GetMechanismInfo = w_GetMechanismInfo;
	}
	pthread_mutex_unlock(&mu);
	*ret = &ours;
	return CKR_OK;
}
