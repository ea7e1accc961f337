/* SPDX-License-Identifier: MIT */
/*
 * Protocol v1 handler (docs/protocol.md): one request line in, one response
 * line out. No sockets and no global state, so unit tests and the fuzzer
 * drive it directly; the time comes from util_now().
 */
#ifndef P11J_PROTO_H
#define P11J_PROTO_H

#include <stdbool.h>
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
	/* PIN lifecycle ops "login" and "lock" (owner and root only): token is
	 * the request's PKCS#11 URI or NULL, pin NULL for a PIN pad. They may
	 * add members to resp. NULL: the ops answer unknown_op. */
	int (*login)(void *ud, const char *token, const char *pin, size_t pin_len, json_t *resp);
	int (*lock)(void *ud, const char *token, json_t *resp);
	void *pin_ud;
	/* "status" (owner and root only): adds the server's and the token's
	 * numbers to resp after version, protocol and keys. NULL: only those. */
	int (*status)(void *ud, json_t *resp);
	void *status_ud;
	/* A keyring that a reload replaces (agent/reload.h): when acquire is
	 * set, each request takes the current keyring (kr is then ignored)
	 * and gives it back with release() once answered, and the login and
	 * lock callbacks get *ref as their ud instead of pin_ud. */
	const keyring *(*acquire)(void *ud, void **ref);
	void (*release)(void *ref);
	void *kr_ud;
	/* "reload" (owner and root only): list the tokens' keys again and
	 * re-read the configuration; adds what changed to resp ("added",
	 * "removed"). ud: kr_ud. NULL: the op answers unknown_op. */
	int (*reload)(void *ud, json_t *resp);
	/* A sign, dpop or jwks request named a key the keyring does not hold:
	 * the agent may list the tokens' keys again (at most once per
	 * interval, agent/reload.c) and returns 1 when the current keyring
	 * holds that name now; the request is then answered from it, else
	 * with unknown_key. ud: kr_ud. NULL: no rescan. */
	int (*unknown_key)(void *ud, const char *name);
	/* "dpop" for keys without a policy of their own (kr_key.pol NULL):
	 * the agent's --allow-dpop. Keys with a policy follow its dpop rule. */
	bool dpop_default;
	/* Every request on the Jansson path (agent/proto-fast.h), for tests
	 * that compare the two. */
	bool no_fast;
} proto_env;

/* What proto_handle_ex() tells the server about the request it answered:
 * the outcome for the counters, and for sign, dpop, login and lock the
 * audit record (docs/design.md, "Operations"). No I/O here: the server
 * writes the line (agent/audit.h). */
typedef struct {
	int result;      /* 0, or the P11J_E_* code of the error answer */
	json_t *fields;  /* audited requests only, else NULL: op, key, alg, kid,
			    iss, sub, aud, jti, exp (sign) or alg, jkt, htm,
			    htu, jti, iat (dpop) as far as known; owned */
	bool no_fields;  /* in: only the result is wanted (no audit trail) */
	char *text;      /* instead of fields (the fast path, agent/proto-fast.h):
			    the record's members as JSON text, ",\"op\":..."
			    in audit_line()'s order; owned */
	size_t text_len;
} proto_audit;

/* Drop a proto_audit's record (fine on a zeroed one). */
void proto_audit_clear(proto_audit *a);
/* Whether a holds a record for audit_line() (fields or text). */
static inline bool proto_audit_has_record(const proto_audit *a)
{
	return a->fields != NULL || a->text != NULL;
}

/* Handle one request (line without its newline). *ret_resp is a malloc'ed
 * JSON line ending in "\n" (*ret_len bytes). Fails only when out of memory;
 * every bad request gets an error response. */
int proto_handle(const proto_env *env, const proto_peer *peer, const char *line, size_t len,
		 char **ret_resp, size_t *ret_len);
/* The same, filling *audit (may be NULL) for the counters and the audit
 * trail; call proto_audit_clear() after. */
int proto_handle_ex(const proto_env *env, const proto_peer *peer, const char *line, size_t len,
		    proto_audit *audit, char **ret_resp, size_t *ret_len);

/* An error response line for id (may be NULL) with a wire code and message. */
int proto_error_line(const json_t *id, int code, const char *msg, char **ret_resp,
		     size_t *ret_len);

#endif
