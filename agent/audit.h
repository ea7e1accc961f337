/* SPDX-License-Identifier: MIT */
/*
 * The audit trail: one JSON line per request that reached a key or the
 * token's login state (sign, dpop, login, lock), allowed or refused. The record is
 * filled by proto_handle_ex() without I/O; audit_line() turns it into the
 * line (pure, unit-tested) and an audit sink writes it: a file opened
 * O_APPEND with one write() per batch of lines, syslog (LOG_AUTHPRIV, over
 * our own /dev/log socket so that a lost record is noticed), stderr, or
 * nowhere.
 * Never the JWT, the PIN or a signature: only the fields listed here.
 */
#ifndef P11J_AUDIT_H
#define P11J_AUDIT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "agent/proto.h"
#include "jose/jsonfast.h"

/* Build the line (malloc'ed, ending in "\n"):
 * {"time":"2026-11-23T10:11:12.345Z","uid":..,"gid":..,"pid":..,"op":"sign",
 *  "key":..,"alg":..,"kid":..,"iss":..,"sub":..,"aud":..,"jti":..,"exp":..,
 *  "result":"ok"|"<error code>"}
 * (a dpop record: op, key, alg, jkt, htm, htu, jti, iat, result)
 * Members the request did not have are left out. now_ms: milliseconds since
 * the epoch (UTC). */
int audit_line(const proto_audit *a, const proto_peer *peer, int64_t now_ms, char **ret_line,
               size_t *ret_len);
/* The same line appended to out (the agent's batch of records, so that no
 * line is allocated on its own). On failure out is as it was, but for a
 * block that may have moved (what it held is kept). */
int audit_line_append(jsonf_buf *out, const proto_audit *a, const proto_peer *peer,
                      int64_t now_ms);

typedef struct audit_sink audit_sink;

/* spec: "auto", "syslog", "stderr", "file:PATH" or "none". A file is
 * created 0600 if missing (O_APPEND, O_NOFOLLOW); an existing one must be a
 * regular file of ours that group and others cannot write. "syslog" needs a
 * daemon listening at /dev/log now (P11J_E_SYSTEM otherwise); "auto" is
 * syslog if one listens, else stderr. */
int audit_open(const char *spec, audit_sink **ret);
/* The same with another socket than /dev/log for syslog (tests). */
int audit_open_at(const char *spec, const char *syslog_path, audit_sink **ret);
/* Whether the records go to stderr ("stderr", or "auto" with no syslog). */
bool audit_on_stderr(const audit_sink *s);
/* One or more whole lines: one write() for all of them (or one syslog
 * message per line), so that lines from several threads never interleave.
 * P11J_E_SYSTEM when a line cannot be written: the file fails, or the
 * syslog socket refuses it twice (it is reconnected in between, for a
 * daemon that restarted). */
int audit_write(audit_sink *s, const char *line, size_t len);
/* Async-signal-safe: the next audit_write() reopens the file first (for
 * log rotation on SIGHUP). */
void audit_reopen_later(audit_sink *s);
bool audit_enabled(const audit_sink *s);
void audit_close(audit_sink *s);

#endif
