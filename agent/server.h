/* SPDX-License-Identifier: MIT */
/*
 * The agent's socket side: a pool of worker threads waits on one epoll set
 * in which every connection is registered one-shot. The thread that gets a
 * connection's event owns it until it re-arms it: it reads, runs
 * proto_handle() (which signs on the token) for each complete line and
 * writes the answers, all without blocking on the socket and with no
 * hand-off between threads. Answers therefore come back in request order,
 * and a slow or silent client holds no thread. Buffers exist only while a
 * connection has unread or unsent bytes, so an idle connection costs a few
 * hundred bytes. A timer (the thread in srv_run()) drops stalled clients.
 * srv_run() returns after srv_stop() once the requests being served are
 * answered (or a deadline passes).
 */
#ifndef P11J_SERVER_H
#define P11J_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "agent/proto.h"
#include "jose/jsonfast.h"
#include "common/log.h"


typedef struct {
	const proto_env *env;
	size_t max_connections;   /* refused with an error line beyond this; lowered
				     to what RLIMIT_NOFILE leaves (srv_new logs it) */
	size_t max_connections_per_uid; /* for uids other than the agent's own
					   (env->owner_uid) and root (0: a quarter
					   of max_connections) */
	unsigned workers;         /* signing threads (0: a default from the CPU count) */
	unsigned line_timeout_ms; /* a partial line older than this drops the client
				     (0: SRV_LINE_TIMEOUT_MS) */
	unsigned idle_timeout_ms; /* a connection with nothing to read, sign or send
				     for this long is closed (0: SRV_IDLE_TIMEOUT_MS) */
	p11j_log_fn log; /* syslog priorities; its ud is NULL */
	/* The audit trail (both set, or neither). audit() is called on the
	 * serving thread for each audited request (sign, login, lock) and
	 * appends its record (one line) to out, the serving thread's batch;
	 * on failure out holds what it held. audit_write() is then called
	 * with the records of a batch of requests, one after the other, before
	 * any of their answers is sent. A failure of either turns a successful
	 * answer into an "internal" error: no JWT leaves without its record. */
	int (*audit)(void *ud, const proto_peer *peer, const proto_audit *a, jsonf_buf *out);
	int (*audit_write)(void *ud, const char *buf, size_t len);
	void *audit_ud;
	/* Called once when srv_stop() takes effect (sd_notify STOPPING=1). */
	void (*on_stopping)(void *ud);
	void *stopping_ud;
} srv_config;

#define SRV_NCODES 64 /* errors[-code] for P11J_E_* codes */

/* Counters since srv_new(), for the "status" op. */
typedef struct {
	uint64_t requests;            /* request lines answered */
	uint64_t errors[SRV_NCODES];  /* error answers by -P11J_E_* code */
	uint64_t accepted;            /* connections accepted */
	uint64_t refused;             /* connections refused (busy) */
	size_t connections;           /* connections open now */
} srv_stats;

#define SRV_LINE_TIMEOUT_MS 10000
#define SRV_IDLE_TIMEOUT_MS 300000
/* File descriptors kept for everything but connections (the token module,
 * the audit trail, the event loop), plus one per worker: max_connections is
 * lowered to RLIMIT_NOFILE minus this. */
#define SRV_FD_RESERVE 64
#define SRV_SEND_TIMEOUT_MS 30000 /* an unread answer older than this drops the client */
#define SRV_MAX_WORKERS 64

typedef struct srv srv;

/* The request framing, pure so that tests/fuzz/fuzz_frame.c drives the
 * code the server runs: a request is a line ending in "\n" of at most
 * PROTO_MAX_LINE bytes, and a connection buffers at most SRV_FRAME_CAP
 * bytes of input (one maximal line and its newline). One read may bring
 * several lines and the start of the next. */
#define SRV_FRAME_CAP (PROTO_MAX_LINE + 1)

typedef enum {
	SRV_FRAME_PARTIAL,  /* no newline yet: keep the bytes and read more */
	SRV_FRAME_LINE,     /* a complete line */
	SRV_FRAME_TOO_LONG, /* SRV_FRAME_CAP bytes without a newline */
} srv_frame_result;

/* What starts at buf[off] (len: the bytes buffered). On SRV_FRAME_LINE the
 * line is buf[off..off + *ret_len), its newline follows, and the next one
 * starts at off + *ret_len + 1. */
srv_frame_result srv_frame_next(const char *buf, size_t len, size_t off, size_t *ret_len);
/* Whether buf[off..len) holds a complete line. */
bool srv_frame_has_line(const char *buf, size_t len, size_t off);
/* The lines before off are served: move the rest to the front, wipe the
 * bytes it leaves behind, and return the new length. */
size_t srv_frame_compact(char *buf, size_t len, size_t off);

/* Create the socket's directory (0700, or check an existing one is ours and
 * private), replace a stale socket, bind under umask 077, chmod 0600, listen. */
int srv_listen(const char *path, int *ret_fd);

int srv_new(const srv_config *cfg, int listen_fd, srv **ret);
/* Serve until srv_stop(); returns 0 after every connection thread ended. */
int srv_run(srv *s);
/* Async-signal-safe: wakes srv_run() to shut down. */
void srv_stop(srv *s);
/* A snapshot of the counters (thread-safe). */
void srv_get_stats(srv *s, srv_stats *ret);
void srv_free(srv *s);

#endif
