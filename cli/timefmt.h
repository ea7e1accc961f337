/* SPDX-License-Identifier: MIT */
/* Human-readable NumericDate values for `p11jwt decode`. Pure functions: the
 * caller passes "now", so tests use a fixed clock. */
#ifndef P11J_TIMEFMT_H
#define P11J_TIMEFMT_H

#include <stddef.h>
#include <stdint.h>

/* "2023-11-14 22:13:20 UTC", or "out of range" when the year is outside
 * 0..9999 (gmtime cannot represent it or it would not read as a date). */
void tfmt_utc(int64_t t, char *buf, size_t len);

/* The distance from now to t in at most two units, zero seconds omitted:
 * "now", "in 4m 59s", "5m ago", "in 1h 1m", "2d 3h ago". */
void tfmt_relative(int64_t t, int64_t now, char *buf, size_t len);

/* One line of the "times:" section, without newline:
 * "exp  1700000300  2023-11-14 22:18:20 UTC  (in 4m 59s)". */
void tfmt_line(const char *name, int64_t t, int64_t now, char *buf, size_t len);

#endif
