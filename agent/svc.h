/* SPDX-License-Identifier: MIT */
/*
 * The service manager's side of the agent (systemd): a listening socket
 * passed in (socket activation, LISTEN_FDS/LISTEN_PID) and readiness
 * notification (NOTIFY_SOCKET). Without libsystemd at build time both are
 * no-ops: the agent binds its own socket and notifies nobody.
 */
#ifndef P11J_SVC_H
#define P11J_SVC_H

#include <stddef.h>

/* 1 and the passed socket in *ret_fd (its path, if it has one, in path)
 * when the agent was socket-activated with exactly one listening Unix
 * stream socket; 0 when not activated; a P11J_E_* code when the passed fds
 * are unusable. Unsets LISTEN_* so that nothing we start inherits them. */
int svc_listen_fd(int *ret_fd, char *path, size_t len);

/* sd_notify(): "READY=1", "STOPPING=1", ... Ignored without NOTIFY_SOCKET. */
void svc_notify(const char *state);

#endif
