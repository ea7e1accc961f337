/* SPDX-License-Identifier: MIT */
/*
 * The audit trail: one JSON line per request that reached a key or the
 * token's login state (sign, login, lock), allowed or refused. The record is
 * filled by proto_handle_ex() without I/O; audit_line() turns it into the
 * line (pure, unit-tested) and an audit sink writes it: a file opened
 * O_APPEND with one write() per line, syslog (LOG_AUTHPRIV), or nowhere.
 * Never the JWT, the PIN or a signature: only the fields listed here.
 */
#ifndef P11J_AUDIT_H
#define P11J_AUDIT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "agent/proto.h"

/* Build the line (malloc'ed, ending in "\n"):
 * {"time":"2026-11-23T10:11:12.345Z","uid":..,"gid":..,"pid":..,"op":"sign",
 *  "key":..,"alg":..,"kid":..,"iss":..,"sub":..,"aud":..,"jti":..,"exp":..,
 *  "result":"ok"|"<error code>"}
 * Members the request did not have are left out. now_ms: milliseconds since
 * the epoch (UTC). */
int audit_line(const proto_audit *a, const proto_peer *peer, int64_t now_ms, char **ret_line,
               size_t *ret_len);

typedef struct audit_sink audit_sink;

/* spec: "none", "syslog", "stderr" or "file:PATH". A file is created 0600
 * if missing (O_APPEND, O_NOFOLLOW); an existing one must be a regular file
 * of ours that group and others cannot write. */
int audit_open(const char *spec, audit_sink **ret);
/* One or more whole lines: one write() for all of them (or one syslog()
 * call per line), so that lines from several threads never interleave.
 * P11J_E_SYSTEM when a file write fails. */
int audit_write(audit_sink *s, const char *line, size_t len);
/* Async-signal-safe: the next audit_write() reopens the file first (for
 * log rotation on SIGHUP). */
void audit_reopen_later(audit_sink *s);
bool audit_enabled(const audit_sink *s);
void audit_close(audit_sink *s);

#endif
