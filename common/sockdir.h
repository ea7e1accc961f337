/* SPDX-License-Identifier: MIT */
/*
 * The one rule for the directory that holds the agent's socket, applied by
 * the agent before it binds and by the CLI before it connects (so that a
 * PIN is never sent to a socket another user planted). docs/security.md,
 * "The agent's socket", says the same in prose:
 *
 *  - the directory is a real directory (lstat: a symlink is refused);
 *  - it is owned by root or by one of the trusted uids (the caller's own,
 *    and for the CLI the agent's service uid when one is named);
 *  - nobody but its owner may write to it (no group or other write bit);
 *  - a directory in a place that anyone may write to (its parent is world
 *    writable, as /tmp is: the /tmp/p11jwt-UID fallback) must be mode 0700
 *    exactly, since anyone could have made it first.
 *
 * The CLI also checks the listener: SO_PEERCRED's uid must be root or a
 * trusted uid (sockdir_check_peer).
 */
#ifndef P11J_SOCKDIR_H
#define P11J_SOCKDIR_H

#include <stddef.h>
#include <sys/types.h>

/* At most this many trusted uids besides root. */
#define SOCKDIR_MAX_UIDS 4

/* The last-resort socket path of uid: /tmp/p11jwt-UID/agent.sock.
 * P11J_E_BAD_REQUEST when it does not fit len. */
int sockdir_fallback_path(unsigned uid, char *buf, size_t len);

/* Check the directory of socket path sock (its dirname; "." for a bare
 * name) by the rule above. 0, or P11J_E_INSECURE with a message naming the
 * directory, its owner and its mode; P11J_E_AGENT_UNAVAILABLE when it does
 * not exist (nobody started an agent there), P11J_E_SYSTEM for other lstat
 * failures. */
int sockdir_check(const char *sock, const uid_t *trusted, size_t ntrusted);

/* The uid of the process that listens on connected Unix socket fd must be
 * root or one of trusted: 0, or P11J_E_INSECURE naming path and that uid. */
int sockdir_check_peer(int fd, const char *sock, const uid_t *trusted, size_t ntrusted);

/* A user name or a decimal uid (as for --agent-uid): P11J_E_BAD_REQUEST
 * naming what when it is neither. */
int sockdir_parse_uid(const char *what, const char *s, uid_t *ret);

#endif
