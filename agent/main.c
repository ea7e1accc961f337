/* SPDX-License-Identifier: MIT */
/*
 * p11jwt-agent: logs in to a PKCS#11 token once and signs JWTs for local
 * clients over a Unix socket (docs/protocol.md). Only this file prints,
 * parses options and chooses exit codes.
 */
#include "agent/audit.h"
#include "agent/config.h"
#include "agent/keyring.h"
#include "agent/proto.h"
#include "agent/reload.h"
#include "agent/server.h"
#include "agent/svc.h"
#include "common/err.h"
#include "common/util.h"
#include "pkcs11/tok.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <openssl/crypto.h>

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };
/* argv[1] of a signing process (--sign-processes): the agent's own binary
 * again, serving its parent on fd 3 (pkcs11/tok-proc.c) */
#define SIGN_PROCESS_ARG "--internal-sign-process"
#define MAX_ALLOW 16

static bool use_syslog;
static srv *the_srv;
static audit_sink *the_audit;
static uint64_t started_ms; /* CLOCK_MONOTONIC, for "status" uptime */
static reload_ctx *the_rl; /* the current configuration, keyring and tokens */

static void logv(int level, const char *fmt, va_list ap)
{
	static const char *const names[] = { [LOG_ERR] = "error", [LOG_WARNING] = "warning",
					     [LOG_NOTICE] = "notice", [LOG_INFO] = "info",
					     [LOG_DEBUG] = "debug" };
	char buf[1024];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (use_syslog) {
		syslog(level, "%s", buf);
		return;
	}
	fprintf(stderr, "p11jwt-agent: %s: %s\n",
		level >= 0 && level <= LOG_DEBUG && names[level] ? names[level] : "log", buf);
}

static void logmsg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logmsg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	logv(level, fmt, ap);
	va_end(ap);
}

static void srv_logger(int level, const char *msg, void *ud)
{
	(void)ud;
	logmsg(level, "%s", msg);
}

/* the token layer's debug lines are not logged */
static void tok_logger(int level, const char *msg, void *ud)
{
	if (level != TOK_LOG_DEBUG)
		srv_logger(level, msg, ud);
}

static void on_signal(int sig)
{
	if (sig == SIGHUP) {
		audit_reopen_later(the_audit); /* log rotation */
		reload_later(the_rl);       /* the tokens' keys, and --config */
		return;
	}
	if (the_srv != NULL)
		srv_stop(the_srv);
}

static void usage(FILE *f)
{
	fputs("usage: p11jwt-agent [options]\n"
	      "Log in to a PKCS#11 token once and sign JWTs for local clients over a Unix socket.\n"
	      "\n"
	      "  --module PATH         PKCS#11 module (default: p11-kit's registered modules)\n"
	      "  --module-allow DIR    also accept modules under DIR (default: /usr/lib*, /usr/local/lib*)\n"
	      "  --module-init-args STRING\n"
	      "                        the module's initialisation parameters (C_Initialize\n"
	      "                        pReserved), e.g. NSS softoken's \"configdir='sql:DIR' ...\";\n"
	      "                        needs --module\n"
	      "  --token URI           RFC 7512 PKCS#11 URI selecting token and keys (default: pkcs11:)\n"
	      "  --pin-file FILE       user PIN, first line; must not be readable by group or others\n"
	      "                        (else $CREDENTIALS_DIRECTORY/pin, the URI's pin-source,\n"
	      "                        $P11JWT_PIN; none: start locked until `p11jwt login`)\n"
	      "  --socket PATH         socket (default: $XDG_RUNTIME_DIR/p11jwt/agent.sock,\n"
	      "                        or /tmp/p11jwt-UID/agent.sock)\n"
	      "  --foreground          stay in the foreground and log to stderr\n"
	      "  --print-env           print P11JWT_AGENT_SOCK and P11JWT_AGENT_PID for eval\n"
	      "  --allow-unsafe-keys   also serve private keys that are extractable or not sensitive\n"
	      "  --allow-dpop          keys without a [key] section (--config) may make DPoP\n"
	      "                        proofs (RFC 9449; default: no)\n"
	      "  --max-connections N   concurrent clients (default 1024; fewer if the file\n"
	      "                        descriptor limit is lower, with a warning)\n"
	      "  --max-connections-per-uid N\n"
	      "                        concurrent clients of one uid other than the agent's\n"
	      "                        and root (default: a quarter of --max-connections)\n"
	      "  --workers N           signing threads, 1 to 64 (default: 2 per CPU)\n"
	      "  --sign-processes N    sign in N processes of the agent's own, 1 to 64, each\n"
	      "                        with its own C_Initialize and login; a module crash\n"
	      "                        fails one request (default 0: sign in the agent)\n"
	      "  --line-timeout SEC    drop a client that leaves half a request line\n"
	      "                        this long (default 10)\n"
	      "  --idle-timeout SEC    close a connection that has nothing to read, sign or\n"
	      "                        send for this long (default 300)\n"
	      "  --config FILE         agent settings, tokens and per-key policy (INI, see\n"
	      "                        p11jwt-agent.conf(5)); re-read on SIGHUP\n"
	      "  --check-config FILE   check FILE, print every error as FILE:LINE: message,\n"
	      "                        exit 0 when valid, 2 when not (opens no token)\n"
	      "  --audit DEST          audit trail of sign, login and lock requests: auto (the\n"
	      "                        default: syslog if a daemon listens at /dev/log, else\n"
	      "                        stderr), syslog (LOG_AUTHPRIV), file:PATH, stderr or none\n"
	      "  --kill                stop the agent named by $P11JWT_AGENT_PID\n"
	      "  --version, --help\n"
	      "\n"
	      "Exit status: 0 success, 1 runtime failure (token, PIN, socket), 2 usage error.\n"
	      "Example: eval \"$(p11jwt-agent --print-env --module /usr/lib/softhsm/libsofthsm2.so \\\n"
	      "             --token 'pkcs11:token=p11jwt-test' --pin-file ~/.p11jwt-pin)\"\n",
	      f);
}

static int default_socket(char *buf, size_t len)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	int n;

	if (xdg != NULL && xdg[0] == '/')
		n = snprintf(buf, len, "%s/p11jwt/agent.sock", xdg);
	else
		n = snprintf(buf, len, "/tmp/p11jwt-%u/agent.sock", (unsigned)getuid());
	return n > 0 && (size_t)n < len ? 0 : -1;
}

static int do_kill(void)
{
	const char *s = getenv("P11JWT_AGENT_PID");
	char *end;
	long pid;

	if (s == NULL || *s == '\0') {
		fprintf(stderr, "p11jwt-agent: P11JWT_AGENT_PID is not set; nothing to kill\n");
		return EXIT_RUNTIME;
	}
	errno = 0;
	pid = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || pid < 2 || pid > INT_MAX) {
		fprintf(stderr, "p11jwt-agent: P11JWT_AGENT_PID='%s' is not a process id\n", s);
		return EXIT_RUNTIME;
	}
	if (kill((pid_t)pid, SIGTERM) < 0) {
		fprintf(stderr, "p11jwt-agent: cannot stop pid %ld: %s\n", pid, strerror(errno));
		return EXIT_RUNTIME;
	}
	printf("unset P11JWT_AGENT_SOCK;\nunset P11JWT_AGENT_PID;\necho Agent pid %ld killed;\n",
	       pid);
	return 0;
}

/* The PIN may have come from the environment: wipe it there too. */
static void scrub_pin_env(void)
{
	char *v = getenv("P11JWT_PIN");

	if (v != NULL)
		OPENSSL_cleanse(v, strlen(v));
	unsetenv("P11JWT_PIN");
}

static void harden(void)
{
	struct rlimit rl = { 0, 0 };

	/* No core dumps and no ptrace by other processes of our uid: the
	 * process holds a logged-in session and, briefly, the PIN. */
	prctl(PR_SET_DUMPABLE, 0);
	setrlimit(RLIMIT_CORE, &rl);
	/* Every client is a file descriptor: take all the hard limit allows
	 * (systemd's soft limit is 1024 whatever the hard one is). The server
	 * lowers max_connections to what this leaves, and says so. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

struct opts {
	const char *module;
	const char *module_init_args;
	const char *allow[MAX_ALLOW + 1];
	size_t nallow;
	const char *token;
	const char *pin_file;
	const char *socket;
	bool foreground, print_env, allow_unsafe, allow_dpop;
	size_t max_conns;
	size_t max_conns_per_uid; /* 0: the server's default */
	unsigned workers;
	unsigned sign_processes; /* 0: sign in this process */
	unsigned line_timeout_ms;
	unsigned idle_timeout_ms; /* 0: the server's default */
	const char *audit;
	const char *config;   /* --config */
	cfg_config *cfg;      /* its contents, until reload_new() takes them */
	bool max_conns_set;
	int activated_fd; /* socket activation: the listening socket passed in, else -1 */
};

/* A whole number from min to max for option name, else a usage message. */
static bool parse_count(const char *name, const char *arg, unsigned long min, unsigned long max,
			unsigned long *ret)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (errno || *end || arg[0] == '-' || arg[0] == '\0' || v < min || v > max) {
		fprintf(stderr, "p11jwt-agent: --%s must be %lu to %lu\n", name, min, max);
		return false;
	}
	*ret = v;
	return true;
}

/* Opens the token and the socket; on failure writes the reason to errfd
 * (the parent's pipe when detaching). */
static int agent_start(struct opts *o, int *ret_fd)
{
	reload_config rc = { .path = o->config, .module = o->module,
			 .module_init_args = o->module_init_args,
			 .module_allow = o->nallow ? o->allow : NULL, .uri = o->token,
			 .pin_file = o->pin_file, .allow_unsafe_keys = o->allow_unsafe,
			 .sign_processes = o->sign_processes, .sign_exe = "/proc/self/exe",
			 .sign_arg = SIGN_PROCESS_ARG,
			 .log = srv_logger, .tok_log = tok_logger };
	int r;

	r = reload_new(&rc, o->cfg, &the_rl);
	o->cfg = NULL; /* taken */
	scrub_pin_env();
	if (r < 0)
		return r;
	if (o->activated_fd >= 0)
		*ret_fd = o->activated_fd; /* systemd's socket: neither bound nor unlinked here */
	else if ((r = srv_listen(o->socket, ret_fd)) < 0) {
		reload_free(the_rl);
		the_rl = NULL;
		return r;
	}
	return 0;
}

/* The "login" and "lock" ops, for the token the request names (ud: the
 * configuration generation the request holds, see proto_env.acquire). */

static int pin_login(void *ud, const char *token, const char *pin, size_t len, json_t *resp)
{
	tok_ctx *tok = NULL;
	int r;

	if ((r = reload_pick_token(ud, token, &tok)) < 0 || (r = tok_login(tok, pin, len)) < 0)
		return r;
	json_object_set_new(resp, "token", json_string(tok_label(tok)));
	json_object_set_new(resp, "state", json_string(tok_state_name(tok_get_state(tok))));
	return 0;
}

static int pin_lock(void *ud, const char *token, json_t *resp)
{
	tok_ctx *tok = NULL;
	int r;

	if ((r = reload_pick_token(ud, token, &tok)) < 0 || (r = tok_lock(tok)) < 0)
		return r;
	json_object_set_new(resp, "token", json_string(tok_label(tok)));
	json_object_set_new(resp, "state", json_string(tok_state_name(tok_get_state(tok))));
	return 0;
}

static void print_env(const char *sock, pid_t pid)
{
	printf("P11JWT_AGENT_SOCK=%s; export P11JWT_AGENT_SOCK;\n"
	       "P11JWT_AGENT_PID=%d; export P11JWT_AGENT_PID;\n"
	       "echo Agent pid %d;\n",
	       sock, (int)pid, (int)pid);
	fflush(stdout);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* --sign-processes: the token's signing processes in its "status" entry */
static int status_procs(tok_ctx *tok, json_t *t)
{
	tok_proc_stats ps;
	json_t *pids, *o;

	if (!tok_proc_stats_get(tok, &ps))
		return 0;
	if ((pids = json_array()) == NULL)
		return err_nomem();
	for (unsigned i = 0; i < ps.n; i++)
		if (ps.pid[i] > 0 && json_array_append_new(pids, json_integer(ps.pid[i])) < 0) {
			json_decref(pids);
			return err_nomem();
		}
	o = json_pack("{s:I,s:I,s:I,s:I,s:o}", "count", (json_int_t)ps.n, "running",
		      (json_int_t)ps.running, "restarts", (json_int_t)ps.restarts, "crashes",
		      (json_int_t)ps.crashes, "pids", pids);
	if (o == NULL || json_object_set_new(t, "sign_processes", o) < 0)
		return err_nomem();
	return 0;
}

/* The "status" op's numbers from the server and the token. */
static int status_fill(void *ud, json_t *resp)
{
	srv_stats st;
	json_t *errs = json_object(), *toks = json_array(), *t;
	tok_state ts;

	(void)ud;
	if (errs == NULL || toks == NULL)
		goto nomem;
	srv_get_stats(the_srv, &st);
	for (int i = 1; i < SRV_NCODES; i++)
		if (st.errors[i] != 0) {
			const char *name = err_code_name(-i);
			json_t *old = json_object_get(errs, name);

			/* codes without a wire name all count as "internal" */
			if (json_object_set_new(errs, name,
						json_integer((json_int_t)st.errors[i] +
							     (old ? json_integer_value(old) : 0))) < 0)
				goto nomem;
		}
	if (the_rl != NULL) {
		void *ref = NULL;

		reload_acquire(the_rl, &ref);
		for (size_t i = 0; i < reload_token_count(ref); i++) {
			tok_ctx *status_tok = reload_token_at(ref, i);

			uint64_t nsig, nsamp, sns;

			ts = tok_get_state(status_tok);
			tok_sign_stats(status_tok, &nsig, &nsamp, &sns);
			/* module_cpu_us: the mean thread CPU of one C_SignInit +
			 * C_Sign, over the sampled signatures (tok_sign_stats) */
			t = json_pack("{s:s,s:s,s:b,s:b,s:I,s:f,s:I,s:I}", "label",
				      tok_label(status_tok), "state", tok_state_name(ts), "present",
				      ts != TOK_UNAVAILABLE, "logged_in", ts == TOK_READY,
				      "signatures", (json_int_t)nsig, "module_cpu_us",
				      nsamp > 0 ? (double)sns / (double)nsamp / 1000.0 : 0.0,
				      "module_cpu_samples", (json_int_t)nsamp, "module_cpu_sampled_ns",
				      (json_int_t)sns);
			if (t == NULL || status_procs(status_tok, t) < 0 ||
			    json_array_append_new(toks, t) < 0) {
				json_decref(t);
				reload_release(ref);
				goto nomem;
			}
		}
		reload_release(ref);
	}
	if (json_object_set_new(resp, "uptime",
				json_integer((json_int_t)((mono_ms() - started_ms) / 1000))) < 0 ||
	    json_object_set_new(resp, "tokens", toks) < 0 ||
	    json_object_set_new(resp, "requests", json_integer((json_int_t)st.requests)) < 0 ||
	    json_object_set_new(resp, "errors", errs) < 0 ||
	    json_object_set_new(resp, "connections", json_integer((json_int_t)st.connections)) < 0 ||
	    json_object_set_new(resp, "connections_accepted",
				json_integer((json_int_t)st.accepted)) < 0 ||
	    json_object_set_new(resp, "connections_refused",
				json_integer((json_int_t)st.refused)) < 0)
		return err_nomem();
	return 0;
nomem:
	json_decref(errs);
	json_decref(toks);
	return err_nomem();
}

/* once a minute at most: a full disk must not flood the log */
static void audit_failed(void)
{
	static _Atomic uint64_t last_ms;
	uint64_t now = mono_ms(), prev = last_ms;

	if (prev == 0 || now - prev >= 60000)
		if (atomic_compare_exchange_strong(&last_ms, &prev, now))
			logmsg(LOG_ERR, "audit: %s; refusing to hand out JWTs", err_msg());
}

static int audit_record(void *ud, const proto_peer *peer, const proto_audit *a, jsonf_buf *out)
{
	struct timespec ts;
	int r;

	(void)ud;
	clock_gettime(CLOCK_REALTIME, &ts);
	r = audit_line_append(out, a, peer, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
	if (r < 0)
		audit_failed();
	return r;
}

/* A batch of records: one write for a file or stderr, one message per
 * record for syslog. */
static int audit_records_write(void *ud, const char *buf, size_t len)
{
	int r;

	(void)ud;
	r = audit_write(the_audit, buf, len);
	if (r < 0)
		audit_failed();
	return r;
}

static void on_stopping(void *ud)
{
	(void)ud;
	svc_notify("STOPPING=1");
}

/* Without --workers (or workers =): two per CPU, or, when the tokens name
 * a session limit (a network HSM's 16, say), as many as they take together,
 * up to 64: each worker waits in C_Sign for the token, so fewer workers
 * than sessions leave a slow HSM's sessions idle (docs/performance.md, "HSM
 * latency"). A token that names no limit (SoftHSM) is CPU-bound here. */
static unsigned default_workers(void)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	size_t base = ncpu > 1 ? 2 * (size_t)ncpu : 2, sessions = 0;
	void *ref = NULL;

	reload_acquire(the_rl, &ref);
	for (size_t i = 0; i < reload_token_count(ref); i++)
		sessions += tok_session_limit(reload_token_at(ref, i));
	if (sessions > 64)
		sessions = 64;
	if (sessions > base)
		logmsg(LOG_INFO, "%zu signing workers: the token%s take%s %zu sessions at once "
		       "(--workers to choose)", sessions, reload_token_count(ref) == 1 ? "" : "s",
		       reload_token_count(ref) == 1 ? "s" : "", sessions);
	reload_release(ref);
	return (unsigned)(sessions > base ? sessions : base);
}

static int serve(const struct opts *o, int lfd)
{
	proto_env env = { .owner_uid = geteuid(), .version = P11JWT_VERSION,
			  .login = pin_login, .lock = pin_lock,
			  .acquire = reload_acquire, .release = reload_release, .kr_ud = the_rl,
			  .reload = reload_op, .unknown_key = reload_unknown_key,
			  .dpop_default = o->allow_dpop };
	srv_config sc = { .env = &env,
			  .max_connections = o->max_conns,
			  .max_connections_per_uid = o->max_conns_per_uid,
			  .workers = o->workers,
			  .line_timeout_ms = o->line_timeout_ms,
			  .idle_timeout_ms = o->idle_timeout_ms,
			  .log = srv_logger,
			  .audit = audit_enabled(the_audit) ? audit_record : NULL,
			  .audit_write = audit_enabled(the_audit) ? audit_records_write : NULL,
			  .on_stopping = on_stopping };
	struct sigaction sa = { .sa_handler = on_signal };
	int r;

	if (sc.workers == 0)
		sc.workers = default_workers();
	env.status = status_fill;
	if ((r = srv_new(&sc, lfd, &the_srv)) < 0)
		return r;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	{
		void *ref = NULL;
		const keyring *kr = reload_acquire(the_rl, &ref);

		logmsg(LOG_INFO, "serving %zu keys from token '%s'%s on %s", kr->n,
		       tok_label(reload_token_at(ref, 0)), reload_token_count(ref) > 1 ? " and others" : "",
		       o->socket);
		reload_release(ref);
	}
	if ((r = reload_start(the_rl)) < 0)
		logmsg(LOG_WARNING, "%s; SIGHUP will not reload the configuration", err_msg());
	svc_notify("READY=1");
	r = srv_run(the_srv);
	logmsg(LOG_INFO, "stopping");
	srv_free(the_srv);
	the_srv = NULL;
	return r;
}

/* --check-config FILE: every error as FILE:LINE: message; opens no token. */
static int check_config(const char *path)
{
	cfg_config *cfg = NULL;
	char *errs = NULL;
	int r = cfg_load(path, &cfg, &errs);

	if (r < 0) {
		if (errs != NULL)
			fputs(errs, stderr);
		else
			fprintf(stderr, "p11jwt-agent: %s\n", err_msg());
		free(errs);
		return EXIT_USAGE;
	}
	printf("%s: valid (%zu token section%s, %zu key section%s)\n", path, cfg->ntokens,
	       cfg->ntokens == 1 ? "" : "s", cfg->nkeys, cfg->nkeys == 1 ? "" : "s");
	cfg_free(cfg);
	return 0;
}

/* --config FILE: read it; command-line options override its [agent]. */
static int apply_config(struct opts *o)
{
	char *errs = NULL;
	int r = cfg_load(o->config, &o->cfg, &errs);

	if (r < 0) {
		if (errs != NULL)
			fputs(errs, stderr);
		else
			fprintf(stderr, "p11jwt-agent: --config: %s\n", err_msg());
		free(errs);
		return EXIT_USAGE;
	}
	if (o->cfg->ntokens > 0 &&
	    (o->module || o->nallow || o->pin_file || strcmp(o->token, "pkcs11:") != 0 ||
	     o->allow_unsafe || o->module_init_args)) {
		fprintf(stderr, "p11jwt-agent: %s has [token] sections: --module, --module-allow, "
			"--module-init-args, --token, --pin-file and --allow-unsafe-keys go "
			"there\n", o->config);
		cfg_free(o->cfg);
		o->cfg = NULL;
		return EXIT_USAGE;
	}
	if (o->socket == NULL && o->cfg->socket != NULL) {
		/* a copy: a reload frees the file's contents */
		static char sock[108];

		snprintf(sock, sizeof(sock), "%s", o->cfg->socket);
		o->socket = sock;
	}
	if (!o->max_conns_set && o->cfg->max_connections)
		o->max_conns = o->cfg->max_connections;
	if (o->workers == 0)
		o->workers = (unsigned)o->cfg->workers;
	if (o->sign_processes == 0)
		o->sign_processes = (unsigned)o->cfg->sign_processes;
	if (o->line_timeout_ms == 0)
		o->line_timeout_ms = (unsigned)o->cfg->line_timeout * 1000;
	if (o->idle_timeout_ms == 0)
		o->idle_timeout_ms = (unsigned)o->cfg->idle_timeout * 1000;
	if (o->max_conns_per_uid == 0)
		o->max_conns_per_uid = o->cfg->max_connections_per_uid;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "module", required_argument, NULL, 'm' },
		{ "module-allow", required_argument, NULL, 'A' },
		{ "module-init-args", required_argument, NULL, 'P' },
		{ "token", required_argument, NULL, 't' },
		{ "pin-file", required_argument, NULL, 'p' },
		{ "socket", required_argument, NULL, 's' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "print-env", no_argument, NULL, 'e' },
		{ "allow-unsafe-keys", no_argument, NULL, 'U' },
		{ "allow-dpop", no_argument, NULL, 'D' },
		{ "max-connections", required_argument, NULL, 'c' },
		{ "workers", required_argument, NULL, 'w' },
		{ "sign-processes", required_argument, NULL, 'S' },
		{ "line-timeout", required_argument, NULL, 'L' },
		{ "idle-timeout", required_argument, NULL, 'I' },
		{ "max-connections-per-uid", required_argument, NULL, 'u' },
		{ "audit", required_argument, NULL, 'a' },
		{ "config", required_argument, NULL, 'C' },
		{ "check-config", required_argument, NULL, 'K' },
		{ "kill", no_argument, NULL, 'k' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct opts o = { .token = "pkcs11:", .max_conns = 1024, .audit = "auto",
			  .activated_fd = -1 };
	char sockbuf[108];

	/* JSON strings carry signed JWTs (bearer credentials): wiped on free */
	json_set_alloc_funcs(malloc, util_wipe_free);
	int c, r, lfd = -1, pipefd[2] = { -1, -1 };
	bool kill_mode = false;

	if (argc == 2 && strcmp(argv[1], SIGN_PROCESS_ARG) == 0)
		return tok_proc_serve(3);
	harden();
	unsigned long v;

	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'm': o.module = optarg; break;
		case 'A':
			if (o.nallow == MAX_ALLOW) {
				fprintf(stderr, "p11jwt-agent: at most %d --module-allow\n", MAX_ALLOW);
				return EXIT_USAGE;
			}
			o.allow[o.nallow++] = optarg;
			break;
		case 'P':
			if (optarg[0] == '\0') {
				fprintf(stderr, "p11jwt-agent: --module-init-args must not be empty\n");
				return EXIT_USAGE;
			}
			o.module_init_args = optarg;
			break;
		case 't': o.token = optarg; break;
		case 'p': o.pin_file = optarg; break;
		case 's': o.socket = optarg; break;
		case 'f': o.foreground = true; break;
		case 'e': o.print_env = true; break;
		case 'U': o.allow_unsafe = true; break;
		case 'D': o.allow_dpop = true; break;
		case 'c':
			if (!parse_count("max-connections", optarg, 1, 65536, &v))
				return EXIT_USAGE;
			o.max_conns = v;
			o.max_conns_set = true;
			break;
		case 'w':
			if (!parse_count("workers", optarg, 1, 64, &v))
				return EXIT_USAGE;
			o.workers = (unsigned)v;
			break;
		case 'S':
			if (!parse_count("sign-processes", optarg, 1, 64, &v))
				return EXIT_USAGE;
			o.sign_processes = (unsigned)v;
			break;
		case 'L':
			if (!parse_count("line-timeout", optarg, 1, 3600, &v))
				return EXIT_USAGE;
			o.line_timeout_ms = (unsigned)v * 1000;
			break;
		case 'I':
			if (!parse_count("idle-timeout", optarg, 1, 86400, &v))
				return EXIT_USAGE;
			o.idle_timeout_ms = (unsigned)v * 1000;
			break;
		case 'u':
			if (!parse_count("max-connections-per-uid", optarg, 1, 65536, &v))
				return EXIT_USAGE;
			o.max_conns_per_uid = v;
			break;
		case 'a': o.audit = optarg; break;
		case 'C': o.config = optarg; break;
		case 'K': return check_config(optarg);
		case 'k': kill_mode = true; break;
		case 'V': printf("p11jwt-agent %s\n", P11JWT_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "p11jwt-agent: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (kill_mode)
		return do_kill();
	if (o.module_init_args != NULL && o.module == NULL &&
	    strstr(o.token, "module-path=") == NULL) {
		fprintf(stderr, "p11jwt-agent: --module-init-args needs --module (a module "
			"registered with p11-kit takes its parameters from the registration's "
			"x-init-reserved)\n");
		return EXIT_USAGE;
	}
	if (o.config != NULL && (r = apply_config(&o)) != 0)
		return r;
	started_ms = mono_ms();
	/* systemd passed the listening socket: serve on it (its path, if any,
	 * replaces --socket for the messages) */
	r = svc_listen_fd(&o.activated_fd, sockbuf, sizeof(sockbuf));
	if (r < 0) {
		fprintf(stderr, "p11jwt-agent: %s\n", err_msg());
		return EXIT_RUNTIME;
	}
	if (r > 0)
		o.socket = sockbuf[0] ? sockbuf : "(socket passed by the service manager)";
	if ((r = audit_open(o.audit, &the_audit)) < 0) {
		fprintf(stderr, "p11jwt-agent: --audit: %s\n", err_msg());
		return r == P11J_E_BAD_REQUEST ? EXIT_USAGE : EXIT_RUNTIME;
	}
	if (audit_on_stderr(the_audit)) {
		/* in the background stderr is /dev/null: the trail would be lost */
		if (!o.foreground) {
			fprintf(stderr,
				"p11jwt-agent: --audit: the audit trail would go to stderr%s, which "
				"an agent in the background closes; use --audit file:PATH, "
				"--foreground, or --audit none\n",
				strcmp(o.audit, "auto") == 0
					? " (no syslog daemon listens at /dev/log)"
					: "");
			audit_close(the_audit);
			return EXIT_USAGE;
		}
		if (strcmp(o.audit, "auto") == 0)
			fprintf(stderr, "p11jwt-agent: audit trail: stderr (no syslog daemon listening "
				"at /dev/log)\n");
	}
	if (o.socket == NULL) {
		if (default_socket(sockbuf, sizeof(sockbuf)) < 0) {
			fprintf(stderr, "p11jwt-agent: default socket path too long; use --socket\n");
			return EXIT_USAGE;
		}
		o.socket = sockbuf;
	}

	if (o.foreground) {
		r = agent_start(&o, &lfd);
		if (r < 0) {
			logmsg(LOG_ERR, "%s: %s", err_code_name(r), err_msg());
			return EXIT_RUNTIME;
		}
		if (o.print_env)
			print_env(o.socket, getpid());
		r = serve(&o, lfd);
	} else {
		/* PKCS#11 does not survive fork(): the child opens the token and
		 * reports through a pipe whether it is listening. */
		pid_t pid;
		char msg[600];
		ssize_t n;

		if (pipe2(pipefd, O_CLOEXEC) < 0) {
			perror("p11jwt-agent: pipe");
			return EXIT_RUNTIME;
		}
		fflush(stdout);
		pid = fork();
		if (pid < 0) {
			perror("p11jwt-agent: fork");
			return EXIT_RUNTIME;
		}
		if (pid > 0) {
			close(pipefd[1]);
			n = read(pipefd[0], msg, sizeof(msg) - 1);
			close(pipefd[0]);
			if (n <= 0) {
				fprintf(stderr, "p11jwt-agent: the agent process died while starting\n");
				waitpid(pid, NULL, 0);
				return EXIT_RUNTIME;
			}
			msg[n] = '\0';
			if (strncmp(msg, "OK", 2) != 0) {
				fprintf(stderr, "p11jwt-agent: %s\n", msg);
				waitpid(pid, NULL, 0);
				return EXIT_RUNTIME;
			}
			if (o.print_env)
				print_env(o.socket, pid);
			return 0;
		}
		close(pipefd[0]);
		setsid();
		use_syslog = true;
		openlog("p11jwt-agent", LOG_PID, LOG_DAEMON);
		r = agent_start(&o, &lfd);
		if (r < 0) {
			n = snprintf(msg, sizeof(msg), "%s: %s", err_code_name(r), err_msg());
			(void)!write(pipefd[1], msg, (size_t)n);
			return EXIT_RUNTIME;
		}
		{
			int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

			if (devnull >= 0) {
				dup2(devnull, 0);
				dup2(devnull, 1);
				dup2(devnull, 2);
				if (devnull > 2)
					close(devnull);
			}
		}
		(void)!write(pipefd[1], "OK", 2);
		close(pipefd[1]);
		r = serve(&o, lfd);
	}
	close(lfd);
	if (o.activated_fd < 0)
		unlink(o.socket);
	audit_close(the_audit);
	/* keyring and tokens; before OpenSSL's atexit cleanup: SoftHSM
	 * crashes otherwise */
	reload_free(the_rl);
	if (r < 0) {
		logmsg(LOG_ERR, "%s", err_msg());
		return EXIT_RUNTIME;
	}
	return 0;
}
