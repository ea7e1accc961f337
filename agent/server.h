/* SPDX-License-Identifier: MIT */
/*
 * The agent's socket side: one event loop (epoll) owns every connection and
 * does all socket I/O without blocking; a small pool of worker threads runs
 * proto_handle() (which signs on the token). Each connection has at most one
 * request at a worker, so answers come back in request order; other
 * connections are never held up by a slow or silent client. Buffers are
 * allocated while a connection has unread or unsent bytes only, so an idle
 * connection costs a few hundred bytes. srv_run() returns after srv_stop()
 * once in-flight requests are answered (or a deadline passes).
 */
#ifndef P11J_SERVER_H
#define P11J_SERVER_H

#include <stddef.h>
#include "agent/proto.h"

typedef void (*srv_log_fn)(int level, const char *msg);

typedef struct {
	const proto_env *env;
	size_t max_connections;   /* refused with an error line beyond this */
	unsigned workers;         /* signing threads (0: a default from the CPU count) */
	unsigned line_timeout_ms; /* a partial line older than this drops the client
				     (0: SRV_LINE_TIMEOUT_MS) */
	srv_log_fn log;
} srv_config;

#define SRV_LINE_TIMEOUT_MS 10000
#define SRV_SEND_TIMEOUT_MS 30000 /* an unread answer older than this drops the client */
#define SRV_MAX_WORKERS 64

typedef struct srv srv;

/* Create the socket's directory (0700, or check an existing one is ours and
 * private), replace a stale socket, bind under umask 077, chmod 0600, listen. */
int srv_listen(const char *path, int *ret_fd);

int srv_new(const srv_config *cfg, int listen_fd, srv **ret);
/* Serve until srv_stop(); returns 0 after every connection thread ended. */
int srv_run(srv *s);
/* Async-signal-safe: wakes srv_run() to shut down. */
void srv_stop(srv *s);
void srv_free(srv *s);

#endif
