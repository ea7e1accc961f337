/* SPDX-License-Identifier: MIT */
/* agc: the agent client (protocol v1): one request line, one response
 * line, over the agent's Unix socket. */
#ifndef P11J_AGC_H
#define P11J_AGC_H

#include <stddef.h>
#include <sys/types.h>
#include <jansson.h>

#define AGC_MAX_REQUEST (64 * 1024)    /* the agent's line bound */
#define AGC_MAX_RESPONSE (1024 * 1024) /* ours for its answer */
#define AGC_TIMEOUT_MS 30000

/* Where a failure of agc_call() came from; the CLI's exit status depends on
 * it (an agent saying "request_too_large" is not our own size check). */
typedef enum {
	AGC_LOCAL,     /* before connecting: path or request unusable */
	AGC_TRANSPORT, /* connecting, I/O, timeout, malformed answer */
	AGC_AGENT,     /* the agent answered "ok": false */
} agc_origin;

/* Socket path: opt if given, else $P11JWT_AGENT_SOCK, else
 * $XDG_RUNTIME_DIR/p11jwt/agent.sock, else /tmp/p11jwt-UID/agent.sock.
 * P11J_E_BAD_REQUEST when the result does not fit a sockaddr_un. */
int agc_socket_path(const char *opt, char *buf, size_t len);

/* The uids an agent may run as: ours, and the one named by opt (--agent-uid)
 * or else $P11JWT_AGENT_UID (a user name or a number); root always is.
 * ret holds SOCKDIR_MAX_UIDS. P11J_E_BAD_REQUEST for an unknown user. */
int agc_trusted_uids(const char *opt, uid_t *ret, size_t *ret_n);

/* Before anything is sent, the socket's directory must pass the rule of
 * common/sockdir.h and the listener must run as root or one of trusted
 * (P11J_E_INSECURE naming the path, the owner and the mode, or the
 * listener's uid; AGC_TRANSPORT). Then: set a fresh "id" in req, send it
 * and wait at most timeout_ms in total for the answer. Returns 0 and the response object (a new reference) when it
 * says "ok": true. Otherwise:
 *  - the agent's error code (err_code_from_name) and message (AGC_AGENT);
 *  - P11J_E_AGENT_UNAVAILABLE, the message naming the path, when the socket
 *    cannot be reached or the agent does not answer in time (AGC_TRANSPORT);
 *  - P11J_E_PROTOCOL for a response that is not JSON, over AGC_MAX_RESPONSE,
 *    with another id, or cut short (AGC_TRANSPORT);
 *  - P11J_E_REQUEST_TOO_LARGE / P11J_E_BAD_REQUEST before sending (AGC_LOCAL).
 * origin may be NULL. */
int agc_call(const char *path, const uid_t *trusted, size_t ntrusted, json_t *req,
	     int timeout_ms, json_t **ret_resp, agc_origin *origin);

#endif
