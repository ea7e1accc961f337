/* SPDX-License-Identifier: MIT */
/*
 * p11jwt-agent: logs in to a PKCS#11 token once and signs JWTs for local
 * clients over a Unix socket (docs/protocol.md). Only this file prints,
 * parses options and chooses exit codes.
 */
#include "agent/keyring.h"
#include "agent/proto.h"
#include "agent/server.h"
#include "common/err.h"
#include "common/util.h"
#include "pkcs11/tok.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>
#include <openssl/crypto.h>

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };
#define MAX_ALLOW 16

static bool use_syslog;
static srv *the_srv;

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

static void srv_logger(int level, const char *msg)
{
	logmsg(level, "%s", msg);
}

static void tok_logger(int level, const char *msg, void *ud)
{
	static const int map[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

	(void)ud;
	if (level == TOK_LOG_DEBUG)
		return;
	logmsg(level >= 0 && level <= TOK_LOG_DEBUG ? map[level] : LOG_INFO, "%s", msg);
}

static void on_signal(int sig)
{
	(void)sig;
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
	      "  --token URI           RFC 7512 PKCS#11 URI selecting token and keys (default: pkcs11:)\n"
	      "  --pin-file FILE       user PIN, first line; must not be readable by group or others\n"
	      "                        (else the URI's pin-source, else $P11JWT_PIN)\n"
	      "  --socket PATH         socket (default: $XDG_RUNTIME_DIR/p11jwt/agent.sock,\n"
	      "                        or /tmp/p11jwt-UID/agent.sock)\n"
	      "  --foreground          stay in the foreground and log to stderr\n"
	      "  --print-env           print P11JWT_AGENT_SOCK and P11JWT_AGENT_PID for eval\n"
	      "  --allow-unsafe-keys   also serve private keys that are extractable or not sensitive\n"
	      "  --max-connections N   concurrent clients (default 1024)\n"
	      "  --workers N           signing threads, 1 to 64 (default: 2 per CPU)\n"
	      "  --line-timeout SEC    drop a client that leaves half a request line\n"
	      "                        this long (default 10)\n"
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
}

struct opts {
	const char *module;
	const char *allow[MAX_ALLOW + 1];
	size_t nallow;
	const char *token;
	const char *pin_file;
	const char *socket;
	bool foreground, print_env, allow_unsafe;
	size_t max_conns;
	unsigned workers;
	unsigned line_timeout_ms;
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
static int agent_start(const struct opts *o, tok_ctx **ret_tok, keyring *kr, int *ret_fd)
{
	tok_config tc = { 0 };
	tok_ctx *tok = NULL;
	int r;

	tc.module_path = o->module;
	tc.module_allow = o->nallow ? o->allow : NULL;
	tc.uri = o->token;
	tc.pin_file = o->pin_file;
	tc.allow_unsafe_keys = o->allow_unsafe;
	tc.log = tok_logger;
	r = tok_open(&tc, &tok);
	scrub_pin_env();
	if (r < 0)
		return r;
	if ((r = kr_add_from_tok(kr, tok)) < 0) {
		tok_close(tok);
		return r;
	}
	if ((r = srv_listen(o->socket, ret_fd)) < 0) {
		kr_free(kr);
		tok_close(tok);
		return r;
	}
	*ret_tok = tok;
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

static int serve(const struct opts *o, tok_ctx *tok, keyring *kr, int lfd)
{
	proto_env env = { .kr = kr, .owner_uid = geteuid(), .version = P11JWT_VERSION };
	srv_config sc = { .env = &env,
			  .max_connections = o->max_conns,
			  .workers = o->workers,
			  .line_timeout_ms = o->line_timeout_ms,
			  .log = srv_logger };
	struct sigaction sa = { .sa_handler = on_signal };
	int r;

	if ((r = srv_new(&sc, lfd, &the_srv)) < 0)
		return r;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	logmsg(LOG_INFO, "serving %zu keys from token '%s' on %s", kr->n, tok_label(tok),
	       o->socket);
	r = srv_run(the_srv);
	logmsg(LOG_INFO, "stopping");
	srv_free(the_srv);
	the_srv = NULL;
	return r;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "module", required_argument, NULL, 'm' },
		{ "module-allow", required_argument, NULL, 'A' },
		{ "token", required_argument, NULL, 't' },
		{ "pin-file", required_argument, NULL, 'p' },
		{ "socket", required_argument, NULL, 's' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "print-env", no_argument, NULL, 'e' },
		{ "allow-unsafe-keys", no_argument, NULL, 'U' },
		{ "max-connections", required_argument, NULL, 'c' },
		{ "workers", required_argument, NULL, 'w' },
		{ "line-timeout", required_argument, NULL, 'L' },
		{ "kill", no_argument, NULL, 'k' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct opts o = { .token = "pkcs11:", .max_conns = 1024 };
	char sockbuf[108];

	/* JSON strings carry signed JWTs (bearer credentials): wiped on free */
	json_set_alloc_funcs(malloc, util_wipe_free);
	tok_ctx *tok = NULL;
	keyring kr = { 0 };
	int c, r, lfd = -1, pipefd[2] = { -1, -1 };
	bool kill_mode = false;

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
		case 't': o.token = optarg; break;
		case 'p': o.pin_file = optarg; break;
		case 's': o.socket = optarg; break;
		case 'f': o.foreground = true; break;
		case 'e': o.print_env = true; break;
		case 'U': o.allow_unsafe = true; break;
		case 'c':
			if (!parse_count("max-connections", optarg, 1, 65536, &v))
				return EXIT_USAGE;
			o.max_conns = v;
			break;
		case 'w':
			if (!parse_count("workers", optarg, 1, 64, &v))
				return EXIT_USAGE;
			o.workers = (unsigned)v;
			break;
		case 'L':
			if (!parse_count("line-timeout", optarg, 1, 3600, &v))
				return EXIT_USAGE;
			o.line_timeout_ms = (unsigned)v * 1000;
			break;
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
	if (o.socket == NULL) {
		if (default_socket(sockbuf, sizeof(sockbuf)) < 0) {
			fprintf(stderr, "p11jwt-agent: default socket path too long; use --socket\n");
			return EXIT_USAGE;
		}
		o.socket = sockbuf;
	}

	if (o.foreground) {
		r = agent_start(&o, &tok, &kr, &lfd);
		if (r < 0) {
			logmsg(LOG_ERR, "%s: %s", err_code_name(r), err_msg());
			return EXIT_RUNTIME;
		}
		if (o.print_env)
			print_env(o.socket, getpid());
		r = serve(&o, tok, &kr, lfd);
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
		r = agent_start(&o, &tok, &kr, &lfd);
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
		r = serve(&o, tok, &kr, lfd);
	}
	close(lfd);
	unlink(o.socket);
	kr_free(&kr);
	/* before OpenSSL's atexit cleanup: SoftHSM crashes otherwise */
	tok_close(tok);
	if (r < 0) {
		logmsg(LOG_ERR, "%s", err_msg());
		return EXIT_RUNTIME;
	}
	return 0;
}
