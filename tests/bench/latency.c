/* SPDX-License-Identifier: MIT */
/*
 * p11jwt-bench-latency: the agent in front of a token that takes time to
 * sign and allows few sessions, as a network HSM or a smartcard does.
 *
 * For each configuration: a fresh SoftHSM token (softhsm-conf/mktoken, once
 * per run) behind tests/faultmod with a control file ("latency 5",
 * "max_sessions 16", "session_stats PATH"), a fresh p11jwt-agent on it,
 * client threads over raw Unix sockets, each sending
 *   {"op":"sign","key":"ec-p256","alg":"ES256","claims":{...}}
 * one at a time and checking "ok":true; a warm-up, then --reps
 * repetitions of --duration seconds, each answer counted in the repetition
 * it arrived in. Reported: signatures per second, p50/p99/max latency (the
 * medians over the repetitions), failed answers, each client's share, and
 * the sessions the agent opened (faultmod's count: peak, refused).
 *
 * Targets (issue 21): 5 ms per signature, 16 sessions, 32 clients: at least
 * 0.95 x 16 / 5 ms = 3040 signatures/s; one session, 16 clients: no
 * failure and p99 / p50 <= 3. Markdown on stdout (and --markdown), JSON
 * with --json. docs/performance.md, "HSM latency (faultmod)".
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#ifndef BENCH_SRCDIR
#define BENCH_SRCDIR "."
#endif
#ifndef BENCH_BUILDDIR
#define BENCH_BUILDDIR "."
#endif

#define TOKEN_LABEL "p11jwt-test"
#define MAX_CLIENTS 256
#define MAX_REPS 16
#define REQ                                                                                        \
	"{\"op\":\"sign\",\"key\":\"ec-p256\",\"alg\":\"ES256\",\"claims\":{\"iss\":\"b\","        \
	"\"sub\":\"b\",\"aud\":\"https://x\"}}\n"

extern char **environ;

static struct {
	const char *agent, *faultmod, *mktoken, *json_path, *md_path, *only;
	double duration, warmup;
	int reps;
} O = {
    .agent = BENCH_BUILDDIR "/agent/p11jwt-agent",
    .faultmod = BENCH_BUILDDIR "/tests/faultmod/libp11jfault.so",
    .mktoken = BENCH_SRCDIR "/softhsm-conf/mktoken",
    .duration = 5,
    .warmup = 1,
    .reps = 3,
};

/* A configuration: faultmod's latency and session limit, clients, and the
 * agent's --workers (0: its default, two per CPU). */
typedef struct {
	const char *name;
	const char *latency; /* "5", "2-8" (ms) */
	int max_sessions;
	int clients;
	int workers;
	double min_rate; /* target, 0: none */
	double max_tail; /* target p99/p50, 0: none */
} cfg_t;

static const cfg_t CFGS[] = {
    {"16 sessions, 5 ms, 32 clients", "5", 16, 32, 0, 3040, 0},
    {"16 sessions, 5 ms, 32 clients, --workers 32", "5", 16, 32, 32, 3040, 0},
    {"16 sessions, 2-8 ms, 32 clients, --workers 32", "2-8", 16, 32, 32, 0, 0},
    {"1 session, 5 ms, 16 clients", "5", 1, 16, 0, 0, 3},
    {"1 session, 5 ms, 16 clients, --workers 16", "5", 1, 16, 16, 0, 3},
};
#define NCFGS (sizeof(CFGS) / sizeof(CFGS[0]))

typedef struct {
	double rate, p50_ms, p99_ms, max_ms;
	long ok, failed;
	long share_min, share_max; /* answers per client */
} rep_t;

typedef struct {
	rep_t med; /* medians over the repetitions */
	rep_t reps[MAX_REPS];
	long peak_sessions, refused, failed_total;
	int workers;
	char first_error[256];
	bool started;
} res_t;

static char tmpdir[88], tokdir[PATH_MAX], sockpath[108]; /* sun_path: 108 */
static pid_t agent_pid = -1;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("p11jwt-bench-latency: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("# ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_s(double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_dbl);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int run_wait(char *const argv[], const char *log)
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int st;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	if (posix_spawn(&pid, argv[0], &fa, NULL, argv, environ) != 0)
		return -1;
	posix_spawn_file_actions_destroy(&fa);
	if (waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		die("cannot write %s: %s", path, strerror(errno));
}

/* ---- the agent behind faultmod ---------------------------------------- */

static void agent_start(const cfg_t *c, const char *ctl, const char *log)
{
	char pinfile[PATH_MAX + 8], line[PATH_MAX + 64], dir[PATH_MAX], workers[16];
	char *argv[24];
	int n = 0, pfd[2];
	posix_spawn_file_actions_t fa;
	FILE *f;
	bool ready = false;

	snprintf(pinfile, sizeof(pinfile), "%s/pin", tokdir);
	snprintf(dir, sizeof(dir), "%s", O.faultmod);
	if (strrchr(dir, '/') != NULL)
		*strrchr(dir, '/') = '\0';
	snprintf(workers, sizeof(workers), "%d", c->workers);
	argv[n++] = (char *)O.agent;
	argv[n++] = "--foreground";
	argv[n++] = "--print-env";
	argv[n++] = "--module";
	argv[n++] = (char *)O.faultmod;
	argv[n++] = "--module-allow";
	argv[n++] = dir;
	argv[n++] = "--token";
	argv[n++] = "pkcs11:token=" TOKEN_LABEL;
	argv[n++] = "--socket";
	argv[n++] = sockpath;
	argv[n++] = "--pin-file";
	argv[n++] = pinfile;
	argv[n++] = "--audit";
	argv[n++] = "none";
	if (c->workers > 0) {
		argv[n++] = "--workers";
		argv[n++] = workers;
	}
	argv[n] = NULL;
	setenv("P11JWT_FAULT_CTL", ctl, 1);
	unsetenv("P11JWT_FAULT_LOG"); /* a write per call would cost time */
	if (pipe(pfd) < 0)
		die("pipe: %s", strerror(errno));
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	posix_spawn_file_actions_addclose(&fa, pfd[0]);
	posix_spawn_file_actions_addclose(&fa, pfd[1]);
	posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
	if (posix_spawn(&agent_pid, O.agent, &fa, NULL, argv, environ) != 0)
		die("cannot start %s", O.agent);
	posix_spawn_file_actions_destroy(&fa);
	close(pfd[1]);
	f = fdopen(pfd[0], "r");
	while (f != NULL && fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, "P11JWT_AGENT_SOCK=", 18) == 0) {
			ready = true;
			break;
		}
	if (f != NULL)
		fclose(f); /* the agent prints nothing more */
	if (!ready)
		die("the agent did not start (see %s)", log);
}

static void agent_stop(void)
{
	int st;

	if (agent_pid <= 0)
		return;
	kill(agent_pid, SIGTERM);
	for (int i = 0; i < 150; i++) {
		if (waitpid(agent_pid, &st, WNOHANG) == agent_pid) {
			agent_pid = -1;
			return;
		}
		sleep_s(0.1);
	}
	kill(agent_pid, SIGKILL);
	waitpid(agent_pid, &st, 0);
	agent_pid = -1;
}

/* the agent's threads (/proc/PID/status): its workers and a few others */
static int agent_threads(void)
{
	char path[64], line[256];
	int v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)agent_pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, "Threads:", 8) == 0)
			v = atoi(line + 8);
	fclose(f);
	return v;
}

/* ---- clients ---------------------------------------------------------- */

typedef struct {
	pthread_t th;
	int fd;
	/* per repetition: answers, failures, latencies */
	long ok[MAX_REPS], failed[MAX_REPS];
	uint64_t *lat[MAX_REPS];
	size_t nlat[MAX_REPS], cap[MAX_REPS];
	long failed_other; /* in the warm-up or between repetitions */
	char err[256];
} client_t;

static atomic_int cur_rep; /* -1 warm-up, 0..reps-1, reps: stop */
static int nreps_now;

static int connect_agent(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sockpath);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* one request, one answer line; 1 ok, 0 an answer without "ok":true, -1 I/O */
static int roundtrip(client_t *c, char *buf, size_t cap)
{
	size_t len = strlen(REQ), off = 0;
	ssize_t w, r;

	while (off < len) {
		w = send(c->fd, REQ + off, len - off, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		off += (size_t)w;
	}
	off = 0;
	for (;;) {
		r = recv(c->fd, buf + off, cap - 1 - off, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		off += (size_t)r;
		buf[off] = '\0';
		if (memchr(buf, '\n', off) != NULL)
			break;
		if (off >= cap - 1)
			return -1;
	}
	return strstr(buf, "\"ok\":true") != NULL;
}

static void *client_main(void *arg)
{
	client_t *c = arg;
	char buf[16384];
	int rep, r;

	for (;;) {
		uint64_t t0 = now_ns(), dt;

		if (atomic_load(&cur_rep) >= nreps_now)
			break;
		r = roundtrip(c, buf, sizeof(buf));
		dt = now_ns() - t0;
		rep = atomic_load(&cur_rep);
		if (r != 1 && c->err[0] == '\0')
			snprintf(c->err, sizeof(c->err), "%.*s",
			         r < 0 ? 3 : (int)strcspn(buf, "\n"), r < 0 ? "I/O" : buf);
		if (rep < 0 || rep >= nreps_now) {
			if (r != 1)
				c->failed_other++;
		} else if (r == 1) {
			if (c->nlat[rep] == c->cap[rep]) {
				c->cap[rep] = c->cap[rep] ? 2 * c->cap[rep] : 4096;
				c->lat[rep] = realloc(c->lat[rep], c->cap[rep] * sizeof(uint64_t));
				if (c->lat[rep] == NULL)
					die("out of memory");
			}
			c->lat[rep][c->nlat[rep]++] = dt;
			c->ok[rep]++;
		} else {
			c->failed[rep]++;
		}
		if (r < 0) {
			/* the connection is gone: a new one, as a client would */
			close(c->fd);
			sleep_s(0.01);
			if ((c->fd = connect_agent()) < 0)
				break;
		}
	}
	return NULL;
}

/* faultmod's session_stats line: "open N peak P refused R" */
static void read_stats(const char *path, long *peak, long *refused)
{
	FILE *f = fopen(path, "r");
	long open_n = 0;

	*peak = *refused = -1;
	if (f == NULL)
		return;
	if (fscanf(f, "open %ld peak %ld refused %ld", &open_n, peak, refused) != 3)
		*peak = *refused = -1;
	fclose(f);
}

static void run_cfg(const cfg_t *cfg, size_t idx, res_t *res)
{
	char ctl[PATH_MAX + 32], stats[PATH_MAX + 32], log[PATH_MAX + 32], text[PATH_MAX + 128];
	client_t *cl = calloc((size_t)cfg->clients, sizeof(*cl));
	double v[MAX_REPS];
	int i, k;

	if (cl == NULL)
		die("out of memory");
	snprintf(ctl, sizeof(ctl), "%s/fault-%zu.ctl", tmpdir, idx);
	snprintf(stats, sizeof(stats), "%s/sessions-%zu", tmpdir, idx);
	snprintf(log, sizeof(log), "%s/agent-%zu.log", tmpdir, idx);
	snprintf(text, sizeof(text), "latency %s\nmax_sessions %d\nsession_stats %s\n",
	         cfg->latency, cfg->max_sessions, stats);
	write_text(ctl, text);
	agent_start(cfg, ctl, log);
	res->started = true;
	nreps_now = O.reps;
	atomic_store(&cur_rep, -1);
	for (i = 0; i < cfg->clients; i++) {
		if ((cl[i].fd = connect_agent()) < 0)
			die("cannot connect to %s: %s", sockpath, strerror(errno));
		if (pthread_create(&cl[i].th, NULL, client_main, &cl[i]) != 0)
			die("pthread_create failed");
	}
	sleep_s(O.warmup);
	for (k = 0; k < O.reps; k++) {
		uint64_t t0 = now_ns();

		atomic_store(&cur_rep, k);
		sleep_s(O.duration);
		res->reps[k].rate = (double)(now_ns() - t0) / 1e9; /* seconds, for now */
	}
	atomic_store(&cur_rep, O.reps);
	res->workers = agent_threads();
	for (i = 0; i < cfg->clients; i++)
		pthread_join(cl[i].th, NULL);
	read_stats(stats, &res->peak_sessions, &res->refused);
	for (k = 0; k < O.reps; k++) {
		rep_t *r = &res->reps[k];
		size_t n = 0, j;
		uint64_t *all;

		r->share_min = LONG_MAX;
		for (i = 0; i < cfg->clients; i++) {
			n += cl[i].nlat[k];
			r->ok += cl[i].ok[k];
			r->failed += cl[i].failed[k];
			if (cl[i].ok[k] < r->share_min)
				r->share_min = cl[i].ok[k];
			if (cl[i].ok[k] > r->share_max)
				r->share_max = cl[i].ok[k];
		}
		r->rate = (double)r->ok / r->rate;
		all = malloc((n ? n : 1) * sizeof(*all));
		if (all == NULL)
			die("out of memory");
		n = 0;
		for (i = 0; i < cfg->clients; i++)
			for (j = 0; j < cl[i].nlat[k]; j++)
				all[n++] = cl[i].lat[k][j];
		qsort(all, n, sizeof(*all), cmp_u64);
		if (n > 0) {
			r->p50_ms = (double)all[n / 2] / 1e6;
			r->p99_ms = (double)all[(size_t)((double)(n - 1) * 0.99)] / 1e6;
			r->max_ms = (double)all[n - 1] / 1e6;
		}
		free(all);
		res->failed_total += r->failed;
	}
	for (i = 0; i < cfg->clients; i++) {
		res->failed_total += cl[i].failed_other;
		if (res->first_error[0] == '\0' && cl[i].err[0] != '\0')
			snprintf(res->first_error, sizeof(res->first_error), "%s", cl[i].err);
		close(cl[i].fd);
		for (k = 0; k < O.reps; k++)
			free(cl[i].lat[k]);
	}
	free(cl);
#define MED(field)                                                                                 \
	do {                                                                                       \
		for (k = 0; k < O.reps; k++)                                                       \
			v[k] = (double)res->reps[k].field;                                         \
		res->med.field = median(v, O.reps);                                                \
	} while (0)
	MED(rate);
	MED(p50_ms);
	MED(p99_ms);
	MED(max_ms);
	MED(ok);
	MED(failed);
	MED(share_min);
	MED(share_max);
#undef MED
	agent_stop();
}

/* ---- report ------------------------------------------------------------ */

static bool pass_rate(const cfg_t *c, const res_t *r)
{
	return c->min_rate <= 0 || r->med.rate >= c->min_rate;
}

static bool pass_tail(const cfg_t *c, const res_t *r)
{
	return c->max_tail <= 0 || (r->failed_total == 0 && r->med.p50_ms > 0 &&
	                            r->med.p99_ms / r->med.p50_ms <= c->max_tail);
}

static void report_md(FILE *f, const res_t *res)
{
	size_t i;

	fprintf(f, "| configuration | sig/s | / ideal | p50 ms | p99 ms | p99/p50 | max ms | "
	           "failed | per client min-max | sessions peak (refused) | agent threads | "
	           "target |\n");
	fprintf(f, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
	for (i = 0; i < NCFGS; i++) {
		const cfg_t *c = &CFGS[i];
		const res_t *r = &res[i];
		double ideal = 1000.0 * c->max_sessions / 5.0; /* 2-8 ms: 5 on average */
		char target[96] = "-";

		if (!r->started)
			continue;
		if (c->min_rate > 0)
			snprintf(target, sizeof(target), "≥ %.0f/s: %s", c->min_rate,
			         pass_rate(c, r) ? "PASS" : "FAIL");
		else if (c->max_tail > 0)
			snprintf(target, sizeof(target), "none failed, p99/p50 ≤ %.0f: %s",
			         c->max_tail, pass_tail(c, r) ? "PASS" : "FAIL");
		fprintf(
		    f,
		    "| %s | %.0f | %.3f | %.1f | %.1f | %.2f | %.1f | %ld | %ld-%ld | %ld (%ld) | "
		    "%d | %s |\n",
		    c->name, r->med.rate, r->med.rate / ideal, r->med.p50_ms, r->med.p99_ms,
		    r->med.p50_ms > 0 ? r->med.p99_ms / r->med.p50_ms : 0, r->med.max_ms,
		    r->failed_total, r->med.share_min, r->med.share_max, r->peak_sessions,
		    r->refused, r->workers, target);
	}
	for (i = 0; i < NCFGS; i++)
		if (res[i].started && res[i].first_error[0] != '\0')
			fprintf(f, "\n%s: first failed answer: `%s`\n", CFGS[i].name,
			        res[i].first_error);
}

static void report_json(const char *path, const res_t *res)
{
	json_t *j = json_object(), *a = json_array();
	size_t i;
	int k;

	for (i = 0; i < NCFGS; i++) {
		const cfg_t *c = &CFGS[i];
		const res_t *r = &res[i];
		json_t *reps = json_array(), *o;

		if (!r->started)
			continue;
		for (k = 0; k < O.reps; k++)
			json_array_append_new(
			    reps,
			    json_pack("{s:f,s:f,s:f,s:f,s:I,s:I}", "per_s", r->reps[k].rate,
			              "p50_ms", r->reps[k].p50_ms, "p99_ms", r->reps[k].p99_ms,
			              "max_ms", r->reps[k].max_ms, "ok", (json_int_t)r->reps[k].ok,
			              "failed", (json_int_t)r->reps[k].failed));
		o = json_pack(
		    "{s:s,s:s,s:i,s:i,s:i,s:f,s:f,s:f,s:f,s:f,s:I,s:I,s:I,s:I,s:I,s:i,s:o}", "name",
		    c->name, "latency_ms", c->latency, "max_sessions", c->max_sessions, "clients",
		    c->clients, "workers_option", c->workers, "per_s", r->med.rate,
		    "ratio_to_ideal", r->med.rate / (1000.0 * c->max_sessions / 5.0), "p50_ms",
		    r->med.p50_ms, "p99_ms", r->med.p99_ms, "max_ms", r->med.max_ms, "failed",
		    (json_int_t)r->failed_total, "share_min", (json_int_t)r->med.share_min,
		    "share_max", (json_int_t)r->med.share_max, "sessions_peak",
		    (json_int_t)r->peak_sessions, "sessions_refused", (json_int_t)r->refused,
		    "agent_threads", r->workers, "reps", reps);
		if (c->min_rate > 0)
			json_object_set_new(o, "target_pass", json_boolean(pass_rate(c, r)));
		if (c->max_tail > 0)
			json_object_set_new(o, "target_pass", json_boolean(pass_tail(c, r)));
		if (r->first_error[0] != '\0')
			json_object_set_new(o, "first_error", json_string(r->first_error));
		json_array_append_new(a, o);
	}
	json_object_set_new(j, "latency", a);
	json_object_set_new(j, "duration_s", json_real(O.duration));
	json_object_set_new(j, "reps", json_integer(O.reps));
	json_object_set_new(j, "cpus", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
	if (json_dump_file(j, path, JSON_INDENT(2)) != 0)
		die("cannot write %s", path);
	json_decref(j);
}

/* ---- main ------------------------------------------------------------- */

static void cleanup(void)
{
	char *argv[] = {"/bin/rm", "-rf", "--", tmpdir, NULL};
	pid_t pid;
	int st;

	agent_stop();
	if (tmpdir[0] != '\0' && getenv("P11JWT_BENCH_KEEP") == NULL &&
	    posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) == 0)
		waitpid(pid, &st, 0);
}

static void on_signal(int sig)
{
	(void)sig;
	exit(1);
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: p11jwt-bench-latency [options]\n"
	        "  --agent PATH      p11jwt-agent (default: %s)\n"
	        "  --faultmod PATH   tests/faultmod module (default: %s)\n"
	        "  --mktoken PATH    token maker (default: %s)\n"
	        "  --duration S      seconds per repetition (default 5)\n"
	        "  --warmup S        seconds before the first (default 1)\n"
	        "  --reps N          repetitions, the median reported (default 3)\n"
	        "  --only N          only configuration N (1-%zu)\n"
	        "  --json FILE, --markdown FILE\n",
	        O.agent, O.faultmod, O.mktoken, NCFGS);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {{"agent", 1, 0, 'a'},
	                                   {"faultmod", 1, 0, 'f'},
	                                   {"mktoken", 1, 0, 'k'},
	                                   {"duration", 1, 0, 'd'},
	                                   {"warmup", 1, 0, 'w'},
	                                   {"reps", 1, 0, 'r'},
	                                   {"json", 1, 0, 'j'},
	                                   {"markdown", 1, 0, 'm'},
	                                   {"only", 1, 0, 'o'},
	                                   {"help", 0, 0, 'h'},
	                                   {0, 0, 0, 0}};
	res_t res[NCFGS];
	char conf[PATH_MAX + 32], log[PATH_MAX + 32];
	const char *tbase;
	size_t i, only = 0;
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'a':
			O.agent = optarg;
			break;
		case 'f':
			O.faultmod = optarg;
			break;
		case 'k':
			O.mktoken = optarg;
			break;
		case 'd':
			O.duration = atof(optarg);
			break;
		case 'w':
			O.warmup = atof(optarg);
			break;
		case 'r':
			O.reps = atoi(optarg);
			break;
		case 'j':
			O.json_path = optarg;
			break;
		case 'm':
			O.md_path = optarg;
			break;
		case 'o':
			only = (size_t)atoi(optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (O.reps < 1 || O.reps > MAX_REPS || O.duration <= 0 || O.warmup < 0 || only > NCFGS)
		die("bad --reps (1-%d), --duration, --warmup or --only", MAX_REPS);
	if (access(O.agent, X_OK) != 0 || access(O.faultmod, R_OK) != 0)
		die("%s or %s is not built", O.agent, O.faultmod);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	tbase = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	if (strlen(tbase) > 60)
		tbase = "/tmp"; /* the socket path must fit sun_path */
	snprintf(tmpdir, sizeof(tmpdir), "%s/p11jwt-lat.XXXXXX", tbase);
	if (mkdtemp(tmpdir) == NULL)
		die("mkdtemp: %s", strerror(errno));
	atexit(cleanup);
	snprintf(sockpath, sizeof(sockpath), "%s/agent.sock", tmpdir);
	snprintf(tokdir, sizeof(tokdir), "%s/token", tmpdir);
	snprintf(log, sizeof(log), "%s/mktoken.log", tmpdir);
	{
		char *mk[] = {(char *)O.mktoken, tokdir, NULL};

		note("token: %s %s", O.mktoken, tokdir);
		if (run_wait(mk, log) != 0)
			die("mktoken failed (see %s)", log);
	}
	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", tokdir);
	setenv("SOFTHSM2_CONF", conf, 1);
	unsetenv("P11JWT_FAULT_TARGET");
	unsetenv("P11JWT_FAULT_HIDE_MECHS");
	memset(res, 0, sizeof(res));
	for (i = 0; i < NCFGS; i++) {
		if (only != 0 && only != i + 1)
			continue;
		note("%s: warm-up %.1f s, %d x %.1f s", CFGS[i].name, O.warmup, O.reps, O.duration);
		run_cfg(&CFGS[i], i, &res[i]);
		note("  %.0f sig/s, p50 %.1f ms, p99 %.1f ms, %ld failed, sessions peak %ld",
		     res[i].med.rate, res[i].med.p50_ms, res[i].med.p99_ms, res[i].failed_total,
		     res[i].peak_sessions);
	}
	report_md(stdout, res);
	if (O.md_path != NULL) {
		FILE *f = fopen(O.md_path, "w");

		if (f == NULL)
			die("cannot write %s", O.md_path);
		report_md(f, res);
		fclose(f);
	}
	if (O.json_path != NULL)
		report_json(O.json_path, res);
	return 0;
}
