/* SPDX-License-Identifier: MIT */
#include "cli/http.h"
#include "common/err.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <stddef.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>
#include <openssl/crypto.h>

/*
 * libcurl is loaded when the first request or URL needs it, not at program
 * start: it brings some thirty shared libraries (TLS, Kerberos, LDAP, ...)
 * that cost about 5 ms per process here, and most p11jwt runs (sign, keys,
 * a cache hit) never touch the network. The same pattern as systemd's
 * dlopen of optional libraries: the headers give the types, dlsym() the
 * functions.
 */
static struct {
	bool tried, ok;
	char why[256];
	CURLcode (*global_init_mem)(long, curl_malloc_callback, curl_free_callback,
				    curl_realloc_callback, curl_strdup_callback,
				    curl_calloc_callback);
	void (*global_cleanup)(void);
	CURL *(*easy_init)(void);
	CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
	CURLcode (*easy_perform)(CURL *);
	CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
	void (*easy_cleanup)(CURL *);
	const char *(*easy_strerror)(CURLcode);
	struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
	void (*slist_free_all)(struct curl_slist *);
	CURLU *(*url)(void);
	CURLUcode (*url_set)(CURLU *, CURLUPart, const char *, unsigned int);
	CURLUcode (*url_get)(const CURLU *, CURLUPart, char **, unsigned int);
	void (*url_cleanup)(CURLU *);
	const char *(*url_strerror)(CURLUcode);
	void (*free)(void *);
} C;

#define CURL_SONAME "libcurl.so.4"

static int curl_load(void)
{
	static const struct {
		const char *name;
		size_t off;
	} syms[] = {
#define SYM(f, m) { #f, offsetof(__typeof__(C), m) }
		SYM(curl_global_init_mem, global_init_mem),
		SYM(curl_global_cleanup, global_cleanup),
		SYM(curl_easy_init, easy_init),
		SYM(curl_easy_setopt, easy_setopt),
		SYM(curl_easy_perform, easy_perform),
		SYM(curl_easy_getinfo, easy_getinfo),
		SYM(curl_easy_cleanup, easy_cleanup),
		SYM(curl_easy_strerror, easy_strerror),
		SYM(curl_slist_append, slist_append),
		SYM(curl_slist_free_all, slist_free_all),
		SYM(curl_url, url),
		SYM(curl_url_set, url_set),
		SYM(curl_url_get, url_get),
		SYM(curl_url_cleanup, url_cleanup),
		SYM(curl_url_strerror, url_strerror),
		SYM(curl_free, free),
#undef SYM
	};
	void *h;

	if (C.tried)
		return C.ok ? 0 : err_set(P11J_E_INTERNAL, "%s", C.why);
	C.tried = true;
	h = dlopen(CURL_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		snprintf(C.why, sizeof(C.why), "cannot load %s (libcurl4): %s", CURL_SONAME,
			 dlerror());
		return err_set(P11J_E_INTERNAL, "%s", C.why);
	}
	for (size_t i = 0; i < ARRAY_SIZE(syms); i++) {
		void *f = dlsym(h, syms[i].name);

		if (f == NULL) {
			snprintf(C.why, sizeof(C.why), "%s has no %s: too old", CURL_SONAME,
				 syms[i].name);
			return err_set(P11J_E_INTERNAL, "%s", C.why);
		}
		memcpy((char *)&C + syms[i].off, &f, sizeof(f));
	}
	/* libcurl's copies of headers (Authorization: Bearer ...) and bodies
	 * are wiped when it frees them */
	if (C.global_init_mem(CURL_GLOBAL_DEFAULT, malloc, util_wipe_free, util_wipe_realloc,
			      strdup, calloc) != CURLE_OK) {
		snprintf(C.why, sizeof(C.why), "libcurl cannot be initialised");
		return err_set(P11J_E_INTERNAL, "%s", C.why);
	}
	C.ok = true;
	return 0;
}

int http_global_init(void)
{
	return 0; /* libcurl is loaded on first use (curl_load) */
}

void http_global_cleanup(void)
{
	if (C.ok)
		C.global_cleanup();
}

static bool host_is_loopback(const char *host)
{
	struct in_addr a4;
	char buf[64];
	size_t n = strlen(host);

	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	/* CURLU gives IPv6 hosts in brackets */
	if (n > 2 && n < sizeof(buf) && host[0] == '[' && host[n - 1] == ']') {
		struct in6_addr a6;

		memcpy(buf, host + 1, n - 2);
		buf[n - 2] = '\0';
		return inet_pton(AF_INET6, buf, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
	}
	return false;
}

/* scheme and host of url, as CURLU sees them (what libcurl will use). */
static int url_parts(const char *url, char **scheme, char **host, char **port)
{
	CURLU *u;
	CURLUcode uc;
	int r = 0;

	*scheme = *host = NULL;
	if (port)
		*port = NULL;
	if ((r = curl_load()) < 0)
		return r;
	u = C.url();
	if (u == NULL)
		return err_nomem();
	uc = C.url_set(u, CURLUPART_URL, url, 0);
	if (uc == CURLUE_OK)
		uc = C.url_get(u, CURLUPART_SCHEME, scheme, 0);
	if (uc == CURLUE_OK)
		uc = C.url_get(u, CURLUPART_HOST, host, 0);
	if (uc == CURLUE_OK && port && C.url_get(u, CURLUPART_PORT, port, 0) != CURLUE_OK)
		*port = NULL;
	if (uc != CURLUE_OK) {
		r = err_set(P11J_E_BAD_REQUEST, "'%s' is not a usable URL: %s", url,
			    C.url_strerror(uc));
		C.free(*scheme);
		C.free(*host);
		*scheme = *host = NULL;
	}
	C.url_cleanup(u);
	return r;
}

int http_check_url(const char *what, const char *url)
{
	char *scheme, *host;
	int r;

	if ((r = url_parts(url, &scheme, &host, NULL)) < 0)
		return err_set(r, "%s: %s", what, err_msg());
	if (strcmp(scheme, "https") == 0) {
		r = 0;
	} else if (strcmp(scheme, "http") == 0) {
		r = host_is_loopback(host)
			    ? 0
			    : err_set(P11J_E_BAD_REQUEST,
				      "%s '%s': plain http is allowed only to a loopback host "
				      "(127.0.0.1, ::1, localhost); use https",
				      what, url);
	} else {
		r = err_set(P11J_E_BAD_REQUEST, "%s '%s': scheme must be https", what, url);
	}
	C.free(scheme);
	C.free(host);
	return r;
}

int http_url_host(const char *url, char **ret)
{
	char *scheme, *host;
	int r;

	if ((r = url_parts(url, &scheme, &host, NULL)) < 0)
		return r;
	*ret = strdup(host);
	C.free(scheme);
	C.free(host);
	return *ret ? 0 : err_nomem();
}

int http_url_origin(const char *url, char **ret)
{
	char *scheme, *host, *port;
	int r;

	if ((r = url_parts(url, &scheme, &host, &port)) < 0)
		return r;
	*ret = NULL;
	if (asprintf(ret, "%s://%s%s%s", scheme, host, port ? ":" : "", port ? port : "") < 0)
		*ret = NULL;
	C.free(scheme);
	C.free(host);
	C.free(port);
	return *ret ? 0 : err_nomem();
}

struct sink {
	http_resp *resp;
	size_t cap;
	size_t max;
	bool too_big;
};

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
	struct sink *s = ud;
	size_t len = size * n;
	http_resp *resp = s->resp;

	if (resp->len + len > s->max) {
		s->too_big = true;
		return 0; /* CURLE_WRITE_ERROR */
	}
	/* grow by copy so that no unwiped copy of a token is left behind */
	if (util_secret_reserve(&resp->body, &s->cap, resp->len, len) < 0)
		return 0;
	memcpy(resp->body + resp->len, p, len);
	resp->len += len;
	resp->body[resp->len] = '\0';
	return len;
}

/* Keep Content-Type, WWW-Authenticate (several are joined with ", ", as
 * RFC 9110 allows) and DPoP-Nonce of the final response. */
static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
	struct sink *s = ud;
	size_t len = size * n;
	static const struct {
		const char *name;
		size_t off;
	} want[] = {
		{ "content-type:", offsetof(http_resp, content_type) },
		{ "www-authenticate:", offsetof(http_resp, www_authenticate) },
		{ "dpop-nonce:", offsetof(http_resp, dpop_nonce) },
	};

	if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
		/* a new response (after 100 Continue): forget the previous headers */
		free(s->resp->content_type);
		free(s->resp->www_authenticate);
		free(s->resp->dpop_nonce);
		s->resp->content_type = s->resp->www_authenticate = s->resp->dpop_nonce = NULL;
		return len;
	}
	for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
		size_t nl = strlen(want[i].name);
		char **slot = (char **)((char *)s->resp + want[i].off);
		const char *v, *e;

		if (len <= nl || strncasecmp(p, want[i].name, nl) != 0)
			continue;
		for (v = p + nl; v < p + len && (*v == ' ' || *v == '\t'); v++)
			;
		for (e = p + len; e > v && isspace((unsigned char)e[-1]); e--)
			;
		if (want[i].off == offsetof(http_resp, www_authenticate) && *slot != NULL) {
			char *j = NULL;

			if (asprintf(&j, "%s, %.*s", *slot, (int)(e - v), v) < 0)
				j = NULL;
			free(*slot);
			*slot = j;
			continue;
		}
		free(*slot);
		*slot = strndup(v, (size_t)(e - v));
	}
	return len;
}

static int map_curl(CURLcode cc, const char *url, const char *ebuf, const struct sink *s,
		    long timeout_s)
{
	const char *why = ebuf[0] ? ebuf : C.easy_strerror(cc);

	switch (cc) {
	case CURLE_OK:
		return 0;
	case CURLE_WRITE_ERROR:
		if (s->too_big)
			return err_set(P11J_E_BAD_RESPONSE,
				       "%s: the response body is over %zu bytes; not read", url,
				       s->max);
		return err_set(P11J_E_NOMEM, "out of memory reading %s", url);
	case CURLE_FILESIZE_EXCEEDED:
		return err_set(P11J_E_BAD_RESPONSE,
			       "%s: the response body is over %zu bytes; not read", url, s->max);
	case CURLE_OPERATION_TIMEDOUT:
		return err_set(P11J_E_TIMEOUT, "%s did not answer within %ld s (%s)", url,
			       timeout_s, why);
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_CONNECT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
		return err_set(P11J_E_CONNECT, "cannot talk to %s: %s", url, why);
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_USE_SSL_FAILED:
		return err_set(P11J_E_TLS, "TLS with %s failed: %s", url, why);
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
		return err_set(P11J_E_BAD_REQUEST, "'%s' cannot be used: %s", url, why);
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_BAD_CONTENT_ENCODING:
	case CURLE_HTTP2:
		return err_set(P11J_E_BAD_RESPONSE, "%s answered with malformed HTTP: %s", url, why);
	default:
		return err_set(P11J_E_CONNECT, "request to %s failed: %s", url, why);
	}
}

void http_resp_clear(http_resp *resp)
{
	if (resp->body)
		freezero_buf(resp->body, resp->len + 1);
	free(resp->content_type);
	free(resp->www_authenticate);
	free(resp->dpop_nonce);
	memset(resp, 0, sizeof(*resp));
	resp->retry_after = -1;
}

int http_request(const http_opts *o, const char *method, const char *url,
		 const char *const *headers, const char *body, size_t body_len, http_resp *resp)
{
	char ebuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *hl = NULL;
	struct sink s = { .resp = resp };
	long timeout = o->timeout_s > 0 ? o->timeout_s : 30;
	curl_off_t ra = -1;
	CURLcode cc;
	CURL *c;
	int r;

	memset(resp, 0, sizeof(*resp));
	resp->retry_after = -1;
	s.max = o->max_body ? o->max_body : HTTP_MAX_BODY;
	if ((r = http_check_url("URL", url)) < 0)
		return r;
	if ((r = curl_load()) < 0)
		return r;
	c = C.easy_init();
	if (c == NULL)
		return err_set(P11J_E_NOMEM, "out of memory (curl_easy_init)");
	for (size_t i = 0; headers && headers[i]; i++) {
		struct curl_slist *n = C.slist_append(hl, headers[i]);

		if (n == NULL) {
			r = err_nomem();
			goto out;
		}
		hl = n;
	}
	C.easy_setopt(c, CURLOPT_URL, url);
	C.easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	C.easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	C.easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	C.easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	C.easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	if (o->cacert)
		C.easy_setopt(c, CURLOPT_CAINFO, o->cacert);
	C.easy_setopt(c, CURLOPT_TIMEOUT, timeout);
	C.easy_setopt(c, CURLOPT_CONNECTTIMEOUT, timeout < 10 ? timeout : 10L);
	C.easy_setopt(c, CURLOPT_USERAGENT, "p11jwt/" P11JWT_VERSION);
	C.easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)s.max);
	C.easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
	C.easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	C.easy_setopt(c, CURLOPT_WRITEDATA, &s);
	C.easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	C.easy_setopt(c, CURLOPT_HEADERDATA, &s);
	C.easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	if (body) {
		C.easy_setopt(c, CURLOPT_POSTFIELDS, body);
		C.easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
	}
	if (method && !(body && strcmp(method, "POST") == 0) &&
	    !(!body && strcmp(method, "GET") == 0))
		C.easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	cc = C.easy_perform(c);
	C.easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
	if (C.easy_getinfo(c, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra >= 0 &&
	    (resp->status == 429 || resp->status == 503))
		resp->retry_after = (long)ra;
	r = map_curl(cc, url, ebuf, &s, timeout);
	if (r == 0 && resp->body == NULL) {
		resp->body = calloc(1, 1);
		if (resp->body == NULL)
			r = err_nomem();
	}
out:
	C.slist_free_all(hl);
	C.easy_cleanup(c);
	if (r < 0) {
		long st = resp->status;

		http_resp_clear(resp);
		resp->status = st;
	}
	return r;
}

long http_retry_delay_ms(int attempt, int r, const http_resp *resp, bool retry_5xx)
{
	bool again;

	if (attempt >= HTTP_MAX_ATTEMPTS)
		return -1;
	if (r == P11J_E_CONNECT || r == P11J_E_TIMEOUT)
		again = true;
	else if (r < 0)
		again = false;
	else
		again = resp->status == 429 || (retry_5xx && resp->status >= 500 &&
						resp->status <= 599);
	if (!again)
		return -1;
	if (r == 0 && resp->retry_after >= 0) {
		if (resp->retry_after > HTTP_MAX_RETRY_AFTER)
			return -1;
		return resp->retry_after * 1000;
	}
	return 500L << (attempt - 1);
}
