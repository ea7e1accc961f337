/* SPDX-License-Identifier: MIT */
/*
 * One log callback for every library that reports what it does (the token
 * layer, the agent's server and reload): level is a syslog(3) priority
 * (LOG_ERR ... LOG_DEBUG), msg one line without its newline, ud the
 * caller's pointer. The libraries never print; the program behind the
 * callback decides where a line goes.
 */
#ifndef P11J_LOG_H
#define P11J_LOG_H

#include <stdarg.h>
#include <syslog.h>

typedef void (*p11j_log_fn)(int level, const char *msg, void *ud);

/* Format a line (at most 1023 bytes; longer is cut) and hand it to fn;
 * nothing when fn is NULL. */
void p11j_log(p11j_log_fn fn, void *ud, int level, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void p11j_vlog(p11j_log_fn fn, void *ud, int level, const char *fmt, va_list ap)
	__attribute__((format(printf, 4, 0)));

#endif
