/* SPDX-License-Identifier: MIT */
/* What the files of the exchange (cli/xch-*.c) share; not for callers,
 * which include cli/exchange.h. */
#ifndef P11J_XCH_INTERNAL_H
#define P11J_XCH_INTERNAL_H

#include "cli/exchange.h"

/* The option name from cli, else from profile (either may be NULL). */
const json_t *xch_opt(const json_t *profile, const json_t *cli, const char *name);

/* req->algs, req->algs_profile and the default req->alg from the
 * profile's algs, else preset p's list (xch-alg.c). */
int xch_resolve_algs(const json_t *profile, const json_t *cli, const preset *p, xch_req *req);

#endif
