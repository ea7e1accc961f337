/* SPDX-License-Identifier: MIT */
#include "cli/agc.h"
#include "common/err.h"
#include "common/sockdir.h"
#include "common/util.h"
#include "jose/jsonfast.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define AGC_HINT "is p11jwt-agent running? start it with " \
	"eval \"$(p11jwt-agent --print-env --module ... --token ...)\", or pass --socket"

int agc_socket_path(const char *opt, char *buf, size_t len)
{
	const char *env = getenv("P11JWT_AGENT_SOCK");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	struct sockaddr_un sa;
	int n;

	if (opt != NULL && *opt != '\0')
		n = snprintf(buf, len, "%s", opt);
	else if (env != NULL && *env != '\0')
		n = snprintf(buf, len, "%s", env);
	else if (xdg != NULL && xdg[0] == '/') /* a relative one is not trustworthy */
		n = snprintf(buf, len, "%s/p11jwt/agent.sock", xdg);
	else if (sockdir_fallback_path((unsigned)getuid(), buf, len) == 0)
		n = (int)strlen(buf);
	else
		n = -1;
	if (n < 0 || (size_t)n >= len || (size_t)n >= sizeof(sa.sun_path))
		return err_set(P11J_E_BAD_REQUEST, "socket path is longer than %zu bytes",
			       sizeof(sa.sun_path) - 1);
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 1 when ready, 0 on timeout, negative on error. */
static int wait_fd(int fd, short ev, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = ev };
	int n;

	for (;;) {
		int64_t left = deadline - now_ms();

		if (left <= 0)
			return 0;
		n = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
		if (n > 0)
			return 1;
		if (n == 0)
			return 0;
		if (errno != EINTR)
			return err_set(P11J_E_SYSTEM, "poll: %s", strerror(errno));
	}
}

static int timeout_err(const char *path, const char *what)
{
	return err_set(P11J_E_AGENT_UNAVAILABLE, "the agent at %s did not %s in time", path, what);
}

static int connect_to(const char *path, int64_t deadline, int *ret_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r, soerr = 0;
	socklen_t sl = sizeof(soerr);

	memcpy(sa.sun_path, path, strlen(path) + 1); /* length checked by caller */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return err_set(P11J_E_SYSTEM, "socket: %s", strerror(errno));
	/* A full listen backlog gives EAGAIN on a non-blocking Unix socket:
	 * retry until the deadline rather than block forever. */
	while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN && now_ms() < deadline) {
			struct timespec ts = { 0, 10 * 1000 * 1000 };

			nanosleep(&ts, NULL);
			continue;
		}
		if (errno == EINPROGRESS) {
			if ((r = wait_fd(fd, POLLOUT, deadline)) <= 0) {
				r = r < 0 ? r : timeout_err(path, "accept the connection");
				goto fail;
			}
			if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
				soerr = errno;
			if (soerr == 0)
				break;
			errno = soerr;
		}
		r = err_set(P11J_E_AGENT_UNAVAILABLE, "cannot connect to the agent at %s: %s (%s)",
			    path, strerror(errno), AGC_HINT);
		goto fail;
	}
	*ret_fd = fd;
	return 0;
fail:
	close(fd);
	return r;
}

static int send_all(int fd, const char *path, const char *buf, size_t len, int64_t deadline)
{
	size_t off = 0;
	int r;

	while (off < len) {
		ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);

		if (n >= 0) {
			off += (size_t)n;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return err_set(P11J_E_AGENT_UNAVAILABLE, "sending to the agent at %s: %s",
				       path, strerror(errno));
		if ((r = wait_fd(fd, POLLOUT, deadline)) <= 0)
			return r < 0 ? r : timeout_err(path, "read the request");
	}
	return 0;
}

/* One line, without its '\n', into a fresh NUL-terminated buffer. */
static int recv_line(int fd, const char *path, int64_t deadline, char **ret, size_t *ret_len)
{
	char *buf = NULL, *nl = NULL;
	size_t len = 0, cap = 0;
	int r;

	while (nl == NULL) {
		ssize_t n;

		if (len == cap) {
			char *nb;

			if (cap > AGC_MAX_RESPONSE) {
				r = err_set(P11J_E_PROTOCOL,
					    "the agent's answer is longer than %d bytes",
					    AGC_MAX_RESPONSE);
				goto fail;
			}
			cap = cap ? cap * 2 : 4096;
			if (cap > AGC_MAX_RESPONSE + 1)
				cap = AGC_MAX_RESPONSE + 1; /* room for the '\n' */
			nb = realloc(buf, cap + 1);
			if (nb == NULL) {
				r = err_nomem();
				goto fail;
			}
			buf = nb;
		}
		n = recv(fd, buf + len, cap - len, 0);
		if (n > 0) {
			nl = memchr(buf + len, '\n', (size_t)n);
			len += (size_t)n;
			continue;
		}
		if (n == 0) {
			r = err_set(P11J_E_PROTOCOL, "the agent at %s closed the connection %s", path,
				    len ? "in the middle of its answer" : "without answering");
			goto fail;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			r = err_set(P11J_E_AGENT_UNAVAILABLE, "reading from the agent at %s: %s", path,
				    strerror(errno));
			goto fail;
		}
		if ((r = wait_fd(fd, POLLIN, deadline)) <= 0) {
			r = r < 0 ? r : timeout_err(path, "answer");
			goto fail;
		}
	}
	len = (size_t)(nl - buf);
	if (len > AGC_MAX_RESPONSE) {
		r = err_set(P11J_E_PROTOCOL, "the agent's answer is longer than %d bytes",
			    AGC_MAX_RESPONSE);
		goto fail;
	}
	buf[len] = '\0';
	*ret = buf;
	*ret_len = len;
	return 0;
fail:
	free(buf);
	return r;
}

/* Check the shape of a response to request id; 0 for "ok": true. */
static int check_response(const json_t *resp, const json_t *id, agc_origin *origin)
{
	const json_t *ok = json_object_get(resp, "ok");
	const json_t *rid = json_object_get(resp, "id");
	const json_t *e = json_object_get(resp, "error");
	const char *code, *msg;
	int r;

	if (!json_is_boolean(ok))
		return err_set(P11J_E_PROTOCOL, "the agent's answer has no \"ok\" member");
	/* An agent that could not read our id answers an error with id null. */
	if (!json_equal(rid, id) && !(json_is_false(ok) && (rid == NULL || json_is_null(rid))))
		return err_set(P11J_E_PROTOCOL, "the agent answered another request id");
	if (json_is_true(ok))
		return 0;
	code = json_string_value(json_object_get(e, "code"));
	msg = json_string_value(json_object_get(e, "message"));
	if (code == NULL)
		return err_set(P11J_E_PROTOCOL, "the agent's error answer has no code");
	*origin = AGC_AGENT;
	r = err_code_from_name(code);
	if (r == P11J_E_INTERNAL && strcmp(code, "internal") != 0)
		return err_set(r, "agent error '%s': %s", code, msg ? msg : "(no message)");
	return err_set(r, "%s", msg ? msg : err_strerror(r));
}

int agc_trusted_uids(const char *opt, uid_t *ret, size_t *ret_n)
{
	const char *env = getenv("P11JWT_AGENT_UID");
	size_t n = 0;
	int r;

	ret[n++] = geteuid();
	if (opt != NULL && *opt != '\0') {
		if ((r = sockdir_parse_uid("--agent-uid", opt, &ret[n])) < 0)
			return r;
		n++;
	} else if (env != NULL && *env != '\0') {
		if ((r = sockdir_parse_uid("P11JWT_AGENT_UID", env, &ret[n])) < 0)
			return r;
		n++;
	}
	*ret_n = n;
	return 0;
}

/* The socket's directory by the one rule (common/sockdir.h), before we
 * connect; the listener's uid once connected, before anything is sent. */
static int check_dir(const char *path, const uid_t *trusted, size_t ntrusted)
{
	int r = sockdir_check(path, trusted, ntrusted);
	char why[256];

	if (r == P11J_E_AGENT_UNAVAILABLE) {
		snprintf(why, sizeof(why), "%s", err_msg()); /* err_set() reuses its buffer */
		return err_set(r, "cannot connect to the agent at %s: %s (%s)", path, why,
			       AGC_HINT);
	}
	return r;
}

int agc_call(const char *path, const uid_t *trusted, size_t ntrusted, json_t *req,
	     int timeout_ms, json_t **ret_resp, agc_origin *origin)
{
	static unsigned seq;
	struct sockaddr_un sa;
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : AGC_TIMEOUT_MS);
	agc_origin where = AGC_LOCAL;
	jsonf_buf line = { 0 }; /* may carry a PIN (login): wiped when freed */
	char *answer = NULL;
	size_t alen = 0;
	json_t *id = NULL, *resp = NULL;
	json_error_t jerr;
	int fd = -1, r;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		r = err_set(P11J_E_BAD_REQUEST, "socket path '%s' is longer than %zu bytes", path,
			    sizeof(sa.sun_path) - 1);
		goto out;
	}
	/* The id only has to tell our answer from a confused one. */
	id = json_integer((json_int_t)(((uint32_t)getpid() << 12) ^ (uint32_t)now_ms()) * 16 +
			  (seq++ & 15));
	if (id == NULL || json_object_set(req, "id", id) < 0) {
		r = err_nomem();
		goto out;
	}
	if ((r = jsonf_append_any(&line, req)) > 0)
		r = err_nomem();
	/* the line and its newline in one send: the agent reads it at once */
	if (r < 0 || (r = jsonf_raw(&line, "\n", 1)) < 0)
		goto out;
	if (line.len > AGC_MAX_REQUEST) {
		r = err_set(P11J_E_REQUEST_TOO_LARGE,
			    "the request is %zu bytes; the agent reads at most %d per line", line.len,
			    AGC_MAX_REQUEST);
		goto out;
	}
	where = AGC_TRANSPORT;
	if ((r = check_dir(path, trusted, ntrusted)) < 0)
		goto out;
	if ((r = connect_to(path, deadline, &fd)) < 0)
		goto out;
	if ((r = sockdir_check_peer(fd, path, trusted, ntrusted)) < 0)
		goto out;
	if ((r = send_all(fd, path, line.p, line.len, deadline)) < 0)
		goto out;
	if ((r = recv_line(fd, path, deadline, &answer, &alen)) < 0)
		goto out;
	resp = json_loadb(answer, alen, JSON_REJECT_DUPLICATES, &jerr);
	if (resp == NULL) {
		r = err_set(P11J_E_PROTOCOL, "the agent's answer is not JSON: %s", jerr.text);
		goto out;
	}
	if (!json_is_object(resp)) {
		r = err_set(P11J_E_PROTOCOL, "the agent's answer is not a JSON object");
		goto out;
	}
	if ((r = check_response(resp, id, &where)) < 0)
		goto out;
	*ret_resp = resp;
	resp = NULL;
	r = 0;
out:
	if (r < 0 && origin != NULL)
		*origin = where;
	if (fd >= 0)
		close(fd);
	jsonf_free(&line);
	free(answer);
	json_decref(id);
	json_decref(resp);
	return r;
}
