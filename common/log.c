/* SPDX-License-Identifier: MIT */
#include "common/log.h"

#include <stdio.h>

void p11j_vlog(p11j_log_fn fn, void *ud, int level, const char *fmt, va_list ap)
{
	char buf[1024];

	if (fn == NULL)
		return;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	fn(level, buf, ud);
}

void p11j_log(p11j_log_fn fn, void *ud, int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	p11j_vlog(fn, ud, level, fmt, ap);
	va_end(ap);
}
