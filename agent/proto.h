/* SPDX-License-Identifier: MIT */
/*
 * Protocol v1 handler (docs/protocol.md): one request line in, one response
 * line out. No sockets and no global state, so unit tests and the fuzzer
 * drive it directly; the time comes from util_now().
 */
#ifndef P11J_PROTO_H
#define P11J_PROTO_H

#include <stddef.h>
#include <sys/types.h>
#include <jansson.h>
#include "agent/keyring.h"

#define PROTO_VERSION 1
#define PROTO_MAX_LINE 65536 /* bytes per request line, newline excluded */
#define PROTO_MAX_LIFETIME 86400
#define PROTO_DEFAULT_LIFETIME 300

typedef struct {
	uid_t uid;
	gid_t gid;
	pid_t pid;
} proto_peer;

typedef struct {
	const keyring *kr;
	uid_t owner_uid;     /* this uid and root may use the agent */
	const char *version; /* software version for "hello" */
} proto_env;

/* Handle one request (line without its newline). *ret_resp is a malloc'ed
 * JSON line ending in "\n" (*ret_len bytes). Fails only when out of memory;
 * every bad request gets an error response. */
int proto_handle(const proto_env *env, const proto_peer *peer, const char *line, size_t len,
		 char **ret_resp, size_t *ret_len);

/* An error response line for id (may be NULL) with a wire code and message. */
int proto_error_line(const json_t *id, int code, const char *msg, char **ret_resp,
		     size_t *ret_len);

#endif
