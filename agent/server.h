/* SPDX-License-Identifier: MIT */
/*
 * The agent's socket side: accepts connections on a Unix stream socket and
 * serves each on its own thread, reading bounded lines and answering them in
 * order through proto_handle(). A silent or slow client only blocks its own
 * thread. srv_run() returns after srv_stop() once in-flight requests are done.
 */
#ifndef P11J_SERVER_H
#define P11J_SERVER_H

#include <stddef.h>
#include "agent/proto.h"

typedef void (*srv_log_fn)(int level, const char *msg);

typedef struct {
	const proto_env *env;
	size_t max_connections;   /* refused with an error line beyond this */
	srv_log_fn log;
} srv_config;

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
