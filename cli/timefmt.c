/* SPDX-License-Identifier: MIT */
#include "cli/timefmt.h"

#include <stdio.h>
#include <time.h>

/* 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z */
#define TFMT_MIN INT64_C(-62167219200)
#define TFMT_MAX INT64_C(253402300799)

void tfmt_utc(int64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (t < TFMT_MIN || t > TFMT_MAX || gmtime_r(&tt, &tm) == NULL ||
	    strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(buf, len, "out of range");
}

void tfmt_relative(int64_t t, int64_t now, char *buf, size_t len)
{
	/* unsigned arithmetic: t - now may not fit an int64 */
	uint64_t a = t >= now ? (uint64_t)t - (uint64_t)now : (uint64_t)now - (uint64_t)t;
	unsigned long long big, small;
	const char *bu, *su;
	char d[48];

	if (a == 0) {
		snprintf(buf, len, "now");
		return;
	}
	if (a < 60) {
		big = a, bu = "s", small = 0, su = "";
	} else if (a < 3600) {
		big = a / 60, bu = "m", small = a % 60, su = "s";
	} else if (a < 86400) {
		big = a / 3600, bu = "h", small = a % 3600 / 60, su = "m";
	} else {
		big = a / 86400, bu = "d", small = a % 86400 / 3600, su = "h";
	}
	if (small != 0)
		snprintf(d, sizeof(d), "%llu%s %llu%s", big, bu, small, su);
	else
		snprintf(d, sizeof(d), "%llu%s", big, bu);
	snprintf(buf, len, "%s%s%s", t > now ? "in " : "", d, t < now ? " ago" : "");
}

void tfmt_line(const char *name, int64_t t, int64_t now, char *buf, size_t len)
{
	char utc[32], rel[64];

	tfmt_utc(t, utc, sizeof(utc));
	tfmt_relative(t, now, rel, sizeof(rel));
	snprintf(buf, len, "%-4s %lld  %s  (%s)", name, (long long)t, utc, rel);
}
