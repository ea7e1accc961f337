/* SPDX-License-Identifier: MIT */
/*
 * HTTP(S) through libcurl, for the token endpoint and `p11jwt call`.
 * One attempt per http_request(); callers decide on retries with
 * http_retry_delay_ms(), because a token request is re-signed (fresh jti)
 * before it is sent again.
 *
 * TLS verification is always on. Plain http:// is accepted only for
 * loopback hosts (127.0.0.0/8, ::1, localhost): assertions, client secrets
 * and tokens never cross a network in clear. Redirects are not followed.
 */
#ifndef P11J_HTTP_H
#define P11J_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_MAX_BODY (1024 * 1024) /* response body cap */
#define HTTP_MAX_ATTEMPTS 3
#define HTTP_MAX_RETRY_AFTER 30 /* seconds; longer waits are not honoured */

typedef struct {
	const char *cacert; /* extra CA bundle (PEM), or NULL */
	long timeout_s;     /* whole attempt (default 30) */
	size_t max_body;    /* 0: HTTP_MAX_BODY */
} http_opts;

typedef struct {
	long status;       /* HTTP status, 0 when none was received */
	char *body;        /* NUL-terminated (may hold NULs before len) */
	size_t len;
	char *content_type; /* or NULL */
	char *www_authenticate; /* or NULL; several headers joined with ", " */
	char *dpop_nonce;   /* DPoP-Nonce (RFC 9449), or NULL */
	long retry_after;  /* seconds from Retry-After, -1 when absent */
} http_resp;

/* Check a URL before use: http or https, a host, and http only to a
 * loopback host. P11J_E_BAD_REQUEST naming what is wrong. */
int http_check_url(const char *what, const char *url);

/* Parts of a URL: "host" (no port) and "origin" (scheme://host[:port]). */
int http_url_host(const char *url, char **ret);
int http_url_origin(const char *url, char **ret);

/* One request. headers: NULL-terminated "Name: value" strings, or NULL.
 * body may be NULL (no body). Returns 0 with *resp filled whatever the
 * status; or P11J_E_CONNECT, P11J_E_TIMEOUT, P11J_E_TLS,
 * P11J_E_BAD_RESPONSE (body over the cap, malformed HTTP),
 * P11J_E_BAD_REQUEST (URL unusable). resp is cleared first either way. */
int http_request(const http_opts *o, const char *method, const char *url,
		 const char *const *headers, const char *body, size_t body_len, http_resp *resp);

/* Wipe and free what a response holds. */
void http_resp_clear(http_resp *resp);

/* Whether to try again after attempt number `attempt` (1-based) ended with
 * r and resp: connection failures, timeouts, 5xx and 429 are retried (5xx
 * only when retry_5xx), at most HTTP_MAX_ATTEMPTS in all. Returns the
 * delay in ms (backoff 500, 1000 ms, or Retry-After), or -1 for no retry. */
long http_retry_delay_ms(int attempt, int r, const http_resp *resp, bool retry_5xx);

/* curl_global_init once; call from main(). */
int http_global_init(void);
void http_global_cleanup(void);

#endif
