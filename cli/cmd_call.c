/* SPDX-License-Identifier: MIT */
/* p11jwt call: a REST call with the (cached) access token, Bearer or DPoP
 * (a fresh proof per request). */
#include "cli/exchange.h"
#include "cli/http.h"
#include "cli/token.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/dpop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CALL_MAX_BODY (16 * 1024 * 1024)

/* -d DATA or -d @FILE */
static int read_data(const char *arg, char **ret, size_t *ret_len)
{
	if (arg[0] == '@')
		return util_read_file(arg + 1, CALL_MAX_BODY, false, ret, ret_len);
	*ret = strdup(arg);
	*ret_len = strlen(arg);
	return *ret ? 0 : err_nomem();
}

static bool has_header(const topts *o, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i < o->n_api_headers; i++)
		if (strncasecmp(o->api_headers[i], name, n) == 0 && o->api_headers[i][n] == ':')
			return true;
	return false;
}

/* "DPoP: PROOF" for one request with the token (ath); *hdr replaced. */
static int call_dpop_header(const xch_req *req, const char *method, const char *url,
		       const char *nonce, const char *token, char **hdr)
{
	char *proof = NULL;
	int st;

	free(*hdr);
	*hdr = NULL;
	if ((st = tkn_dpop_proof(req, method, url, nonce, token, &proof, NULL)) != 0)
		return st;
	if (asprintf(hdr, "DPoP: %s", proof) < 0) {
		*hdr = NULL;
		st = cli_fail(P11J_E_NOMEM);
	}
	free(proof);
	return st;
}

int cmd_call(cli_ctx *ctx, int argc, char **argv)
{
	topts o = { 0 };
	xch_req req = { 0 };
	got_token g = { 0 };
	http_resp resp = { 0 };
	const char **hdrs = NULL;
	char *data = NULL, *auth = NULL, *nonce = NULL, *dpop_hdr = NULL;
	size_t data_len = 0, nh;
	const char *method;
	bool retried_401 = false;
	int r, st;

	if (!tkn_parse(ctx, "call", argc, argv, &o, &st))
		goto out;
	if ((r = http_check_url("URL", o.url)) < 0) {
		st = cli_usage_error("call", "%s", err_msg());
		goto out;
	}
	if (o.data && (r = read_data(o.data, &data, &data_len)) < 0) {
		st = cli_fail(r);
		goto out;
	}
	method = o.method ? o.method : data ? "POST" : "GET";
	if ((st = tkn_prepare(&o, &req)) != 0)
		goto out;
	if (o.dry_run) {
		st = tkn_dry_run(&req);
		goto out;
	}
	hdrs = calloc(o.n_api_headers + 5, sizeof(*hdrs));
	if (hdrs == NULL) {
		st = cli_fail(P11J_E_NOMEM);
		goto out;
	}
	for (nh = 0; nh < o.n_api_headers; nh++)
		hdrs[nh] = o.api_headers[nh];
	if (data && !has_header(&o, "content-type")) {
		json_t *j = json_loadb(data, data_len, JSON_DECODE_ANY, NULL);

		hdrs[nh++] = j ? "Content-Type: application/json"
			       : "Content-Type: application/x-www-form-urlencoded";
		json_decref(j);
	}
	for (;;) {
		http_opts ho = { .cacert = req.cacert, .timeout_s = req.timeout,
				 .max_body = CALL_MAX_BODY };
		bool idempotent = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
		bool nonce_retried = false;

		if (!req.exchange) {
			if ((st = tkn_sign_assertion(&req, &g.access_token, NULL)) != 0)
				goto out;
		} else if ((st = tkn_get_token(&req, !o.no_cache, retried_401, &g)) != 0) {
			goto out;
		}
		if (asprintf(&auth, "Authorization: %s %s", g.dpop ? "DPoP" : "Bearer",
			     g.access_token) < 0) {
			auth = NULL;
			st = cli_fail(P11J_E_NOMEM);
			goto out;
		}
		hdrs[nh] = auth;
		free(nonce);
		nonce = g.dpop ? tkn_dpop_nonce_get(TKN_API, o.url) : NULL;
		for (int attempt = 1;; attempt++) {
			long delay;

			/* a fresh proof for every request sent: servers refuse a
			 * jti seen before */
			if (g.dpop && (st = call_dpop_header(&req, method, o.url, nonce, g.access_token,
							&dpop_hdr)) != 0)
				goto out;
			hdrs[nh + 1] = dpop_hdr;
			r = http_request(&ho, method, o.url, hdrs, data, data_len, &resp);
			if (r == 0 && g.dpop && resp.dpop_nonce) {
				tkn_dpop_nonce_put(TKN_API, o.url, resp.dpop_nonce);
				if (!nonce_retried && tkn_dpop_nonce_challenge(&resp) &&
				    dpop_nonce_check(resp.dpop_nonce, strlen(resp.dpop_nonce)) == 0) {
					tkn_note("note: the API asks for a DPoP nonce; trying again "
						 "with it");
					free(nonce);
					nonce = strdup(resp.dpop_nonce);
					nonce_retried = true;
					http_resp_clear(&resp);
					if (nonce == NULL) {
						st = cli_fail(P11J_E_NOMEM);
						goto out;
					}
					attempt--;
					continue;
				}
			}
			delay = http_retry_delay_ms(attempt, r, &resp, idempotent);
			if (delay < 0)
				break;
			tkn_note("note: %s; trying again in %ld ms (attempt %d of %d)",
			     r < 0 ? err_msg() : "the API asked to retry", delay, attempt + 1,
			     HTTP_MAX_ATTEMPTS);
			http_resp_clear(&resp);
			tkn_sleep_ms(delay);
		}
		freezero_str(auth);
		auth = NULL;
		hdrs[nh] = hdrs[nh + 1] = NULL;
		if (r < 0) {
			st = cli_fail(r);
			goto out;
		}
		/* a 401 that is not about the nonce: the cached token may be
		 * revoked */
		if (resp.status == 401 && g.from_cache && req.exchange && !retried_401 &&
		    !tkn_dpop_nonce_challenge(&resp)) {
			tkn_note("note: the API answered 401 to the cached token; getting a new one");
			retried_401 = true;
			tkn_got_clear(&g);
			http_resp_clear(&resp);
			continue;
		}
		break;
	}
	if (resp.status >= 200 && resp.status <= 299) {
		fwrite(resp.body, 1, resp.len, stdout);
		st = fflush(stdout) == 0 ? 0 : cli_fail(err_set(P11J_E_SYSTEM, "writing the body"));
	} else {
		st = cli_fail(err_set(P11J_E_HTTP_STATUS, "%s %s answered HTTP %ld%s%s", method, o.url,
				  resp.status, resp.www_authenticate ? "; WWW-Authenticate: " : "",
				  resp.www_authenticate ? resp.www_authenticate : ""));
		char buf[512];
		const char *hint = xch_api_dpop_hint(&req, g.dpop, resp.status,
						     resp.www_authenticate, buf, sizeof(buf));

		fwrite(resp.body, 1, resp.len, stderr);
		if (resp.len && resp.body[resp.len - 1] != '\n')
			fputc('\n', stderr);
		if (hint)
			tkn_note("hint: %s", hint);
	}
out:
	free(hdrs);
	freezero_str(auth);
	free(nonce);
	free(dpop_hdr);
	if (data)
		freezero_buf(data, data_len + 1);
	http_resp_clear(&resp);
	tkn_got_clear(&g);
	xch_req_clear(&req);
	tkn_opts_clear(&o);
	return st;
}
