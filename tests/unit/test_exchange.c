/* SPDX-License-Identifier: MIT */
/*
 * The token exchange without I/O (cli/exchange.c), the presets
 * (cli/preset.c, checked against ../shared/providers.md), form encoding
 * and templates (cli/form.c), the token cache files (cli/cache.c) and the
 * URL and retry helpers of cli/http.c (no network).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cache.h"
#include "cli/exchange.h"
#include "cli/form.h"
#include "cli/http.h"
#include "cli/preset.h"
#include "common/err.h"
#include "common/util.h"

#define NOW ((int64_t)1700000000)
#define NHS_URL "https://int.api.service.nhs.uk/oauth2/token"
#define OKTA_URL "https://dev-1.okta.com/oauth2/default/v1/token"
#define ENTRA_URL "https://login.microsoftonline.com/tid/oauth2/v2.0/token"
#define AS_URL "https://as.example/token"
#define CA_TYPE "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#define JB_GRANT "urn:ietf:params:oauth:grant-type:jwt-bearer"

/* ---- helpers ------------------------------------------------------------ */

static json_t *J(const char *s)
{
	json_error_t e;
	json_t *v = json_loads(s, JSON_DECODE_ANY, &e);

	if (v == NULL) {
		print_error("bad test JSON '%s': %s\n", s, e.text);
		fail();
	}
	return v;
}

static void assert_json(const json_t *v, const char *expect)
{
	json_t *x = J(expect);

	if (!json_equal(v, x)) {
		char *got = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS)
			      : NULL;

		print_error("got %s, expected %s\n", got ? got : "(null)", expect);
		free(got);
		json_decref(x);
		fail();
	}
	json_decref(x);
}

static void assert_msg_has(const char *needle)
{
	if (strstr(err_msg(), needle) == NULL) {
		print_error("message '%s' lacks '%s'\n", err_msg(), needle);
		fail();
	}
}

/* rows: "name=value", in order; the form must hold exactly these */
static void assert_form(const form *f, const char *const *rows, size_t n)
{
	if (f->n != n) {
		print_error("form has %zu fields, expected %zu:\n", f->n, n);
		for (size_t i = 0; i < f->n; i++)
			print_error("  %s=%s\n", f->v[i].name, f->v[i].value);
		fail();
	}
	for (size_t i = 0; i < n; i++) {
		const char *eq = strchr(rows[i], '=');
		size_t nl = (size_t)(eq - rows[i]);

		if (strlen(f->v[i].name) != nl || strncmp(f->v[i].name, rows[i], nl) != 0 ||
		    strcmp(f->v[i].value, eq + 1) != 0) {
			print_error("field %zu is %s=%s, expected %s\n", i, f->v[i].name,
				    f->v[i].value, rows[i]);
			fail();
		}
	}
}
#define ASSERT_FORM(f, ...)                                                                  \
	do {                                                                                 \
		static const char *const rows_[] = { __VA_ARGS__ };                          \
		assert_form((f), rows_, ARRAY_SIZE(rows_));                                  \
	} while (0)

static void resolve_ok(const json_t *profile, const char *cli, const char *secret, xch_req *req)
{
	json_t *c = J(cli);
	int r = xch_resolve(profile, c, secret, NOW, req);

	json_decref(c);
	if (r != 0) {
		print_error("xch_resolve(%s) = %d: %s\n", cli, r, err_msg());
		fail();
	}
}

static void resolve_err(const json_t *profile, const char *cli, const char *secret, int code,
			const char *needle)
{
	json_t *c = J(cli);
	xch_req req;
	int r = xch_resolve(profile, c, secret, NOW, &req);

	json_decref(c);
	if (r == 0)
		xch_req_clear(&req);
	if (r != code) {
		print_error("xch_resolve(%s) = %d (%s), expected %d\n", cli, r,
			    r ? err_msg() : "ok", code);
		fail();
	}
	assert_msg_has(needle);
	xch_req_clear(&req); /* cleared already on failure: must be harmless */
}

static void assert_no_warnings(const xch_req *req)
{
	if (json_array_size(req->warnings) != 0) {
		char *s = json_dumps(req->warnings, 0);

		print_error("unexpected warnings %s\n", s);
		free(s);
		fail();
	}
}

static void assert_warning_has(const xch_req *req, const char *needle)
{
	size_t i;
	json_t *w;

	json_array_foreach(req->warnings, i, w)
		if (strstr(json_string_value(w), needle))
			return;
	print_error("no warning contains '%s' (%zu warnings)\n", needle,
		    json_array_size(req->warnings));
	fail();
}

/* temp dirs */
static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	return remove(p);
}

static void mk_tmp(char *buf, size_t len)
{
	snprintf(buf, len, "/tmp/p11j-xch-XXXXXX");
	assert_non_null(mkdtemp(buf));
}

static void rm_tmp(const char *dir)
{
	assert_int_equal(nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS), 0);
}

static void write_file(const char *path, const char *content, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
	size_t len = strlen(content);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
	assert_int_equal(chmod(path, mode), 0);
}

static json_t *load_profile_ok(const char *path)
{
	json_t *p = NULL;
	int r = xch_load_profile(path, &p);

	if (r != 0) {
		print_error("xch_load_profile(%s) = %d: %s\n", path, r, err_msg());
		fail();
	}
	return p;
}

/* ---- presets ------------------------------------------------------------ */

static void test_preset_nhs(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"nhs\",\"key\":\"k\",\"client_id\":\"cid\","
		   "\"token_url\":\"" NHS_URL "\"}",
		   NULL, &req);
	assert_non_null(req.preset);
	assert_string_equal(req.preset->name, "nhs");
	assert_true(req.exchange);
	assert_string_equal(req.key, "k");
	assert_string_equal(req.alg, "RS512");
	assert_json(req.header, "{\"typ\":\"JWT\"}");
	/* iss = sub = the API key; aud = the exact token URL */
	assert_json(req.claims, "{\"iss\":\"cid\",\"sub\":\"cid\",\"aud\":\"" NHS_URL "\"}");
	assert_json(req.include, "[]");
	assert_int_equal(req.lifetime, 240);
	assert_true(req.lifetime <= 300);
	assert_int_equal(req.timeout, XCH_DEFAULT_TIMEOUT);
	assert_string_equal(req.assertion_field, "client_assertion");
	assert_null(req.secret_field);
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "client_assertion_type=" CA_TYPE,
		    "client_assertion=");
	assert_no_warnings(&req);
	xch_req_clear(&req);
}

static void test_preset_smart(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"smart\",\"key\":\"k\",\"client_id\":\"cid\","
		   "\"token_url\":\"https://ehr.example/auth/token\",\"scope\":\"system/*.rs\"}",
		   NULL, &req);
	assert_string_equal(req.alg, "RS384");
	assert_json(req.header, "{\"typ\":\"JWT\"}");
	assert_json(req.claims, "{\"iss\":\"cid\",\"sub\":\"cid\","
				"\"aud\":\"https://ehr.example/auth/token\"}");
	assert_int_equal(req.lifetime, 240);
	assert_string_equal(req.scope, "system/*.rs");
	assert_string_equal(req.assertion_field, "client_assertion");
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "scope=system/*.rs",
		    "client_assertion_type=" CA_TYPE, "client_assertion=");
	assert_no_warnings(&req);
	xch_req_clear(&req);

	/* ES384 is one of the two algs SMART clients support: no warning */
	resolve_ok(NULL,
		   "{\"preset\":\"smart\",\"key\":\"k\",\"client_id\":\"cid\",\"alg\":\"ES384\","
		   "\"token_url\":\"https://ehr.example/auth/token\"}",
		   NULL, &req);
	assert_string_equal(req.alg, "ES384");
	assert_no_warnings(&req);
	xch_req_clear(&req);
}

static void test_preset_entra(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"entra\",\"key\":\"k\",\"client_id\":\"app-id\","
		   "\"token_url\":\"" ENTRA_URL "\"}",
		   NULL, &req);
	assert_string_equal(req.alg, "PS256");
	assert_json(req.header, "{\"typ\":\"JWT\"}");
	assert_json(req.claims, "{\"iss\":\"app-id\",\"sub\":\"app-id\",\"aud\":\"" ENTRA_URL
				"\",\"nbf\":1700000000}");
	assert_json(req.include, "[\"x5t#S256\"]");
	assert_int_equal(req.lifetime, 300);
	assert_true(req.exchange);
	assert_string_equal(req.scope, "https://graph.microsoft.com/.default");
	assert_string_equal(req.assertion_field, "client_assertion");
	ASSERT_FORM(&req.form, "client_id=app-id", "scope=https://graph.microsoft.com/.default",
		    "client_assertion_type=" CA_TYPE, "client_assertion=",
		    "grant_type=client_credentials");
	assert_no_warnings(&req);
	xch_req_clear(&req);

	/* more to include: the preset's x5t#S256 is not repeated */
	resolve_ok(NULL,
		   "{\"preset\":\"entra\",\"key\":\"k\",\"client_id\":\"app-id\","
		   "\"token_url\":\"" ENTRA_URL "\",\"include\":[\"x5t#S256\",\"x5c\"]}",
		   NULL, &req);
	assert_json(req.include, "[\"x5t#S256\",\"x5c\"]");
	xch_req_clear(&req);

	/* RS256 is accepted (older docs); another scope replaces the default */
	resolve_ok(NULL,
		   "{\"preset\":\"entra\",\"key\":\"k\",\"client_id\":\"app-id\",\"alg\":\"RS256\","
		   "\"token_url\":\"" ENTRA_URL "\",\"scope\":\"api://x/.default\"}",
		   NULL, &req);
	assert_no_warnings(&req);
	assert_string_equal(form_get(&req.form, "scope"), "api://x/.default");
	xch_req_clear(&req);
}

static void test_preset_okta(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"okta\",\"key\":\"k\",\"client_id\":\"0oa1\","
		   "\"token_url\":\"" OKTA_URL "\",\"scope\":\"api:read\"}",
		   NULL, &req);
	assert_string_equal(req.alg, "RS256");
	assert_json(req.header, "{}");
	assert_json(req.claims, "{\"iss\":\"0oa1\",\"sub\":\"0oa1\",\"aud\":\"" OKTA_URL "\"}");
	assert_json(req.include, "[]");
	assert_int_equal(req.lifetime, 300);
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "scope=api:read",
		    "client_assertion_type=" CA_TYPE, "client_assertion=");
	assert_no_warnings(&req);
	xch_req_clear(&req);
}

static void test_preset_docusign(void **state)
{
	xch_req req;

	(void)state;
	/* default token URL (demo environment), user in sub */
	resolve_ok(NULL,
		   "{\"preset\":\"docusign\",\"key\":\"k\",\"client_id\":\"ik\","
		   "\"sub\":\"user-guid\"}",
		   NULL, &req);
	assert_string_equal(req.token_url, "https://account-d.docusign.com/oauth/token");
	assert_string_equal(req.alg, "RS256");
	assert_json(req.header, "{}");
	/* aud is the bare host, no scheme */
	assert_string_equal(req.aud, "account-d.docusign.com");
	assert_json(req.claims, "{\"iss\":\"ik\",\"sub\":\"user-guid\","
				"\"aud\":\"account-d.docusign.com\","
				"\"scope\":\"signature impersonation\"}");
	assert_int_equal(req.lifetime, 600);
	assert_true(req.lifetime <= 3600);
	assert_string_equal(req.assertion_field, "assertion");
	ASSERT_FORM(&req.form, "grant_type=" JB_GRANT, "assertion=");
	assert_no_warnings(&req);
	xch_req_clear(&req);

	/* production host; no sub (application token) is allowed */
	resolve_ok(NULL,
		   "{\"preset\":\"docusign\",\"key\":\"k\",\"client_id\":\"ik\","
		   "\"token_url\":\"https://account.docusign.com/oauth/token\"}",
		   NULL, &req);
	assert_json(req.claims, "{\"iss\":\"ik\",\"aud\":\"account.docusign.com\","
				"\"scope\":\"signature impersonation\"}");
	xch_req_clear(&req);
}

/* Adobe: iss is the org, sub the technical account (both given here) */
static void test_preset_adobe(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"adobe\",\"key\":\"k\",\"client_id\":\"cid\","
		   "\"iss\":\"ORG@AdobeOrg\",\"sub\":\"TA@techacct.adobe.com\","
		   "\"scope\":\"ent_x\"}",
		   "s3cret", &req);
	assert_string_equal(req.token_url, "https://ims-na1.adobelogin.com/ims/exchange/jwt");
	assert_string_equal(req.alg, "RS256");
	assert_string_equal(req.aud, "https://ims-na1.adobelogin.com/c/cid");
	assert_json(req.claims, "{\"iss\":\"ORG@AdobeOrg\",\"sub\":\"TA@techacct.adobe.com\","
				"\"aud\":\"https://ims-na1.adobelogin.com/c/cid\","
				"\"https://ims-na1.adobelogin.com/s/ent_x\":true}");
	assert_int_equal(req.lifetime, 600);
	assert_true(req.exchange);
	assert_string_equal(req.assertion_field, "jwt_token");
	assert_non_null(req.secret_field);
	assert_string_equal(req.secret_field, "client_secret");
	ASSERT_FORM(&req.form, "client_id=cid", "client_secret=s3cret", "jwt_token=");
	assert_no_warnings(&req);
	xch_req_clear(&req);

	/* several metascopes: one claim each */
	resolve_ok(NULL,
		   "{\"preset\":\"adobe\",\"key\":\"k\",\"client_id\":\"cid\","
		   "\"iss\":\"ORG@AdobeOrg\",\"sub\":\"TA@techacct.adobe.com\","
		   "\"scope\":\"ent_a ent_b\"}",
		   "s3cret", &req);
	assert_json(json_object_get(req.claims, "https://ims-na1.adobelogin.com/s/ent_a"), "true");
	assert_json(json_object_get(req.claims, "https://ims-na1.adobelogin.com/s/ent_b"), "true");
	assert_null(json_object_get(req.claims, "scope"));
	xch_req_clear(&req);

	/* the secret is part of Adobe's form */
	resolve_err(NULL,
		    "{\"preset\":\"adobe\",\"key\":\"k\",\"client_id\":\"cid\","
		    "\"iss\":\"ORG@AdobeOrg\",\"sub\":\"TA@techacct.adobe.com\"}",
		    NULL, P11J_E_BAD_REQUEST, "--client-secret-file");
}

/* Regression: the adobe preset has no iss template (p->iss == NULL); when
 * this suite was written xch_resolve() called expand_req("iss", NULL, ...)
 * -> form_tmpl_expand(NULL) -> strchr(NULL, '$') and died with SIGSEGV without
 * --iss (since fixed in the tree: "--iss is required"). Run in a child so
 * that a crash is reported, not fatal to the suite. */
static void test_preset_adobe_without_iss(void **state)
{
	pid_t pid;
	int status = 0;

	(void)state;
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		json_t *c = J("{\"preset\":\"adobe\",\"key\":\"k\",\"client_id\":\"cid\","
			      "\"sub\":\"TA@techacct.adobe.com\"}");
		xch_req req;
		int r = xch_resolve(NULL, c, "s3cret", NOW, &req), rc;

		json_decref(c);
		rc = r == 0 ? 10 /* resolved without an iss: wrong too */
		     : r == P11J_E_BAD_REQUEST && strstr(err_msg(), "--iss") ? 0 : 11;
		if (r == 0)
			xch_req_clear(&req);
		_exit(rc);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (WIFSIGNALED(status))
		print_error("xch_resolve(adobe without --iss) died with signal %d\n",
			    WTERMSIG(status));
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);

	/* sub is the technical account: required too */
	resolve_err(NULL,
		    "{\"preset\":\"adobe\",\"key\":\"k\",\"client_id\":\"cid\","
		    "\"iss\":\"ORG@AdobeOrg\"}",
		    "s3cret", P11J_E_BAD_REQUEST, "--sub is required");
}

static void test_preset_google(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"google\",\"key\":\"k\","
		   "\"client_id\":\"sa@proj.iam.gserviceaccount.com\","
		   "\"scope\":\"https://www.googleapis.com/auth/cloud-platform\"}",
		   NULL, &req);
	assert_string_equal(req.token_url, "https://oauth2.googleapis.com/token");
	assert_string_equal(req.alg, "RS256");
	assert_json(req.header, "{\"typ\":\"JWT\"}");
	/* sub only for domain-wide delegation */
	assert_json(req.claims, "{\"iss\":\"sa@proj.iam.gserviceaccount.com\","
				"\"aud\":\"https://oauth2.googleapis.com/token\","
				"\"scope\":\"https://www.googleapis.com/auth/cloud-platform\"}");
	assert_int_equal(req.lifetime, 600);
	assert_string_equal(req.assertion_field, "assertion");
	ASSERT_FORM(&req.form, "grant_type=" JB_GRANT, "assertion=");
	assert_no_warnings(&req);
	xch_req_clear(&req);
}

static void test_preset_salesforce(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"salesforce\",\"key\":\"k\",\"client_id\":\"ck\","
		   "\"sub\":\"user@example.com\"}",
		   NULL, &req);
	assert_string_equal(req.token_url, "https://login.salesforce.com/services/oauth2/token");
	assert_string_equal(req.alg, "RS256");
	assert_json(req.header, "{}");
	assert_json(req.claims, "{\"iss\":\"ck\",\"sub\":\"user@example.com\","
				"\"aud\":\"https://login.salesforce.com\"}");
	assert_int_equal(req.lifetime, 170);
	assert_true(req.lifetime <= 180);
	assert_string_equal(req.assertion_field, "assertion");
	ASSERT_FORM(&req.form, "grant_type=" JB_GRANT, "assertion=");
	assert_no_warnings(&req);
	xch_req_clear(&req);

	/* sandbox: the origin of the test token URL */
	resolve_ok(NULL,
		   "{\"preset\":\"salesforce\",\"key\":\"k\",\"client_id\":\"ck\","
		   "\"sub\":\"u\",\"token_url\":\"https://test.salesforce.com/services/oauth2/token\"}",
		   NULL, &req);
	assert_string_equal(req.aud, "https://test.salesforce.com");
	xch_req_clear(&req);

	resolve_err(NULL, "{\"preset\":\"salesforce\",\"key\":\"k\",\"client_id\":\"ck\"}", NULL,
		    P11J_E_BAD_REQUEST, "--sub is required");
}

static void test_preset_oracle(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL, "{\"preset\":\"oracle\",\"key\":\"k\",\"sub\":\"jdoe\"}", NULL, &req);
	assert_false(req.exchange);
	assert_null(req.token_url);
	assert_string_equal(req.alg, "RS256");
	assert_json(req.header, "{\"typ\":\"JWT\"}");
	assert_json(req.claims, "{\"iss\":\"www.oracle.com\",\"sub\":\"jdoe\",\"prn\":\"jdoe\"}");
	assert_json(req.include, "[\"x5t\"]");
	assert_int_equal(req.lifetime, 300);
	assert_int_equal(req.form.n, 0);
	assert_null(req.assertion_field);
	assert_no_warnings(&req);
	xch_req_clear(&req);

	/* aud only when given; kid e.g. trustservice */
	resolve_ok(NULL,
		   "{\"preset\":\"oracle\",\"key\":\"k\",\"sub\":\"jdoe\",\"aud\":\"fusion\","
		   "\"header\":{\"kid\":\"trustservice\"}}",
		   NULL, &req);
	assert_json(req.claims, "{\"iss\":\"www.oracle.com\",\"sub\":\"jdoe\",\"prn\":\"jdoe\","
				"\"aud\":\"fusion\"}");
	assert_json(req.header, "{\"typ\":\"JWT\",\"kid\":\"trustservice\"}");
	xch_req_clear(&req);

	resolve_err(NULL, "{\"preset\":\"oracle\",\"key\":\"k\"}", NULL, P11J_E_BAD_REQUEST,
		    "--sub is required");
}

static void test_preset_client_assertion(void **state)
{
	xch_req req;

	(void)state;
	/* the default preset */
	resolve_ok(NULL, "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\"}", NULL,
		   &req);
	assert_string_equal(req.preset->name, "client-assertion");
	assert_null(req.alg); /* the key's own */
	assert_json(req.header, "{}");
	assert_json(req.claims, "{\"iss\":\"c\",\"sub\":\"c\",\"aud\":\"" AS_URL "\"}");
	assert_int_equal(req.lifetime, 300);
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "client_assertion_type=" CA_TYPE,
		    "client_assertion=");
	assert_no_warnings(&req);
	xch_req_clear(&req);

	resolve_ok(NULL,
		   "{\"preset\":\"client-assertion\",\"key\":\"k\",\"client_id\":\"c\","
		   "\"token_url\":\"" AS_URL "\",\"scope\":\"a b\"}",
		   NULL, &req);
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "scope=a b",
		    "client_assertion_type=" CA_TYPE, "client_assertion=");
	assert_null(json_object_get(req.claims, "scope"));
	xch_req_clear(&req);
}

static void test_preset_jwt_bearer(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"jwt-bearer\",\"key\":\"k\",\"client_id\":\"c\",\"sub\":\"alice\","
		   "\"token_url\":\"" AS_URL "\",\"scope\":\"read\"}",
		   NULL, &req);
	assert_null(req.alg);
	assert_json(req.claims, "{\"iss\":\"c\",\"sub\":\"alice\",\"aud\":\"" AS_URL "\"}");
	assert_int_equal(req.lifetime, 300);
	assert_string_equal(req.assertion_field, "assertion");
	ASSERT_FORM(&req.form, "grant_type=" JB_GRANT, "assertion=", "scope=read");
	assert_no_warnings(&req);
	xch_req_clear(&req);

	/* --grant jwt-bearer alone picks the jwt-bearer preset */
	resolve_ok(NULL,
		   "{\"grant\":\"jwt-bearer\",\"key\":\"k\",\"client_id\":\"c\",\"sub\":\"alice\","
		   "\"token_url\":\"" AS_URL "\"}",
		   NULL, &req);
	assert_string_equal(req.preset->name, "jwt-bearer");
	ASSERT_FORM(&req.form, "grant_type=" JB_GRANT, "assertion=");
	xch_req_clear(&req);

	resolve_err(NULL,
		    "{\"preset\":\"jwt-bearer\",\"key\":\"k\",\"client_id\":\"c\","
		    "\"token_url\":\"" AS_URL "\"}",
		    NULL, P11J_E_BAD_REQUEST, "--sub is required");
}

/* every preset of the table can be found; the listing matches the error text */
static void test_preset_table(void **state)
{
	static const char *const names[] = { "nhs",    "smart",      "entra",  "okta",
					     "docusign", "adobe",    "google", "salesforce",
					     "oracle", "client-assertion", "jwt-bearer" };
	size_t n = 0;
	const preset *all = preset_all(&n);

	(void)state;
	assert_int_equal(n, ARRAY_SIZE(names));
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		const preset *p = preset_find(names[i]);

		assert_non_null(p);
		assert_string_equal(p->name, names[i]);
		assert_ptr_equal(p, &all[i]);
		/* a default lifetime within the provider's limit */
		assert_true(p->lifetime > 0);
		if (p->max_lifetime)
			assert_true(p->lifetime <= p->max_lifetime);
	}
	assert_null(preset_find("NHS"));
	assert_null(preset_find(""));
}

/* ---- the alg for the key (issue 16) ------------------------------------ */

/* The agent's "keys" answer for the five keys of the test token
 * (softhsm-conf/mktoken), as agent/keyring.c builds it: algs is what the
 * key can sign (and its policy allows). */
#define TOKEN_KEYS                                                                           \
	"[{\"name\":\"ec-p256\",\"alg\":\"ES256\",\"algs\":[\"ES256\"],\"kty\":\"EC\","     \
	"\"crv\":\"P-256\"},"                                                               \
	"{\"name\":\"ec-p384\",\"alg\":\"ES384\",\"algs\":[\"ES384\"],\"kty\":\"EC\","      \
	"\"crv\":\"P-384\"},"                                                               \
	"{\"name\":\"ec-p521\",\"alg\":\"ES512\",\"algs\":[\"ES512\"],\"kty\":\"EC\","      \
	"\"crv\":\"P-521\"},"                                                               \
	"{\"name\":\"ed25519\",\"alg\":\"EdDSA\",\"algs\":[\"EdDSA\"],\"kty\":\"OKP\","     \
	"\"crv\":\"Ed25519\"},"                                                             \
	"{\"name\":\"rsa-2048\",\"alg\":\"RS256\",\"algs\":[\"RS256\",\"RS384\",\"RS512\","  \
	"\"PS256\",\"PS384\",\"PS512\"],\"kty\":\"RSA\",\"bits\":2048}]"

static const char *const token_keys[] = { "rsa-2048", "ec-p256", "ec-p384", "ec-p521",
					   "ed25519" };
static const char *const token_key_types[] = { "RSA 2048", "P-256", "P-384", "P-521",
						"Ed25519" };

/* For every preset, the alg each key of the test token signs with when no
 * --alg is given (same order as token_keys); NULL: the preset refuses the
 * key before anything is signed; "key": the key's own default (the preset
 * names no algs). The first of each row is today's RSA default. */
static const struct {
	const char *preset, *algs_text, *alg[5];
} alg_table[] = {
	{ "nhs", "RS512 only", { "RS512", NULL, NULL, NULL, NULL } },
	{ "smart", "RS384, ES384", { "RS384", NULL, "ES384", NULL, NULL } },
	{ "entra", "PS256, RS256", { "PS256", NULL, NULL, NULL, NULL } },
	{ "okta", "RS256, RS384, RS512, ES256, ES384, ES512",
	  { "RS256", "ES256", "ES384", "ES512", NULL } },
	{ "docusign", "RS256 only", { "RS256", NULL, NULL, NULL, NULL } },
	{ "adobe", "RS256 only", { "RS256", NULL, NULL, NULL, NULL } },
	{ "google", "RS256 only", { "RS256", NULL, NULL, NULL, NULL } },
	{ "salesforce", "RS256 only", { "RS256", NULL, NULL, NULL, NULL } },
	{ "oracle", "RS256 only", { "RS256", NULL, NULL, NULL, NULL } },
	{ "client-assertion", NULL, { "key", "key", "key", "key", "key" } },
	{ "jwt-bearer", NULL, { "key", "key", "key", "key", "key" } },
};

/* every preset's required options, so that only the alg varies */
static void resolve_for_key(const char *pname, const char *key, const char *extra, xch_req *req)
{
	char cli[512];

	snprintf(cli, sizeof(cli),
		 "{\"preset\":\"%s\",\"key\":\"%s\",\"client_id\":\"cid\",\"sub\":\"user\","
		 "\"iss\":\"org@AdobeOrg\",\"token_url\":\"" AS_URL "\"%s%s}",
		 pname, key, extra ? "," : "", extra ? extra : "");
	resolve_ok(NULL, cli, "secret", req);
}

static void test_alg_for_every_preset_and_key(void **state)
{
	json_t *keys = J(TOKEN_KEYS);
	size_t n = 0;

	(void)state;
	preset_all(&n);
	assert_int_equal(n, ARRAY_SIZE(alg_table)); /* a new preset needs a row */
	for (size_t i = 0; i < ARRAY_SIZE(alg_table); i++) {
		for (size_t k = 0; k < ARRAY_SIZE(token_keys); k++) {
			const char *want = alg_table[i].alg[k];
			xch_req req;
			int r;

			resolve_for_key(alg_table[i].preset, token_keys[k], NULL, &req);
			/* before the key is known: the RSA default, as before issue 16 */
			if (alg_table[i].algs_text)
				assert_string_equal(req.alg, alg_table[i].alg[0]);
			assert_int_equal(xch_alg_needs_key(&req), alg_table[i].algs_text != NULL);
			r = xch_choose_alg(&req, keys);
			if (want == NULL) {
				if (r != P11J_E_UNSUPPORTED_ALG) {
					print_error("%s with %s: %d, expected unsupported_alg\n",
						    alg_table[i].preset, token_keys[k], r);
					fail();
				}
				/* names the preset, its algs, the key and its type */
				char expect[256];

				snprintf(expect, sizeof(expect), "preset '%s' accepts %s; key '%s' is %s",
					 alg_table[i].preset, alg_table[i].algs_text, token_keys[k],
					 token_key_types[k]);
				assert_msg_has(expect);
			} else if (strcmp(want, "key") == 0) {
				assert_int_equal(r, 0);
				assert_null(req.alg); /* the agent signs with the key's default */
				assert_non_null(strstr(req.alg_reason, "the key's default alg"));
			} else {
				if (r != 0) {
					print_error("%s with %s: %s\n", alg_table[i].preset,
						    token_keys[k], err_msg());
					fail();
				}
				if (strcmp(req.alg, want) != 0) {
					print_error("%s with %s: %s, expected %s\n", alg_table[i].preset,
						    token_keys[k], req.alg, want);
					fail();
				}
				/* the reason starts with the alg and names the key */
				assert_true(strncmp(req.alg_reason, want, strlen(want)) == 0);
				assert_non_null(strstr(req.alg_reason, token_keys[k]));
				assert_no_warnings(&req);
			}
			xch_req_clear(&req);
		}
	}
	json_decref(keys);
}

static void test_alg_reasons_and_sign_request(void **state)
{
	json_t *keys = J(TOKEN_KEYS), *sr = NULL;
	xch_req req;

	(void)state;
	resolve_for_key("smart", "ec-p384", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), 0);
	assert_string_equal(req.alg_reason,
			    "ES384: first of smart's RS384, ES384 that key 'ec-p384' signs");
	/* the sign request and the cache key carry the chosen alg */
	assert_int_equal(xch_sign_request(&req, &sr), 0);
	assert_string_equal(json_string_value(json_object_get(sr, "alg")), "ES384");
	json_decref(sr);
	xch_req_clear(&req);

	resolve_for_key("nhs", "rsa-2048", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), 0);
	assert_string_equal(req.alg_reason, "RS512: nhs's only alg, which key 'rsa-2048' signs");
	xch_req_clear(&req);

	/* the cache key holds the alg asked for, so it is the same before and
	 * after the choice (a cache hit needs no agent), and for an RSA key the
	 * same as with the list's first given as --alg (as before issue 16) */
	{
		char k0[65], k1[65], k2[65];

		resolve_for_key("smart", "ec-p384", NULL, &req);
		assert_int_equal(xch_cache_key(&req, k0), 0);
		assert_int_equal(xch_choose_alg(&req, keys), 0);
		assert_false(xch_alg_needs_key(&req)); /* chosen once */
		assert_string_equal(req.alg, "ES384");
		assert_int_equal(xch_cache_key(&req, k1), 0);
		assert_string_equal(k0, k1);
		xch_req_clear(&req);
		resolve_for_key("smart", "ec-p384", "\"alg\":\"RS384\"", &req);
		assert_int_equal(xch_cache_key(&req, k2), 0);
		assert_string_equal(k0, k2);
		xch_req_clear(&req);
		resolve_for_key("smart", "ec-p384", "\"alg\":\"ES384\"", &req);
		assert_int_equal(xch_cache_key(&req, k2), 0);
		assert_string_not_equal(k0, k2);
		xch_req_clear(&req);
	}

	/* the whole message, as the issue asks for it */
	resolve_for_key("nhs", "ec-p256", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), P11J_E_UNSUPPORTED_ALG);
	assert_msg_has("preset 'nhs' accepts RS512 only; key 'ec-p256' is P-256 (it signs ES256)");
	assert_msg_has("--alg");
	assert_string_equal(err_code_name(P11J_E_UNSUPPORTED_ALG), "unsupported_alg");
	xch_req_clear(&req);

	/* --alg: used as given, even outside the list (with the warning), and
	 * the key is not asked about */
	resolve_for_key("smart", "ec-p256", "\"alg\":\"ES256\"", &req);
	assert_false(xch_alg_needs_key(&req));
	assert_int_equal(xch_choose_alg(&req, keys), 0);
	assert_string_equal(req.alg, "ES256");
	assert_string_equal(req.alg_reason, "ES256: given with --alg");
	assert_warning_has(&req, "RS384 ES384");
	xch_req_clear(&req);

	/* the agent does not list the key (unknown, or another user's): the
	 * provisional first alg stays, the sign request's answer says why */
	resolve_for_key("okta", "nonesuch", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), 0);
	assert_string_equal(req.alg, "RS256");
	assert_non_null(strstr(req.alg_reason, "not matched to the key yet"));
	xch_req_clear(&req);
	json_decref(keys);

	/* a key entry without algs (an older agent): the same */
	keys = J("[{\"name\":\"k\",\"alg\":\"ES256\",\"kty\":\"EC\",\"crv\":\"P-256\"}]");
	resolve_for_key("smart", "k", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), 0);
	assert_string_equal(req.alg, "RS384");
	xch_req_clear(&req);
	json_decref(keys);

	/* a policy that allows the RSA key only PS256: okta, which takes no
	 * PS*, refuses it and says what the key may sign; entra takes it */
	keys = J("[{\"name\":\"rsa-2048\",\"alg\":\"PS256\",\"algs\":[\"PS256\"],\"kty\":\"RSA\","
		 "\"bits\":2048}]");
	resolve_for_key("okta", "rsa-2048", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), P11J_E_UNSUPPORTED_ALG);
	assert_msg_has("key 'rsa-2048' is RSA 2048 (it signs PS256)");
	xch_req_clear(&req);
	resolve_for_key("entra", "rsa-2048", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), 0);
	assert_string_equal(req.alg, "PS256");
	xch_req_clear(&req);
	/* smart: RS384 is not allowed, and the key signs no ES384 */
	resolve_for_key("smart", "rsa-2048", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), P11J_E_UNSUPPORTED_ALG);
	xch_req_clear(&req);
	json_decref(keys);
}

/* docs/providers/README.md's Algorithms table says what the code does: one
 * row per preset, its list, and the alg (or "—") for each test-token key. */
static void test_alg_table_in_docs(void **state)
{
	const char *src = getenv("P11JWT_SRCDIR");
	json_t *keys = J(TOKEN_KEYS);
	char path[PATH_MAX], line[512];
	size_t n = 0, rows = 0;
	const preset *all = preset_all(&n);
	bool in_section = false;
	FILE *f;

	(void)state;
	snprintf(path, sizeof(path), "%s/docs/providers/README.md", src ? src : "..");
	f = fopen(path, "r");
	if (f == NULL) {
		print_error("cannot open %s\n", path);
		fail();
	}
	while (fgets(line, sizeof(line), f)) {
		char *cell[8], *save = NULL, *c;
		size_t nc = 0;
		const preset *p = NULL;

		if (strncmp(line, "## ", 3) == 0)
			in_section = strncmp(line, "## Algorithms", 13) == 0;
		if (!in_section || strncmp(line, "| `", 3) != 0)
			continue;
		for (c = strtok_r(line + 1, "|\n", &save); c && nc < 8; c = strtok_r(NULL, "|\n", &save)) {
			while (*c == ' ' || *c == '`')
				c++;
			for (char *e = c + strlen(c); e > c && (e[-1] == ' ' || e[-1] == '`'); e--)
				e[-1] = '\0';
			cell[nc++] = c;
		}
		assert_int_equal(nc, 7);
		for (size_t i = 0; i < n; i++)
			if (strcmp(all[i].name, cell[0]) == 0)
				p = &all[i];
		if (p == NULL) {
			print_error("README.md names an unknown preset '%s'\n", cell[0]);
			fail();
		}
		rows++;
		if (p->algs) {
			char lt[160], *w = lt;

			/* "RS384, ES384" in the docs, "RS384 ES384" in the preset */
			snprintf(lt, sizeof(lt), "%s", cell[1]);
			for (char *r = lt; *r; r++)
				if (!(r[0] == ',' && r[1] == ' '))
					*w++ = *r;
			*w = '\0';
			assert_string_equal(lt, p->algs);
		} else {
			assert_string_equal(cell[1], "any");
		}
		for (size_t k = 0; k < ARRAY_SIZE(token_keys); k++) {
			xch_req req;
			const char *got;
			int r;

			resolve_for_key(p->name, token_keys[k], NULL, &req);
			r = xch_choose_alg(&req, keys);
			got = r < 0 ? "—" : req.alg;
			for (size_t j = 0; got == NULL && j < json_array_size(keys); j++) {
				const json_t *e = json_array_get(keys, j); /* the key's default */

				if (strcmp(json_string_value(json_object_get(e, "name")),
					   token_keys[k]) == 0)
					got = json_string_value(json_object_get(e, "alg"));
			}
			if (strcmp(got, cell[2 + k]) != 0) {
				print_error("README.md: %s with %s says %s, the code %s\n", p->name,
					    token_keys[k], cell[2 + k], got);
				fail();
			}
			xch_req_clear(&req);
		}
	}
	fclose(f);
	assert_int_equal(rows, n);
	json_decref(keys);
}

/* a profile's algs replace the preset's list, by the same rule */
static void test_alg_profile_algs(void **state)
{
	json_t *keys = J(TOKEN_KEYS), *prof;
	xch_req req;

	(void)state;
	prof = J("{\"preset\":\"okta\",\"key\":\"ec-p384\",\"client_id\":\"c\","
		 "\"token_url\":\"" OKTA_URL "\",\"algs\":[\"ES256\",\"RS256\"]}");
	resolve_ok(prof, "{}", NULL, &req);
	assert_true(req.algs_profile);
	assert_string_equal(req.algs, "ES256 RS256");
	assert_string_equal(req.alg, "ES256"); /* provisional: the first */
	assert_int_equal(xch_choose_alg(&req, keys), P11J_E_UNSUPPORTED_ALG);
	assert_msg_has("the profile accepts ES256, RS256; key 'ec-p384' is P-384");
	xch_req_clear(&req);

	resolve_ok(prof, "{\"key\":\"rsa-2048\"}", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), 0);
	assert_string_equal(req.alg, "RS256");
	assert_string_equal(req.alg_reason, "RS256: first of the profile's algs ES256, RS256 that "
					    "key 'rsa-2048' signs");
	xch_req_clear(&req);

	resolve_ok(prof, "{\"key\":\"ec-p256\"}", NULL, &req);
	assert_int_equal(xch_choose_alg(&req, keys), 0);
	assert_string_equal(req.alg, "ES256");
	xch_req_clear(&req);

	/* --alg outside the profile's list: used, with a warning naming it */
	resolve_ok(prof, "{\"alg\":\"ES384\"}", NULL, &req);
	assert_false(xch_alg_needs_key(&req));
	assert_string_equal(req.alg, "ES384");
	assert_warning_has(&req, "the profile's algs are ES256 RS256");
	xch_req_clear(&req);
	json_decref(prof);

	/* the profile's alg is given, and wins over its algs */
	prof = J("{\"preset\":\"smart\",\"key\":\"ec-p384\",\"client_id\":\"c\","
		 "\"token_url\":\"" AS_URL "\",\"alg\":\"RS384\",\"algs\":[\"ES384\"]}");
	resolve_ok(prof, "{}", NULL, &req);
	assert_false(xch_alg_needs_key(&req));
	assert_string_equal(req.alg, "RS384");
	assert_string_equal(req.alg_reason, "RS384: the profile's alg");
	assert_warning_has(&req, "RS384 will likely be rejected");
	xch_req_clear(&req);
	json_decref(prof);

	/* a list on a preset that has none (client-assertion) */
	prof = J("{\"key\":\"ed25519\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\","
		 "\"algs\":[\"EdDSA\",\"ES256\"]}");
	resolve_ok(prof, "{}", NULL, &req);
	assert_true(xch_alg_needs_key(&req));
	assert_int_equal(xch_choose_alg(&req, keys), 0);
	assert_string_equal(req.alg, "EdDSA");
	xch_req_clear(&req);
	json_decref(prof);

	/* what algs may hold */
	prof = J("{\"algs\":[]}");
	assert_int_equal(xch_check_options(prof, "p.json"), P11J_E_BAD_REQUEST);
	assert_msg_has("'algs' must name at least one alg");
	json_decref(prof);
	prof = J("{\"algs\":[\"RS256\",\"HS256\"]}");
	assert_int_equal(xch_check_options(prof, "p.json"), P11J_E_BAD_REQUEST);
	assert_msg_has("element 1 is not one");
	json_decref(prof);
	prof = J("{\"algs\":[\"RS256\",7]}");
	assert_int_equal(xch_check_options(prof, "p.json"), P11J_E_BAD_REQUEST);
	json_decref(prof);
	prof = J("{\"algs\":\"RS256 ES256\"}");
	assert_int_equal(xch_check_options(prof, "p.json"), P11J_E_BAD_REQUEST);
	assert_msg_has("'algs' must be an array");
	json_decref(prof);
	prof = J("{\"algs\":[\"PS512\",\"EdDSA\",\"ES512\"]}");
	assert_int_equal(xch_check_options(prof, "p.json"), 0);
	json_decref(prof);
	json_decref(keys);
}

/* xch_pick_alg() on its own, as `p11jwt jwks --preset` uses it */
static void test_pick_alg(void **state)
{
	json_t *keys = J(TOKEN_KEYS);
	char *alg = NULL, *why = NULL;

	(void)state;
	assert_int_equal(xch_pick_alg("RS256 RS384 RS512 ES256 ES384 ES512", "preset 'okta'",
				      "okta's", "ec-p521", keys, &alg, &why),
			 0);
	assert_string_equal(alg, "ES512");
	assert_string_equal(why, "ES512: first of okta's RS256, RS384, RS512, ES256, ES384, ES512 "
				 "that key 'ec-p521' signs");
	free(alg);
	free(why);
	assert_int_equal(xch_pick_alg("PS256 RS256", "preset 'entra'", "entra's", "ed25519", keys,
				      &alg, &why),
			 P11J_E_UNSUPPORTED_ALG);
	assert_null(alg);
	assert_null(why);
	assert_msg_has("key 'ed25519' is Ed25519 (it signs EdDSA)");
	assert_int_equal(xch_pick_alg("RS256", "preset 'google'", "google's", "missing", keys, &alg,
				      &why),
			 0);
	assert_null(alg);
	assert_null(why);
	json_decref(keys);
}

static void test_sign_request(void **state)
{
	xch_req req;
	json_t *sr = NULL;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"entra\",\"key\":\"k\",\"client_id\":\"a\","
		   "\"token_url\":\"" ENTRA_URL "\"}",
		   NULL, &req);
	assert_int_equal(xch_sign_request(&req, &sr), 0);
	assert_json(sr, "{\"op\":\"sign\",\"key\":\"k\",\"alg\":\"PS256\",\"lifetime\":300,"
			"\"header\":{\"typ\":\"JWT\"},\"include\":[\"x5t#S256\"],"
			"\"claims\":{\"iss\":\"a\",\"sub\":\"a\",\"aud\":\"" ENTRA_URL "\","
			"\"nbf\":1700000000}}");
	json_decref(sr);
	xch_req_clear(&req);

	/* no alg (the key's own), no header, no include */
	resolve_ok(NULL, "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\"}", NULL,
		   &req);
	assert_int_equal(xch_sign_request(&req, &sr), 0);
	assert_json(sr, "{\"op\":\"sign\",\"key\":\"k\",\"lifetime\":300,"
			"\"claims\":{\"iss\":\"c\",\"sub\":\"c\",\"aud\":\"" AS_URL "\"}}");
	json_decref(sr);
	xch_req_clear(&req);
}

/* ---- warnings ----------------------------------------------------------- */

static void test_warnings(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"preset\":\"nhs\",\"key\":\"k\",\"client_id\":\"cid\",\"alg\":\"RS256\","
		   "\"token_url\":\"" NHS_URL "\"}",
		   NULL, &req);
	assert_string_equal(req.alg, "RS256");
	assert_int_equal(json_array_size(req.warnings), 1);
	assert_warning_has(&req, "RS512");
	assert_warning_has(&req, "RS256");
	assert_warning_has(&req, "nhs");
	xch_req_clear(&req);

	resolve_ok(NULL,
		   "{\"preset\":\"nhs\",\"key\":\"k\",\"client_id\":\"cid\",\"lifetime\":600,"
		   "\"token_url\":\"" NHS_URL "\"}",
		   NULL, &req);
	assert_int_equal(req.lifetime, 600);
	assert_int_equal(json_array_size(req.warnings), 1);
	assert_warning_has(&req, "600");
	assert_warning_has(&req, "300");
	xch_req_clear(&req);

	/* exactly the limit: fine */
	resolve_ok(NULL,
		   "{\"preset\":\"nhs\",\"key\":\"k\",\"client_id\":\"cid\",\"lifetime\":300,"
		   "\"token_url\":\"" NHS_URL "\"}",
		   NULL, &req);
	assert_no_warnings(&req);
	xch_req_clear(&req);

	resolve_ok(NULL,
		   "{\"preset\":\"okta\",\"key\":\"k\",\"client_id\":\"c\","
		   "\"token_url\":\"" OKTA_URL "\",\"header\":{\"kid\":null}}",
		   NULL, &req);
	assert_int_equal(json_array_size(req.warnings), 1);
	assert_warning_has(&req, "kid");
	xch_req_clear(&req);

	/* an empty kid too */
	resolve_ok(NULL,
		   "{\"preset\":\"nhs\",\"key\":\"k\",\"client_id\":\"c\","
		   "\"token_url\":\"" NHS_URL "\",\"header\":{\"kid\":\"\"}}",
		   NULL, &req);
	assert_warning_has(&req, "kid");
	xch_req_clear(&req);

	/* a kid given explicitly: fine */
	resolve_ok(NULL,
		   "{\"preset\":\"okta\",\"key\":\"k\",\"client_id\":\"c\","
		   "\"token_url\":\"" OKTA_URL "\",\"header\":{\"kid\":\"k1\"}}",
		   NULL, &req);
	assert_no_warnings(&req);
	xch_req_clear(&req);

	/* Salesforce: over 3 minutes */
	resolve_ok(NULL,
		   "{\"preset\":\"salesforce\",\"key\":\"k\",\"client_id\":\"ck\",\"sub\":\"u\","
		   "\"lifetime\":181}",
		   NULL, &req);
	assert_warning_has(&req, "181");
	xch_req_clear(&req);
}

/* ---- precedence --------------------------------------------------------- */

static void test_precedence(void **state)
{
	json_t *profile = J("{\"preset\":\"client-assertion\",\"key\":\"pk\",\"alg\":\"RS384\","
			    "\"client_id\":\"pc\",\"token_url\":\"" AS_URL "\","
			    "\"aud\":\"https://profile-aud\",\"lifetime\":100,\"scope\":\"s\","
			    "\"header\":{\"kid\":\"pkid\",\"x\":\"1\"},"
			    "\"claims\":{\"c\":\"p\",\"d\":\"p\"},"
			    "\"form\":{\"x\":\"1\",\"y\":\"p\",\"scope\":null}}");
	xch_req req;

	(void)state;
	/* profile over preset */
	resolve_ok(profile, "{}", NULL, &req);
	assert_string_equal(req.key, "pk");
	assert_string_equal(req.alg, "RS384");
	assert_string_equal(req.aud, "https://profile-aud");
	assert_int_equal(req.lifetime, 100);
	assert_json(req.header, "{\"kid\":\"pkid\",\"x\":\"1\"}");
	assert_json(req.claims, "{\"iss\":\"pc\",\"sub\":\"pc\",\"aud\":\"https://profile-aud\","
				"\"c\":\"p\",\"d\":\"p\"}");
	/* x and y added at the end, scope removed */
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "client_assertion_type=" CA_TYPE,
		    "client_assertion=", "x=1", "y=p");
	xch_req_clear(&req);

	/* command line over profile */
	resolve_ok(profile,
		   "{\"key\":\"ck\",\"alg\":\"ES256\",\"aud\":\"https://cli-aud\",\"lifetime\":50,"
		   "\"header\":{\"kid\":\"ckid\"},\"claims\":{\"c\":\"cli\"},"
		   "\"form\":{\"x\":\"2\",\"grant_type\":\"client_credentials\",\"z\":\"3\"}}",
		   NULL, &req);
	assert_string_equal(req.key, "ck");
	assert_string_equal(req.alg, "ES256");
	assert_string_equal(req.aud, "https://cli-aud");
	assert_int_equal(req.lifetime, 50);
	assert_json(req.header, "{\"kid\":\"ckid\",\"x\":\"1\"}");
	assert_json(req.claims, "{\"iss\":\"pc\",\"sub\":\"pc\",\"aud\":\"https://cli-aud\","
				"\"c\":\"cli\",\"d\":\"p\"}");
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "client_assertion_type=" CA_TYPE,
		    "client_assertion=", "x=2", "y=p", "z=3");
	xch_req_clear(&req);

	/* a null on the command line removes a field the profile added */
	resolve_ok(profile, "{\"form\":{\"y\":null}}", NULL, &req);
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "client_assertion_type=" CA_TYPE,
		    "client_assertion=", "x=1");
	xch_req_clear(&req);

	/* claims given as members override iss/sub/aud, header overrides the preset's typ */
	resolve_ok(NULL,
		   "{\"preset\":\"nhs\",\"key\":\"k\",\"client_id\":\"cid\",\"token_url\":\"" NHS_URL
		   "\",\"header\":{\"typ\":\"at+jwt\"},\"claims\":{\"iss\":\"other\"}}",
		   NULL, &req);
	assert_json(req.header, "{\"typ\":\"at+jwt\"}");
	assert_json(req.claims, "{\"iss\":\"other\",\"sub\":\"cid\",\"aud\":\"" NHS_URL "\"}");
	xch_req_clear(&req);

	/* preset from the profile, token URL from the command line */
	resolve_ok(profile, "{\"token_url\":\"https://other.example/t\"}", NULL, &req);
	assert_string_equal(req.token_url, "https://other.example/t");
	assert_string_equal(req.aud, "https://profile-aud");
	xch_req_clear(&req);
	json_decref(profile);
}

static void test_grant_switch(void **state)
{
	xch_req req;

	(void)state;
	/* --grant jwt-bearer on a client-assertion preset: the jwt-bearer rows */
	resolve_ok(NULL,
		   "{\"preset\":\"okta\",\"grant\":\"jwt-bearer\",\"key\":\"k\",\"client_id\":\"c\","
		   "\"sub\":\"alice\",\"token_url\":\"" OKTA_URL "\",\"scope\":\"s1\"}",
		   NULL, &req);
	assert_string_equal(req.preset->name, "okta");
	assert_true(req.exchange);
	assert_string_equal(req.assertion_field, "assertion");
	assert_json(req.claims, "{\"iss\":\"c\",\"sub\":\"alice\",\"aud\":\"" OKTA_URL "\"}");
	ASSERT_FORM(&req.form, "grant_type=" JB_GRANT, "assertion=", "scope=s1");
	xch_req_clear(&req);

	/* and it asserts a user: sub required (no client_id fallback) */
	resolve_err(NULL,
		    "{\"preset\":\"client-assertion\",\"grant\":\"jwt-bearer\",\"key\":\"k\","
		    "\"client_id\":\"c\",\"token_url\":\"" AS_URL "\"}",
		    NULL, P11J_E_BAD_REQUEST, "--sub is required");

	/* --grant client_credentials on a jwt-bearer preset: sub = client_id */
	resolve_ok(NULL,
		   "{\"preset\":\"jwt-bearer\",\"grant\":\"client_credentials\",\"key\":\"k\","
		   "\"client_id\":\"c\",\"token_url\":\"" AS_URL "\"}",
		   NULL, &req);
	assert_string_equal(req.sub, "c");
	assert_string_equal(req.assertion_field, "client_assertion");
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "client_assertion_type=" CA_TYPE,
		    "client_assertion=");
	xch_req_clear(&req);

	/* --grant client_credentials on a client-assertion preset keeps its rows (Entra) */
	resolve_ok(NULL,
		   "{\"preset\":\"entra\",\"grant\":\"client_credentials\",\"key\":\"k\","
		   "\"client_id\":\"c\",\"token_url\":\"" ENTRA_URL "\"}",
		   NULL, &req);
	assert_string_equal(form_get(&req.form, "client_id"), "c");
	xch_req_clear(&req);

	/* --grant on the no-exchange preset turns the exchange on */
	resolve_ok(NULL,
		   "{\"preset\":\"oracle\",\"grant\":\"jwt-bearer\",\"key\":\"k\",\"sub\":\"u\","
		   "\"token_url\":\"" AS_URL "\"}",
		   NULL, &req);
	assert_true(req.exchange);
	ASSERT_FORM(&req.form, "grant_type=" JB_GRANT, "assertion=");
	xch_req_clear(&req);
}

static void test_assertion_field_and_secret(void **state)
{
	xch_req req;

	(void)state;
	/* rename the JWT's field, in place */
	resolve_ok(NULL,
		   "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\","
		   "\"assertion_field\":\"jwt\"}",
		   NULL, &req);
	assert_string_equal(req.assertion_field, "jwt");
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "client_assertion_type=" CA_TYPE,
		    "jwt=");
	assert_null(form_get(&req.form, "client_assertion"));
	xch_req_clear(&req);

	/* the same name as the preset's: unchanged */
	resolve_ok(NULL,
		   "{\"preset\":\"google\",\"key\":\"k\",\"client_id\":\"c\","
		   "\"assertion_field\":\"assertion\"}",
		   NULL, &req);
	assert_string_equal(req.assertion_field, "assertion");
	ASSERT_FORM(&req.form, "grant_type=" JB_GRANT, "assertion=");
	xch_req_clear(&req);

	/* a secret given to a preset without a secret row: client_secret appended */
	resolve_ok(NULL, "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\"}",
		   "s3cret", &req);
	assert_string_equal(req.secret_field, "client_secret");
	assert_string_equal(req.client_secret, "s3cret");
	ASSERT_FORM(&req.form, "grant_type=client_credentials", "client_assertion_type=" CA_TYPE,
		    "client_assertion=", "client_secret=s3cret");
	xch_req_clear(&req);

	/* no secret: no field */
	resolve_ok(NULL, "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\"}", NULL,
		   &req);
	assert_null(req.secret_field);
	assert_null(req.client_secret);
	assert_null(form_get(&req.form, "client_secret"));
	xch_req_clear(&req);

	/* removing the assertion's field is refused */
	resolve_err(NULL,
		    "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\","
		    "\"form\":{\"client_assertion\":null}}",
		    NULL, P11J_E_BAD_REQUEST, "--assertion-field");
}

/* ---- errors -------------------------------------------------------------- */

static void test_resolve_errors(void **state)
{
	(void)state;
	resolve_err(NULL, "{\"preset\":\"nhs\",\"client_id\":\"c\",\"token_url\":\"" NHS_URL "\"}",
		    NULL, P11J_E_BAD_REQUEST, "--key");
	resolve_err(NULL, "{\"preset\":\"nhs\",\"key\":\"k\",\"client_id\":\"c\"}", NULL,
		    P11J_E_BAD_REQUEST, "--token-url URL is required");
	resolve_err(NULL, "{\"key\":\"k\",\"client_id\":\"c\"}", NULL, P11J_E_BAD_REQUEST,
		    "--token-url");
	/* the transport check is xch_check_url(), before any request */
	{
		xch_req q;

		resolve_ok(NULL,
			   "{\"preset\":\"okta\",\"key\":\"k\",\"client_id\":\"c\","
			   "\"token_url\":\"http://example.com/t\"}",
			   NULL, &q);
		assert_int_equal(xch_check_url(&q), P11J_E_BAD_REQUEST);
		assert_msg_has("plain http");
		xch_req_clear(&q);
		resolve_ok(NULL,
			   "{\"preset\":\"okta\",\"key\":\"k\",\"client_id\":\"c\","
			   "\"token_url\":\"ftp://example.com/t\"}",
			   NULL, &q);
		assert_int_equal(xch_check_url(&q), P11J_E_BAD_REQUEST);
		assert_msg_has("https");
		xch_req_clear(&q);
	}
	resolve_err(NULL, "{\"preset\":\"zzz\",\"key\":\"k\"}", NULL, P11J_E_BAD_REQUEST,
		    "unknown preset 'zzz'");
	resolve_err(NULL,
		    "{\"grant\":\"password\",\"key\":\"k\",\"client_id\":\"c\","
		    "\"token_url\":\"" AS_URL "\"}",
		    NULL, P11J_E_BAD_REQUEST, "--grant 'password'");
	resolve_err(NULL,
		    "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\",\"lifetime\":0}",
		    NULL, P11J_E_BAD_REQUEST, "--lifetime 0");
	resolve_err(NULL,
		    "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL
		    "\",\"lifetime\":86401}",
		    NULL, P11J_E_BAD_REQUEST, "--lifetime 86401");
	resolve_err(NULL,
		    "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\",\"timeout\":0}",
		    NULL, P11J_E_BAD_REQUEST, "--timeout 0");
	/* the iss/sub template needs the client id */
	resolve_err(NULL, "{\"preset\":\"nhs\",\"key\":\"k\",\"token_url\":\"" NHS_URL "\"}", NULL,
		    P11J_E_BAD_REQUEST, "--client-id is required");
	/* Adobe's aud template needs the client id too */
	resolve_err(NULL, "{\"preset\":\"adobe\",\"key\":\"k\",\"iss\":\"o\",\"sub\":\"t\"}", "s",
		    P11J_E_BAD_REQUEST, "--client-id is required");
}

static void test_resolve_limits_ok(void **state)
{
	xch_req req;

	(void)state;
	resolve_ok(NULL,
		   "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\",\"lifetime\":1}",
		   NULL, &req);
	assert_int_equal(req.lifetime, 1);
	xch_req_clear(&req);
	resolve_ok(NULL,
		   "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL
		   "\",\"lifetime\":86400}",
		   NULL, &req);
	assert_int_equal(req.lifetime, 86400);
	xch_req_clear(&req);
	/* loopback http is fine (test servers) */
	resolve_ok(NULL,
		   "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"http://127.0.0.1:8080/t\"}",
		   NULL, &req);
	assert_string_equal(req.aud, "http://127.0.0.1:8080/t");
	assert_int_equal(xch_check_url(&req), 0);
	xch_req_clear(&req);
}

static void test_check_options(void **state)
{
	json_t *o;

	(void)state;
	o = J("{\"preset\":\"nhs\",\"key\":\"k\",\"lifetime\":5,\"form\":{\"a\":\"b\",\"c\":null},"
	      "\"include\":[\"x5t\",\"x5c\",\"x5t#S256\"],\"header\":{},\"claims\":{}}");
	assert_int_equal(xch_check_options(o, "here"), 0);
	json_decref(o);

	o = J("{\"bogus\":1}");
	assert_int_equal(xch_check_options(o, "here"), P11J_E_BAD_REQUEST);
	assert_msg_has("here");
	assert_msg_has("'bogus'");
	json_decref(o);

	o = J("{\"lifetime\":\"300\"}");
	assert_int_equal(xch_check_options(o, "here"), P11J_E_BAD_REQUEST);
	assert_msg_has("'lifetime' must be an integer");
	json_decref(o);

	o = J("{\"form\":{\"a\":1}}");
	assert_int_equal(xch_check_options(o, "here"), P11J_E_BAD_REQUEST);
	assert_msg_has("'a'");
	json_decref(o);

	o = J("{\"include\":[\"jku\"]}");
	assert_int_equal(xch_check_options(o, "here"), P11J_E_BAD_REQUEST);
	assert_msg_has("include");
	json_decref(o);

	o = J("[1]");
	assert_int_equal(xch_check_options(o, "here"), P11J_E_BAD_REQUEST);
	json_decref(o);
}

/* Regression: lookup() once kept a pointer to form_tmpl_expand()'s stack buffer
 * as the name of the unset variable, and the messages below read it after
 * that frame was gone (valgrind: invalid read in var_option). It now keeps
 * a copy. */
static void test_unset_variable_messages(void **state)
{
	json_t *p;

	(void)state;
	/* expand_req: the option named comes from the dead buffer */
	resolve_err(NULL, "{\"preset\":\"nhs\",\"key\":\"k\",\"token_url\":\"" NHS_URL "\"}",
		    NULL, P11J_E_BAD_REQUEST, "--client-id is required (preset 'nhs' uses it for iss)");
	resolve_err(NULL, "{\"preset\":\"adobe\",\"key\":\"k\",\"iss\":\"o\",\"sub\":\"t\"}",
		    "s", P11J_E_BAD_REQUEST, "--client-id is required (preset 'adobe' uses it for aud)");
	/* expand_json: the variable named comes from the dead buffer */
	p = J("{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\","
	      "\"claims\":{\"x\":\"${scope}\"}}");
	{
		json_t *c = J("{}");
		xch_req req;

		assert_int_equal(xch_resolve(p, c, NULL, NOW, &req), P11J_E_BAD_REQUEST);
		json_decref(c);
	}
	json_decref(p);
	assert_msg_has("profile: 'x' uses ${scope}, which has no value here");
}

/* ---- profiles ----------------------------------------------------------- */

static void test_profile_errors(void **state)
{
	char dir[64], path[PATH_MAX];
	json_t *p = NULL;

	(void)state;
	mk_tmp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/bad.json", dir);
	write_file(path, "{\"preset\":\"nhs\",\"clientid\":\"x\"}", 0644);
	assert_int_equal(xch_load_profile(path, &p), P11J_E_BAD_REQUEST);
	assert_msg_has("'clientid'");
	assert_msg_has(path);

	write_file(path, "{\"preset\":\"nhs\",\"lifetime\":\"300\"}", 0644);
	assert_int_equal(xch_load_profile(path, &p), P11J_E_BAD_REQUEST);
	assert_msg_has("'lifetime' must be an integer");

	write_file(path, "{\"header\":\"typ=JWT\"}", 0644);
	assert_int_equal(xch_load_profile(path, &p), P11J_E_BAD_REQUEST);
	assert_msg_has("'header' must be an object");

	write_file(path, "{\"preset\":", 0644);
	assert_int_equal(xch_load_profile(path, &p), P11J_E_BAD_REQUEST);
	assert_msg_has("not valid JSON");

	write_file(path, "[]", 0644);
	assert_int_equal(xch_load_profile(path, &p), P11J_E_BAD_REQUEST);

	snprintf(path, sizeof(path), "%s/missing.json", dir);
	assert_int_equal(xch_load_profile(path, &p), P11J_E_NOT_FOUND);

	assert_int_equal(xch_load_profile("bad name!", &p), P11J_E_BAD_REQUEST);
	assert_null(p);
	rm_tmp(dir);
}

static void test_profile_rebase_and_files(void **state)
{
	char dir[64], path[PATH_MAX], want[PATH_MAX];
	json_t *p;
	xch_req req;

	(void)state;
	mk_tmp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/h.json", dir);
	write_file(path, "{\"kid\":\"from-file\",\"x\":\"f\"}", 0644);
	snprintf(path, sizeof(path), "%s/c.json", dir);
	write_file(path, "{\"tenant\":\"t1\"}", 0644);
	snprintf(path, sizeof(path), "%s/p.json", dir);
	write_file(path,
		   "{\"preset\":\"nhs\",\"key\":\"k\",\"client_id\":\"cid\","
		   "\"token_url\":\"" NHS_URL "\",\"header_file\":\"h.json\","
		   "\"claims_file\":\"c.json\",\"client_secret_file\":\"sec\","
		   "\"cacert\":\"/abs/ca.pem\",\"header\":{\"x\":\"member\"}}",
		   0644);
	p = load_profile_ok(path);
	snprintf(want, sizeof(want), "%s/h.json", dir);
	assert_string_equal(json_string_value(json_object_get(p, "header_file")), want);
	snprintf(want, sizeof(want), "%s/c.json", dir);
	assert_string_equal(json_string_value(json_object_get(p, "claims_file")), want);
	snprintf(want, sizeof(want), "%s/sec", dir);
	assert_string_equal(json_string_value(json_object_get(p, "client_secret_file")), want);
	assert_string_equal(json_string_value(json_object_get(p, "cacert")), "/abs/ca.pem");

	/* the files are read by xch_resolve; members override files */
	resolve_ok(p, "{}", NULL, &req);
	assert_json(req.header, "{\"typ\":\"JWT\",\"kid\":\"from-file\",\"x\":\"member\"}");
	assert_json(req.claims, "{\"iss\":\"cid\",\"sub\":\"cid\",\"aud\":\"" NHS_URL "\","
				"\"tenant\":\"t1\"}");
	assert_string_equal(req.cacert, "/abs/ca.pem");
	assert_no_warnings(&req);
	xch_req_clear(&req);

	/* a header file that is gone: the error reaches the caller */
	snprintf(want, sizeof(want), "%s/h.json", dir);
	assert_int_equal(unlink(want), 0);
	{
		json_t *c = J("{}");

		assert_int_equal(xch_resolve(p, c, NULL, NOW, &req), P11J_E_NOT_FOUND);
		assert_msg_has("h.json");
		json_decref(c);
	}
	json_decref(p);
	rm_tmp(dir);
}

static void test_profile_templates(void **state)
{
	char dir[64], path[PATH_MAX];
	json_t *p;
	xch_req req;

	(void)state;
	mk_tmp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/t.json", dir);
	write_file(path,
		   "{\"preset\":\"jwt-bearer\",\"key\":\"k\","
		   "\"client_id\":\"${env:P11J_TEST_CID}\","
		   "\"token_url\":\"https://${env:P11J_TEST_HOST}/t/${client_id}\","
		   "\"sub\":\"user-${client_id}\",\"claims\":{\"tid\":\"${env:P11J_TEST_HOST}\","
		   "\"n\":{\"u\":\"${token_url}\"}},\"form\":{\"resource\":\"r-${client_id}\"},"
		   "\"iss\":\"$${literal}\"}",
		   0644);
	p = load_profile_ok(path);
	/* expanded at resolve time, not at load time */
	assert_string_equal(json_string_value(json_object_get(p, "client_id")),
			    "${env:P11J_TEST_CID}");
	setenv("P11J_TEST_CID", "cid9", 1);
	setenv("P11J_TEST_HOST", "as.example", 1);
	resolve_ok(p, "{}", NULL, &req);
	assert_string_equal(req.client_id, "cid9");
	assert_string_equal(req.token_url, "https://as.example/t/cid9");
	assert_string_equal(req.sub, "user-cid9");
	assert_string_equal(req.iss, "${literal}");
	assert_json(req.claims, "{\"iss\":\"${literal}\",\"sub\":\"user-cid9\","
				"\"aud\":\"https://as.example/t/cid9\",\"tid\":\"as.example\","
				"\"n\":{\"u\":\"https://as.example/t/cid9\"}}");
	ASSERT_FORM(&req.form, "grant_type=" JB_GRANT, "assertion=", "resource=r-cid9");
	xch_req_clear(&req);

	/* the command line is taken literally */
	resolve_ok(p, "{\"client_id\":\"${x}\",\"sub\":\"${y}\"}", NULL, &req);
	assert_string_equal(req.client_id, "${x}");
	assert_string_equal(req.sub, "${y}");
	assert_string_equal(req.token_url, "https://as.example/t/${x}");
	xch_req_clear(&req);

	/* an unset variable is named */
	unsetenv("P11J_TEST_CID");
	{
		json_t *c = J("{}");

		assert_int_equal(xch_resolve(p, c, NULL, NOW, &req), P11J_E_BAD_REQUEST);
		assert_msg_has("P11J_TEST_CID");
		json_decref(c);
	}
	setenv("P11J_TEST_CID", "cid9", 1);
	unsetenv("P11J_TEST_HOST");
	{
		json_t *c = J("{\"token_url\":\"https://as.example/t\"}");

		assert_int_equal(xch_resolve(p, c, NULL, NOW, &req), P11J_E_BAD_REQUEST);
		assert_msg_has("P11J_TEST_HOST");
		assert_msg_has("tid");
		json_decref(c);
	}
	unsetenv("P11J_TEST_CID");
	json_decref(p);

	/* an unknown variable in a profile string */
	write_file(path,
		   "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\","
		   "\"claims\":{\"x\":\"${nope}\"}}",
		   0644);
	p = load_profile_ok(path);
	{
		json_t *c = J("{}");

		assert_int_equal(xch_resolve(p, c, NULL, NOW, &req), P11J_E_BAD_REQUEST);
		assert_msg_has("${nope}");
		json_decref(c);
	}
	json_decref(p);
	rm_tmp(dir);
}

/* Regression: relative *_file members are rebased at load time, before
 * ${...} is expanded; a path that starts with a variable ("${env:DIR}/h.json")
 * must be left alone, not prefixed with the profile's directory. */
static void test_profile_file_from_env(void **state)
{
	char dir[64], path[PATH_MAX];
	json_t *p;
	xch_req req;
	int r;

	(void)state;
	mk_tmp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/h.json", dir);
	write_file(path, "{\"kid\":\"env-file\"}", 0644);
	setenv("P11J_TEST_DIR", dir, 1);
	snprintf(path, sizeof(path), "%s/p.json", dir);
	write_file(path,
		   "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\","
		   "\"header_file\":\"${env:P11J_TEST_DIR}/h.json\"}",
		   0644);
	p = load_profile_ok(path);
	{
		json_t *c = J("{}");

		r = xch_resolve(p, c, NULL, NOW, &req);
		json_decref(c);
	}
	if (r != 0)
		print_error("header_file from ${env:...}: %s\n", err_msg());
	json_decref(p);
	unsetenv("P11J_TEST_DIR");
	rm_tmp(dir);
	assert_int_equal(r, 0);
	assert_json(req.header, "{\"kid\":\"env-file\"}");
	xch_req_clear(&req);
}

static void test_profile_by_name(void **state)
{
	char dir[64], path[PATH_MAX];
	char *old_xdg = getenv("XDG_CONFIG_HOME") ? strdup(getenv("XDG_CONFIG_HOME")) : NULL;
	json_t *p = NULL;

	(void)state;
	mk_tmp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/p11jwt", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/p11jwt/profiles", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/p11jwt/profiles/work.json", dir);
	write_file(path, "{\"preset\":\"okta\",\"header_file\":\"hdr.json\"}", 0600);
	setenv("XDG_CONFIG_HOME", dir, 1);

	p = load_profile_ok("work");
	assert_string_equal(json_string_value(json_object_get(p, "preset")), "okta");
	snprintf(path, sizeof(path), "%s/p11jwt/profiles/hdr.json", dir);
	assert_string_equal(json_string_value(json_object_get(p, "header_file")), path);
	json_decref(p);
	p = NULL;

	assert_int_equal(xch_load_profile("nothere", &p), P11J_E_NOT_FOUND);
	assert_msg_has("nothere");
	assert_null(p);

	if (old_xdg) {
		setenv("XDG_CONFIG_HOME", old_xdg, 1);
		free(old_xdg);
	} else {
		unsetenv("XDG_CONFIG_HOME");
	}
	rm_tmp(dir);
}

/* ---- form and templates ------------------------------------------------- */

static void test_form_encode(void **state)
{
	form f = { 0 };
	char *s = NULL;

	(void)state;
	assert_int_equal(form_encode(&f, &s), 0);
	assert_string_equal(s, "");
	freezero_str(s);

	assert_int_equal(form_set(&f, "a b", "x y"), 0);
	assert_int_equal(form_set(&f, "plus", "1+1=2"), 0);
	assert_int_equal(form_set(&f, "amp", "a&b"), 0);
	assert_int_equal(form_set(&f, "url", "https://h/p?q"), 0);
	assert_int_equal(form_set(&f, "utf8", "\xc3\xa9\xe2\x9c\x93"), 0);
	assert_int_equal(form_set(&f, "keep", "AZaz09~-._"), 0);
	assert_int_equal(form_set(&f, "empty", ""), 0);
	assert_int_equal(form_encode(&f, &s), 0);
	assert_string_equal(s, "a%20b=x%20y&plus=1%2B1%3D2&amp=a%26b&url=https%3A%2F%2Fh%2Fp%3Fq"
			       "&utf8=%C3%A9%E2%9C%93&keep=AZaz09~-._&empty=");
	freezero_str(s);
	form_clear(&f);
	assert_int_equal(f.n, 0);
	assert_null(f.v);
}

static void test_form_set_del_get(void **state)
{
	form f = { 0 };
	char *s = NULL;

	(void)state;
	for (int i = 0; i < 20; i++) { /* grows past the first allocation */
		char n[16];

		snprintf(n, sizeof(n), "f%d", i);
		assert_int_equal(form_set(&f, n, "v"), 0);
	}
	assert_int_equal(f.n, 20);
	form_clear(&f);

	assert_int_equal(form_set(&f, "a", "1"), 0);
	assert_int_equal(form_set(&f, "b", "2"), 0);
	assert_int_equal(form_set(&f, "c", "3"), 0);
	assert_int_equal(form_set(&f, "a", "9"), 0); /* replaced in place */
	ASSERT_FORM(&f, "a=9", "b=2", "c=3");
	assert_string_equal(form_get(&f, "b"), "2");
	assert_null(form_get(&f, "z"));
	assert_int_equal(form_del(&f, "b"), 1);
	assert_int_equal(form_del(&f, "b"), 0);
	ASSERT_FORM(&f, "a=9", "c=3");
	assert_int_equal(form_encode(&f, &s), 0);
	assert_string_equal(s, "a=9&c=3");
	freezero_str(s);
	assert_int_equal(form_del(&f, "a"), 1);
	assert_int_equal(form_del(&f, "c"), 1);
	assert_int_equal(f.n, 0);
	assert_int_equal(form_set(&f, "d", "4"), 0);
	ASSERT_FORM(&f, "d=4");
	form_clear(&f);
}

static const char *tl(const char *name, void *ud)
{
	(void)ud;
	if (strcmp(name, "client_id") == 0)
		return "cid";
	if (strcmp(name, "empty") == 0)
		return "";
	return NULL;
}

static void expect_tmpl(const char *in, const char *out)
{
	char *s = NULL;
	int r = form_tmpl_expand(in, tl, NULL, &s);

	if (r != 0) {
		print_error("form_tmpl_expand('%s') = %d: %s\n", in, r, err_msg());
		fail();
	}
	assert_string_equal(s, out);
	free(s);
}

static void expect_tmpl_err(const char *in, const char *needle)
{
	char *s = NULL;

	assert_int_equal(form_tmpl_expand(in, tl, NULL, &s), P11J_E_BAD_REQUEST);
	assert_null(s);
	assert_msg_has(needle);
}

static void test_tmpl_expand(void **state)
{
	(void)state;
	setenv("P11J_TEST_ENV", "ev", 1);
	expect_tmpl("", "");
	expect_tmpl("plain", "plain");
	expect_tmpl("${client_id}", "cid");
	expect_tmpl("a-${client_id}-b${client_id}", "a-cid-bcid");
	expect_tmpl("x${empty}y", "xy");
	expect_tmpl("$$", "$");
	expect_tmpl("$${client_id}", "${client_id}");
	expect_tmpl("cost $5", "cost $5");
	expect_tmpl("end$", "end$");
	expect_tmpl("${env:P11J_TEST_ENV}/x", "ev/x");
	expect_tmpl_err("a${client_id", "unterminated");
	expect_tmpl_err("${nope}", "${nope}");
	expect_tmpl_err("${}", "bad variable name");
	unsetenv("P11J_TEST_ENV");
	expect_tmpl_err("${env:P11J_TEST_ENV}", "P11J_TEST_ENV");
	setenv("P11J_TEST_ENV", "", 1);
	expect_tmpl("[${env:P11J_TEST_ENV}]", "[]");
	unsetenv("P11J_TEST_ENV");
	{
		char *s = NULL;

		/* no lookup: only env */
		assert_int_equal(form_tmpl_expand("${client_id}", NULL, NULL, &s), P11J_E_BAD_REQUEST);
	}
}

/* ---- cache key ---------------------------------------------------------- */

static void key_of(const char *cli, const char *secret, char out[65])
{
	xch_req req;

	resolve_ok(NULL, cli, secret, &req);
	assert_int_equal(xch_cache_key(&req, out), 0);
	xch_req_clear(&req);
}

#define BASE_CLI "\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\""

static void test_cache_key(void **state)
{
	static const char *const variants[] = {
		"{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"https://as.example/token2\"}",
		"{\"key\":\"k\",\"client_id\":\"c2\",\"token_url\":\"" AS_URL "\"}",
		"{\"key\":\"k2\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\"}",
		"{" BASE_CLI ",\"sub\":\"other\"}",
		"{" BASE_CLI ",\"scope\":\"s\"}",
		"{" BASE_CLI ",\"form\":{\"extra\":\"1\"}}",
		"{" BASE_CLI ",\"alg\":\"ES256\"}",
		"{" BASE_CLI ",\"iss\":\"i2\"}",
		"{" BASE_CLI ",\"aud\":\"a2\"}",
	};
	char k1[65], k2[65], kv[ARRAY_SIZE(variants)][65];
	xch_req req;

	(void)state;
	key_of("{" BASE_CLI "}", NULL, k1);
	key_of("{" BASE_CLI "}", NULL, k2);
	assert_int_equal(strlen(k1), 64);
	assert_int_equal(strspn(k1, "0123456789abcdef"), 64);
	assert_string_equal(k1, k2);
	for (size_t i = 0; i < ARRAY_SIZE(variants); i++) {
		key_of(variants[i], NULL, kv[i]);
		if (strcmp(kv[i], k1) == 0) {
			print_error("variant %zu (%s) has the base key\n", i, variants[i]);
			fail();
		}
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(kv[i], kv[j]);
	}

	/* the assertion and the secret do not count */
	resolve_ok(NULL, "{" BASE_CLI "}", "secret-1", &req);
	assert_int_equal(form_set(&req.form, req.assertion_field, "eyJ.one.sig"), 0);
	assert_int_equal(xch_cache_key(&req, k2), 0);
	assert_string_equal(k1, k2);
	xch_req_clear(&req);
	resolve_ok(NULL, "{" BASE_CLI "}", "secret-2", &req);
	assert_int_equal(form_set(&req.form, req.assertion_field, "eyJ.two.sig"), 0);
	assert_int_equal(xch_cache_key(&req, k2), 0);
	assert_string_equal(k1, k2);
	xch_req_clear(&req);

	/* Adobe: its secret is a preset row */
	{
		const char *a = "{\"preset\":\"adobe\",\"key\":\"k\",\"client_id\":\"c\","
				"\"iss\":\"o\",\"sub\":\"t\"}";

		key_of(a, "one", k1);
		key_of(a, "two", k2);
		assert_string_equal(k1, k2);
	}
}

/* ---- cache files -------------------------------------------------------- */

typedef struct {
	char rt[64];
	char *old_rt;
	tcache c;
} cache_fx;

static int cache_setup(void **state)
{
	cache_fx *fx = calloc(1, sizeof(*fx));
	const char *o = getenv("XDG_RUNTIME_DIR");

	if (fx == NULL)
		return -1;
	snprintf(fx->rt, sizeof(fx->rt), "/tmp/p11j-cache-XXXXXX");
	if (mkdtemp(fx->rt) == NULL) {
		free(fx);
		return -1;
	}
	fx->old_rt = o ? strdup(o) : NULL;
	setenv("XDG_RUNTIME_DIR", fx->rt, 1);
	if (cache_open(&fx->c) != 0) {
		print_error("cache_open: %s\n", err_msg());
		return -1;
	}
	*state = fx;
	return 0;
}

static int cache_teardown(void **state)
{
	cache_fx *fx = *state;

	if (fx->old_rt) {
		setenv("XDG_RUNTIME_DIR", fx->old_rt, 1);
		free(fx->old_rt);
	} else {
		unsetenv("XDG_RUNTIME_DIR");
	}
	nftw(fx->rt, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(fx);
	return 0;
}

#define KEY_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define KEY_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define KEY_C "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define ENTRY "{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1700000000,\"expires_at\":1700000600}"

static void entry_path(const cache_fx *fx, const char *key, char *out, size_t len)
{
	snprintf(out, len, "%s/%s.json", fx->c.dir, key);
}

static void test_cache_open_and_roundtrip(void **state)
{
	cache_fx *fx = *state;
	char path[PATH_MAX];
	struct stat st;
	json_t *e = J(ENTRY), *got = NULL;

	snprintf(path, sizeof(path), "%s/p11jwt/cache", fx->rt);
	assert_string_equal(fx->c.dir, path);
	assert_int_equal(stat(fx->c.dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	snprintf(path, sizeof(path), "%s/p11jwt", fx->rt);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);

	assert_int_equal(cache_get(&fx->c, KEY_A, &got), P11J_E_NOT_FOUND);
	assert_int_equal(cache_put(&fx->c, KEY_A, e), 0);
	assert_int_equal(cache_get(&fx->c, KEY_A, &got), 0);
	assert_true(json_equal(got, e));
	json_decref(got);
	entry_path(fx, KEY_A, path, sizeof(path));
	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);

	/* bad keys are refused */
	assert_int_equal(cache_get(&fx->c, "../x", &got), P11J_E_INTERNAL);
	assert_int_equal(cache_put(&fx->c, "ABC", e), P11J_E_INTERNAL);

	/* loose modes on our directory are tightened when opened again */
	assert_int_equal(chmod(fx->c.dir, 0755), 0);
	{
		tcache c2;

		assert_int_equal(cache_open(&c2), 0);
		assert_string_equal(c2.dir, fx->c.dir);
	}
	assert_int_equal(stat(fx->c.dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);

	/* a cache directory that is not ours, or a symlink, is refused */
	if (geteuid() == 0) {
		tcache c2;

		assert_int_equal(chown(fx->c.dir, 4321, 4321), 0);
		assert_int_equal(cache_open(&c2), P11J_E_INSECURE);
		assert_int_equal(chown(fx->c.dir, 0, 0), 0);
	}
	{
		tcache c2;
		char real[PATH_MAX], link[PATH_MAX];

		snprintf(link, sizeof(link), "%s/p11jwt", fx->rt);
		snprintf(real, sizeof(real), "%s/p11jwt.moved", fx->rt);
		assert_int_equal(rename(link, real), 0);
		assert_int_equal(symlink(real, link), 0);
		assert_int_equal(cache_open(&c2), P11J_E_INSECURE);
		assert_int_equal(unlink(link), 0);
		assert_int_equal(rename(real, link), 0);
	}

	assert_int_equal(cache_del(&fx->c, KEY_A), 0);
	assert_int_equal(cache_del(&fx->c, KEY_A), 0);
	assert_int_equal(cache_get(&fx->c, KEY_A, &got), P11J_E_NOT_FOUND);
	json_decref(e);
}

static void expect_untrusted(const cache_fx *fx, const char *what)
{
	json_t *got = NULL;
	int r = cache_get(&fx->c, KEY_A, &got);

	if (r == 0 || r == P11J_E_NOT_FOUND) {
		print_error("%s: cache_get = %d, expected an error other than not_found\n", what,
			    r);
		json_decref(got);
		fail();
	}
	assert_null(got);
}

static void test_cache_untrusted(void **state)
{
	cache_fx *fx = *state;
	char path[PATH_MAX], other[PATH_MAX];
	json_t *e = J(ENTRY), *got = NULL;

	entry_path(fx, KEY_A, path, sizeof(path));
	write_file(path, "{\"v\":1,\"access_tok", 0600);
	expect_untrusted(fx, "corrupt JSON");
	assert_int_equal(cache_get(&fx->c, KEY_A, &got), P11J_E_BAD_RESPONSE);

	write_file(path, "{\"v\":1,\"token\":\"AT\"}", 0600);
	expect_untrusted(fx, "wrong shape");
	write_file(path, "{\"v\":2,\"access_token\":\"AT\",\"obtained_at\":1}", 0600);
	expect_untrusted(fx, "version 2");
	write_file(path, "[1,2]", 0600);
	expect_untrusted(fx, "array");
	write_file(path, "{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1,\"expires_at\":\"x\"}",
		   0600);
	expect_untrusted(fx, "bad expires_at");

	write_file(path, ENTRY, 0644);
	expect_untrusted(fx, "mode 0644");
	assert_int_equal(cache_get(&fx->c, KEY_A, &got), P11J_E_INSECURE);

	/* a later put replaces the bad file */
	assert_int_equal(cache_put(&fx->c, KEY_A, e), 0);
	assert_int_equal(cache_get(&fx->c, KEY_A, &got), 0);
	json_decref(got);

	/* a symlink to a valid entry */
	entry_path(fx, KEY_B, other, sizeof(other));
	assert_int_equal(rename(path, other), 0);
	assert_int_equal(symlink(other, path), 0);
	expect_untrusted(fx, "symlink");
	assert_int_equal(cache_put(&fx->c, KEY_A, e), 0); /* replaces the link itself */
	{
		struct stat st;

		assert_int_equal(lstat(path, &st), 0);
		assert_true(S_ISREG(st.st_mode));
	}
	assert_int_equal(cache_get(&fx->c, KEY_A, &got), 0);
	json_decref(got);

	/* a directory or a FIFO where the file should be */
	assert_int_equal(unlink(path), 0);
	assert_int_equal(mkdir(path, 0700), 0);
	expect_untrusted(fx, "directory");
	assert_int_equal(rmdir(path), 0);
	assert_int_equal(mkfifo(path, 0600), 0);
	expect_untrusted(fx, "fifo");
	assert_int_equal(unlink(path), 0);

	/* a file of another user */
	if (geteuid() == 0) {
		write_file(path, ENTRY, 0600);
		assert_int_equal(chown(path, 4321, 4321), 0);
		expect_untrusted(fx, "owned by another uid");
		assert_int_equal(cache_get(&fx->c, KEY_A, &got), P11J_E_INSECURE);
	}
	json_decref(e);
}

static void test_cache_list_clear(void **state)
{
	cache_fx *fx = *state;
	char path[PATH_MAX];
	json_t *e = J(ENTRY), *list = NULL;
	int skipped = -1, n = -1, fd = -1;

	assert_int_equal(cache_list(&fx->c, &list, &skipped), 0);
	assert_json(list, "[]");
	assert_int_equal(skipped, 0);
	json_decref(list);

	assert_int_equal(cache_put(&fx->c, KEY_C, e), 0);
	assert_int_equal(cache_put(&fx->c, KEY_A, e), 0);
	entry_path(fx, KEY_B, path, sizeof(path));
	write_file(path, "not json", 0600);
	snprintf(path, sizeof(path), "%s/unrelated.txt", fx->c.dir);
	write_file(path, "x", 0600);
	assert_int_equal(cache_lock(&fx->c, KEY_A, 100, &fd), 0);
	cache_unlock(fd);

	assert_int_equal(cache_list(&fx->c, &list, &skipped), 0);
	assert_int_equal(skipped, 1);
	assert_int_equal(json_array_size(list), 2);
	/* sorted by key */
	assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "key")),
			    KEY_C);
	assert_string_equal(json_string_value(json_object_get(json_array_get(list, 1), "key")),
			    KEY_A);
	assert_true(json_equal(json_object_get(json_array_get(list, 1), "entry"), e));
	json_decref(list);

	assert_int_equal(cache_clear(&fx->c, &n), 0);
	assert_int_equal(n, 3); /* the corrupt entry is removed (and counted) too */
	entry_path(fx, KEY_A, path, sizeof(path));
	assert_int_equal(access(path, F_OK), -1);
	snprintf(path, sizeof(path), "%s/%s.lock", fx->c.dir, KEY_A);
	assert_int_equal(access(path, F_OK), -1);
	snprintf(path, sizeof(path), "%s/unrelated.txt", fx->c.dir);
	assert_int_equal(access(path, F_OK), 0);
	assert_int_equal(cache_list(&fx->c, &list, &skipped), 0);
	assert_int_equal(json_array_size(list), 0);
	assert_int_equal(skipped, 0);
	json_decref(list);
	assert_int_equal(cache_clear(&fx->c, &n), 0);
	assert_int_equal(n, 0);
	json_decref(e);
}

static void test_cache_lock(void **state)
{
	cache_fx *fx = *state;
	int fd1 = -1, fd2 = -1;
	struct timespec t0, t1;
	long ms;

	assert_int_equal(cache_lock(&fx->c, KEY_A, 100, &fd1), 0);
	assert_true(fd1 >= 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(cache_lock(&fx->c, KEY_A, 100, &fd2), P11J_E_TIMEOUT);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	assert_true(ms >= 90);
	assert_true(ms < 2000);
	/* another key is independent */
	assert_int_equal(cache_lock(&fx->c, KEY_B, 0, &fd2), 0);
	cache_unlock(fd2);
	/* released: taken at once */
	cache_unlock(fd1);
	assert_int_equal(cache_lock(&fx->c, KEY_A, 0, &fd2), 0);
	cache_unlock(fd2);
	assert_int_equal(cache_lock(&fx->c, "bad", 0, &fd2), P11J_E_INTERNAL);
}

static void test_cache_entry_state(void **state)
{
	json_t *e;

	(void)state;
	e = J("{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1000,\"expires_at\":2000}");
	assert_int_equal(cache_entry_state(e, 1000, 60), CACHE_FRESH);
	assert_int_equal(cache_entry_state(e, 1939, 60), CACHE_FRESH);
	assert_int_equal(cache_entry_state(e, 1940, 60), CACHE_STALE);
	assert_int_equal(cache_entry_state(e, 2500, 60), CACHE_STALE);
	assert_int_equal(cache_entry_state(e, 1999, 0), CACHE_FRESH);
	assert_int_equal(cache_entry_state(e, 2000, 0), CACHE_STALE);
	json_decref(e);

	e = J("{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1000,\"expires_at\":2000,"
	      "\"refresh_token\":\"RT\"}");
	assert_int_equal(cache_entry_state(e, 1939, 60), CACHE_FRESH);
	assert_int_equal(cache_entry_state(e, 1940, 60), CACHE_REFRESHABLE);
	assert_int_equal(cache_entry_state(e, 9999, 60), CACHE_REFRESHABLE);
	json_decref(e);

	/* no expiry known: never fresh */
	e = J("{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1000,\"expires_at\":null}");
	assert_int_equal(cache_entry_state(e, 0, 0), CACHE_STALE);
	json_decref(e);
	e = J("{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1000,\"expires_at\":null,"
	      "\"refresh_token\":\"RT\"}");
	assert_int_equal(cache_entry_state(e, 0, 0), CACHE_REFRESHABLE);
	json_decref(e);
	e = J("{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1000,\"refresh_token\":null}");
	assert_int_equal(cache_entry_state(e, 0, 0), CACHE_STALE);
	json_decref(e);
}

/* ---- token response ----------------------------------------------------- */

static int parse(long status, const char *body, xch_token *tok, char **err)
{
	return xch_parse_token(status, body, strlen(body), tok, err);
}

static void test_parse_token_ok(void **state)
{
	xch_token tok;
	char *err = (char *)"unchanged";

	(void)state;
	assert_int_equal(parse(200,
			       "{\"access_token\":\"AT\",\"token_type\":\"Bearer\","
			       "\"expires_in\":599,\"refresh_token\":\"RT\",\"x\":1}",
			       &tok, &err),
			 0);
	assert_null(err);
	assert_string_equal(tok.access_token, "AT");
	assert_string_equal(tok.token_type, "Bearer");
	assert_string_equal(tok.refresh_token, "RT");
	assert_int_equal(tok.expires_in, 599);
	assert_int_equal(json_integer_value(json_object_get(tok.json, "x")), 1);
	xch_token_clear(&tok);
	assert_null(tok.access_token);

	/* NHS sends expires_in as a string */
	assert_int_equal(parse(200, "{\"access_token\":\"AT\",\"expires_in\":\"599\"}", &tok, NULL),
			 0);
	assert_int_equal(tok.expires_in, 599);
	assert_null(tok.token_type);
	assert_null(tok.refresh_token);
	xch_token_clear(&tok);

	assert_int_equal(parse(200, "{\"access_token\":\"AT\"}", &tok, NULL), 0);
	assert_int_equal(tok.expires_in, -1);
	xch_token_clear(&tok);
	assert_int_equal(parse(201, "{\"access_token\":\"AT\",\"expires_in\":null}", &tok, NULL), 0);
	assert_int_equal(tok.expires_in, -1);
	xch_token_clear(&tok);
	assert_int_equal(parse(200, "{\"access_token\":\"AT\",\"expires_in\":0}", &tok, NULL), 0);
	assert_int_equal(tok.expires_in, 0);
	xch_token_clear(&tok);
	assert_int_equal(parse(200, "{\"access_token\":\"AT\",\"expires_in\":3599.0}", &tok, NULL),
			 0);
	assert_int_equal(tok.expires_in, 3599);
	xch_token_clear(&tok);
}

static void expect_bad_response(long status, const char *body, const char *needle)
{
	xch_token tok;

	if (xch_parse_token(status, body, strlen(body), &tok, NULL) != P11J_E_BAD_RESPONSE) {
		print_error("'%s' (HTTP %ld) was not refused as bad_response\n", body, status);
		fail();
	}
	assert_null(tok.access_token);
	assert_null(tok.json);
	if (needle)
		assert_msg_has(needle);
	xch_token_clear(&tok);
}

static void test_parse_token_bad(void **state)
{
	(void)state;
	expect_bad_response(200, "{\"access_token\":\"AT\",\"expires_in\":\"abc\"}", "expires_in");
	expect_bad_response(200, "{\"access_token\":\"AT\",\"expires_in\":-5}", "expires_in");
	expect_bad_response(200, "{\"access_token\":\"AT\",\"expires_in\":\"59x\"}", "expires_in");
	expect_bad_response(200, "{\"access_token\":\"AT\",\"expires_in\":\"\"}", "expires_in");
	expect_bad_response(200, "{\"access_token\":\"AT\",\"expires_in\":\"-5\"}", "expires_in");
	expect_bad_response(200, "{\"access_token\":\"AT\",\"expires_in\":true}", "expires_in");
	expect_bad_response(200, "{\"token_type\":\"Bearer\"}", "access_token");
	expect_bad_response(200, "{\"access_token\":\"\"}", "access_token");
	expect_bad_response(200, "{\"access_token\":42}", "access_token");
	expect_bad_response(502, "<html><body>Bad Gateway</body></html>", "502");
	expect_bad_response(200, "[\"access_token\"]", "not a JSON object");
	expect_bad_response(200, "\"AT\"", "200");
	expect_bad_response(200, "", "empty body");
	expect_bad_response(500, "", "500");
	/* a JSON object with another status and no OAuth error */
	expect_bad_response(503, "{\"message\":\"down\"}", "503");
	/* duplicate members are refused */
	expect_bad_response(200, "{\"access_token\":\"a\",\"access_token\":\"b\"}", NULL);
	/* control characters in the excerpt are made printable */
	expect_bad_response(502, "<html>\n\x01</html>", "<html>..</html>");
}

static void test_parse_token_oauth_error(void **state)
{
	xch_token tok;
	char *err = NULL;

	(void)state;
	assert_int_equal(parse(401, "{\"error\":\"invalid_client\",\"error_description\":\"bad aud\"}",
			       &tok, &err),
			 P11J_E_OAUTH);
	assert_string_equal(err_msg(), "token endpoint said invalid_client: bad aud");
	assert_non_null(err);
	assert_string_equal(err, "invalid_client");
	free(err);
	err = NULL;
	xch_token_clear(&tok);

	/* an error member with a 200 is still an error */
	assert_int_equal(parse(200, "{\"error\":\"invalid_grant\",\"access_token\":\"AT\"}", &tok,
			       &err),
			 P11J_E_OAUTH);
	assert_string_equal(err_msg(), "token endpoint said invalid_grant");
	assert_string_equal(err, "invalid_grant");
	assert_null(tok.access_token);
	free(err);
	err = NULL;

	/* with error_uri */
	assert_int_equal(parse(400,
			       "{\"error\":\"invalid_scope\",\"error_description\":\"no\","
			       "\"error_uri\":\"https://h/e\"}",
			       &tok, &err),
			 P11J_E_OAUTH);
	assert_string_equal(err_msg(), "token endpoint said invalid_scope: no (see https://h/e)");
	free(err);
	err = NULL;

	/* ret_error may be NULL */
	assert_int_equal(parse(400, "{\"error\":\"x\"}", &tok, NULL), P11J_E_OAUTH);
	/* a non-string error is not an OAuth error */
	assert_int_equal(parse(400, "{\"error\":{\"code\":1}}", &tok, &err), P11J_E_BAD_RESPONSE);
	assert_null(err);
}

/* ---- hints -------------------------------------------------------------- */

typedef struct {
	xch_req req;
	json_t *header, *claims;
} hint_fx;

static void hint_setup(hint_fx *h, const char *preset_cli)
{
	resolve_ok(NULL, preset_cli, NULL, &h->req);
	h->header = J("{\"alg\":\"RS512\",\"kid\":\"kid-1\",\"typ\":\"JWT\"}");
	h->claims = J("{\"iss\":\"cid\",\"sub\":\"cid\",\"aud\":\"" NHS_URL "\","
		      "\"jti\":\"jti-123\",\"iat\":1700000000,\"exp\":1700000240}");
}

static void hint_teardown(hint_fx *h)
{
	xch_req_clear(&h->req);
	json_decref(h->header);
	json_decref(h->claims);
}

static const char *hint(hint_fx *h, const char *error, const char *desc, char *buf, size_t len)
{
	return xch_hint(&h->req, error, desc, h->header, h->claims, NOW + 5, buf, len);
}

static void assert_has(const char *s, const char *needle)
{
	if (s == NULL || strstr(s, needle) == NULL) {
		print_error("'%s' lacks '%s'\n", s ? s : "(null)", needle);
		fail();
	}
}

static void test_hints(void **state)
{
	hint_fx h;
	char buf[1024];
	const char *s;

	(void)state;
	hint_setup(&h, "{\"preset\":\"nhs\",\"key\":\"nhs-key\",\"client_id\":\"cid\","
		       "\"token_url\":\"" NHS_URL "\",\"scope\":\"sc\"}");

	s = hint(&h, "invalid_request", "Invalid jti claim in JWT - the JTI has already been used",
		 buf, sizeof(buf));
	assert_has(s, "jti-123");
	assert_has(s, "jti");
	s = hint(&h, "invalid_grant", "assertion may be used once", buf, sizeof(buf));
	assert_has(s, "'jti-123'");

	s = hint(&h, "invalid_grant", "jwt expired", buf, sizeof(buf));
	assert_has(s, "clock");
	assert_has(s, "iat=1700000000");
	assert_has(s, "exp=1700000240");
	assert_has(s, "(240 s)");
	assert_has(s, "1700000005");
	assert_has(s, "nhs accepts at most 300 s");

	s = hint(&h, "invalid_request", "Invalid audience in JWT", buf, sizeof(buf));
	assert_has(s, "'" NHS_URL "'");
	assert_has(s, "--aud");

	s = hint(&h, "consent_required", NULL, buf, sizeof(buf));
	assert_has(s, "consent");
	s = hint(&h, "invalid_grant", "user hasn't approved this consumer", buf, sizeof(buf));
	assert_has(s, "consent");

	s = hint(&h, "issuer_not_found", NULL, buf, sizeof(buf));
	assert_has(s, "iss was 'cid'");

	s = hint(&h, "invalid_client", "Client authentication failed", buf, sizeof(buf));
	assert_has(s, "could not authenticate the client");
	assert_has(s, "'nhs-key'");
	assert_has(s, "RS512");
	assert_has(s, "kid 'kid-1'");
	s = hint(&h, "invalid_client", NULL, buf, sizeof(buf));
	assert_has(s, "'nhs-key'");

	s = hint(&h, "invalid_request", "signature verification failed", buf, sizeof(buf));
	assert_has(s, "key 'nhs-key'");
	assert_null(strstr(s, "could not authenticate"));

	s = hint(&h, "invalid_scope", NULL, buf, sizeof(buf));
	assert_has(s, "'sc'");

	assert_null(hint(&h, "server_error", "something odd happened", buf, sizeof(buf)));
	assert_null(hint(&h, "temporarily_unavailable", NULL, buf, sizeof(buf)));
	assert_null(hint(&h, NULL, NULL, buf, sizeof(buf)));

	/* a small buffer is truncated, not overrun */
	{
		char small[16];

		memset(small, 'Z', sizeof(small));
		s = hint(&h, "invalid_client", NULL, small, 12);
		assert_ptr_equal(s, small);
		assert_int_equal(strlen(small), 11);
		assert_int_equal(small[12], 'Z');
	}
	hint_teardown(&h);
}

/* Regression: hint words are matched as words, so the clock rule's "iat"
 * does not fire inside "associated", "appropriate" or "immediately". */
static void test_hint_word_boundaries(void **state)
{
	hint_fx h;
	char buf[1024];
	const char *s;
	bool ok;

	(void)state;
	hint_setup(&h, "{\"preset\":\"okta\",\"key\":\"okta-key\",\"client_id\":\"cid\","
		       "\"token_url\":\"" OKTA_URL "\"}");
	s = hint(&h, "invalid_client",
		 "The client assertion is not associated with a registered client", buf,
		 sizeof(buf));
	ok = s && strstr(s, "could not authenticate the client");
	if (!ok)
		print_error("hint for a text without a time word: %s\n", s ? s : "(null)");
	hint_teardown(&h); /* before failing: no leak */
	assert_true(ok);
}

/* Regression: Google's answer when domain-wide delegation is missing
 * ("unauthorized_client: Client is unauthorized to retrieve access tokens
 * using this method, or client not authorized for any of the scopes
 * requested.") gets the consent/delegation hint that providers.md asks for,
 * not the generic client/key hint. */
static void test_hint_google_delegation(void **state)
{
	hint_fx h;
	char buf[1024];
	const char *s;
	bool ok;

	(void)state;
	hint_setup(&h, "{\"preset\":\"google\",\"key\":\"g\",\"client_id\":\"sa@p.iam\","
		       "\"sub\":\"user@example.com\"}");
	s = hint(&h, "unauthorized_client",
		 "Client is unauthorized to retrieve access tokens using this method, or client "
		 "not authorized for any of the scopes requested.",
		 buf, sizeof(buf));
	ok = s && strstr(s, "consent");
	if (!ok)
		print_error("Google delegation error got: %s\n", s ? s : "(null)");
	hint_teardown(&h); /* before failing: no leak */
	assert_true(ok);
}

/* ---- http helpers -------------------------------------------------------- */

static void test_http_check_url(void **state)
{
	static const char *const ok[] = {
		"https://x",         "https://x.example:8443/p?q=1", "http://127.0.0.1:8080/t",
		"http://127.1.2.3/t", "http://[::1]/t",              "http://[::1]:9000/t",
		"http://localhost/t", "http://LOCALHOST:1/t",
	};
	static const char *const bad[] = {
		"http://example.com/t", "ftp://x",         "not a url", "",
		"http://128.0.0.1/t",   "http://[::2]/t",  "file:///etc/passwd",
		"http://localhost.example.com/t", "http://127.0.0.1.example.com/t",
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(ok); i++)
		if (http_check_url("--token-url", ok[i]) != 0) {
			print_error("'%s' refused: %s\n", ok[i], err_msg());
			fail();
		}
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		if (http_check_url("--token-url", bad[i]) != P11J_E_BAD_REQUEST) {
			print_error("'%s' not refused\n", bad[i]);
			fail();
		}
		assert_msg_has("--token-url");
	}
	assert_int_equal(http_check_url("--token-url", "http://example.com/t"), P11J_E_BAD_REQUEST);
	assert_msg_has("loopback");
}

static void test_http_url_parts(void **state)
{
	char *s = NULL;

	(void)state;
	assert_int_equal(http_url_host("https://account-d.docusign.com/oauth/token", &s), 0);
	assert_string_equal(s, "account-d.docusign.com");
	free(s);
	assert_int_equal(http_url_host("https://h.example:8443/x", &s), 0);
	assert_string_equal(s, "h.example");
	free(s);
	assert_int_equal(http_url_origin("https://login.salesforce.com/services/oauth2/token", &s),
			 0);
	assert_string_equal(s, "https://login.salesforce.com");
	free(s);
	assert_int_equal(http_url_origin("https://h.example:8443/x?y#z", &s), 0);
	assert_string_equal(s, "https://h.example:8443");
	free(s);
	assert_int_equal(http_url_origin("http://127.0.0.1:8080/t", &s), 0);
	assert_string_equal(s, "http://127.0.0.1:8080");
	free(s);
	s = NULL;
	assert_int_equal(http_url_host("not a url", &s), P11J_E_BAD_REQUEST);
	assert_null(s);
	assert_int_equal(http_url_origin("not a url", &s), P11J_E_BAD_REQUEST);
}

static void test_http_retry(void **state)
{
	http_resp resp;

	(void)state;
	memset(&resp, 0, sizeof(resp));
	resp.retry_after = -1;
	assert_int_equal(http_retry_delay_ms(1, P11J_E_CONNECT, &resp, false), 500);
	assert_int_equal(http_retry_delay_ms(2, P11J_E_CONNECT, &resp, false), 1000);
	assert_int_equal(http_retry_delay_ms(3, P11J_E_CONNECT, &resp, false), -1);
	assert_int_equal(http_retry_delay_ms(1, P11J_E_TIMEOUT, &resp, false), 500);
	assert_int_equal(http_retry_delay_ms(1, P11J_E_TLS, &resp, true), -1);
	assert_int_equal(http_retry_delay_ms(1, P11J_E_BAD_RESPONSE, &resp, true), -1);

	resp.status = 429;
	resp.retry_after = 2;
	assert_int_equal(http_retry_delay_ms(1, 0, &resp, false), 2000);
	resp.retry_after = 0;
	assert_int_equal(http_retry_delay_ms(1, 0, &resp, false), 0);
	resp.retry_after = 999;
	assert_int_equal(http_retry_delay_ms(1, 0, &resp, false), -1);
	resp.retry_after = -1;
	assert_int_equal(http_retry_delay_ms(2, 0, &resp, false), 1000);
	assert_int_equal(http_retry_delay_ms(3, 0, &resp, false), -1);

	resp.status = 503;
	assert_int_equal(http_retry_delay_ms(1, 0, &resp, false), -1);
	assert_int_equal(http_retry_delay_ms(1, 0, &resp, true), 500);
	resp.retry_after = 3;
	assert_int_equal(http_retry_delay_ms(1, 0, &resp, true), 3000);
	resp.retry_after = -1;

	resp.status = 400;
	assert_int_equal(http_retry_delay_ms(1, 0, &resp, true), -1);
	resp.status = 200;
	assert_int_equal(http_retry_delay_ms(1, 0, &resp, true), -1);
}

/* ---- refresh form -------------------------------------------------------- */

static void test_refresh_form(void **state)
{
	xch_req req;
	form f;
	bool na = false;

	(void)state;
	resolve_ok(NULL,
		   "{\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\","
		   "\"scope\":\"s\"}",
		   NULL, &req);
	assert_int_equal(xch_refresh_form(&req, "RT1", &f, &na), 0);
	assert_true(na);
	ASSERT_FORM(&f, "grant_type=refresh_token", "refresh_token=RT1",
		    "client_assertion_type=" CA_TYPE, "client_assertion=");
	form_clear(&f);
	xch_req_clear(&req);

	/* Entra: client_id too; a renamed assertion field is used */
	resolve_ok(NULL,
		   "{\"preset\":\"entra\",\"key\":\"k\",\"client_id\":\"app\","
		   "\"token_url\":\"" ENTRA_URL "\",\"assertion_field\":\"ca\"}",
		   NULL, &req);
	assert_int_equal(xch_refresh_form(&req, "RT2", &f, &na), 0);
	assert_true(na);
	ASSERT_FORM(&f, "grant_type=refresh_token", "refresh_token=RT2", "client_id=app",
		    "client_assertion_type=" CA_TYPE, "ca=");
	form_clear(&f);
	xch_req_clear(&req);

	/* jwt-bearer: client_id, no assertion */
	resolve_ok(NULL,
		   "{\"preset\":\"jwt-bearer\",\"key\":\"k\",\"client_id\":\"c\",\"sub\":\"u\","
		   "\"token_url\":\"" AS_URL "\"}",
		   NULL, &req);
	na = true;
	assert_int_equal(xch_refresh_form(&req, "RT3", &f, &na), 0);
	assert_false(na);
	ASSERT_FORM(&f, "grant_type=refresh_token", "refresh_token=RT3", "client_id=c");
	form_clear(&f);
	xch_req_clear(&req);

	/* a secret goes along */
	resolve_ok(NULL,
		   "{\"preset\":\"jwt-bearer\",\"key\":\"k\",\"client_id\":\"c\",\"sub\":\"u\","
		   "\"token_url\":\"" AS_URL "\"}",
		   "sec", &req);
	assert_int_equal(xch_refresh_form(&req, "RT4", &f, &na), 0);
	assert_false(na);
	ASSERT_FORM(&f, "grant_type=refresh_token", "refresh_token=RT4", "client_id=c",
		    "client_secret=sec");
	form_clear(&f);
	xch_req_clear(&req);

	/* Adobe: its own client_id and secret fields */
	resolve_ok(NULL,
		   "{\"preset\":\"adobe\",\"key\":\"k\",\"client_id\":\"c\",\"iss\":\"o\","
		   "\"sub\":\"t\"}",
		   "sec", &req);
	assert_int_equal(xch_refresh_form(&req, "RT5", &f, &na), 0);
	assert_false(na);
	ASSERT_FORM(&f, "grant_type=refresh_token", "refresh_token=RT5", "client_id=c",
		    "client_secret=sec");
	form_clear(&f);
	xch_req_clear(&req);
}


/* --key @active / @next: exactly one key in that state, by the agent's list */
static void test_key_role(void **state)
{
	json_t *keys = json_loads("[{\"name\":\"old\",\"state\":\"retiring\"},"
				  "{\"name\":\"new\",\"state\":\"active\"},"
				  "{\"name\":\"next1\",\"state\":\"next\"},"
				  "{\"name\":\"next2\",\"state\":\"next\"}]", 0, NULL);
	json_t *legacy = json_loads("[{\"name\":\"a\"},{\"name\":\"b\",\"state\":\"next\"}]", 0,
				    NULL);
	json_t *none = json_loads("[{\"name\":\"x\",\"state\":\"retiring\"}]", 0, NULL);
	char *name = NULL;

	(void)state;
	assert_non_null(keys);
	assert_int_equal(xch_key_role(keys, "@active", &name), 0);
	assert_string_equal(name, "new");
	free(name);
	/* two next keys: refused, naming both */
	assert_int_equal(xch_key_role(keys, "@next", &name), P11J_E_BAD_REQUEST);
	assert_null(name);
	assert_non_null(strstr(err_msg(), "2 keys are next (next1, next2): @next needs exactly one"));
	/* keys without a state (an older agent) are active */
	assert_int_equal(xch_key_role(legacy, "@active", &name), 0);
	assert_string_equal(name, "a");
	free(name);
	assert_int_equal(xch_key_role(legacy, "@next", &name), 0);
	assert_string_equal(name, "b");
	free(name);
	/* none in the state */
	assert_int_equal(xch_key_role(none, "@active", &name), P11J_E_NOT_FOUND);
	assert_non_null(strstr(err_msg(), "no key of the agent is active"));
	/* roles that do not exist; a retiring key is never a role */
	assert_int_equal(xch_key_role(keys, "@retiring", &name), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "unknown key role '@retiring' (@active, @next"));
	assert_int_equal(xch_key_role(keys, "@", &name), P11J_E_BAD_REQUEST);
	assert_int_equal(xch_key_role(keys, "@ACTIVE", &name), P11J_E_BAD_REQUEST);
	/* not an array: no key */
	assert_int_equal(xch_key_role(NULL, "@active", &name), P11J_E_NOT_FOUND);
	assert_true(xch_is_role("@active") && !xch_is_role("active") && !xch_is_role(NULL));
	json_decref(keys);
	json_decref(legacy);
	json_decref(none);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_preset_nhs),
		cmocka_unit_test(test_preset_smart),
		cmocka_unit_test(test_preset_entra),
		cmocka_unit_test(test_preset_okta),
		cmocka_unit_test(test_preset_docusign),
		cmocka_unit_test(test_preset_adobe),
		cmocka_unit_test(test_preset_adobe_without_iss),
		cmocka_unit_test(test_preset_google),
		cmocka_unit_test(test_preset_salesforce),
		cmocka_unit_test(test_preset_oracle),
		cmocka_unit_test(test_preset_client_assertion),
		cmocka_unit_test(test_preset_jwt_bearer),
		cmocka_unit_test(test_preset_table),
		cmocka_unit_test(test_alg_for_every_preset_and_key),
		cmocka_unit_test(test_alg_reasons_and_sign_request),
		cmocka_unit_test(test_alg_table_in_docs),
		cmocka_unit_test(test_alg_profile_algs),
		cmocka_unit_test(test_pick_alg),
		cmocka_unit_test(test_sign_request),
		cmocka_unit_test(test_warnings),
		cmocka_unit_test(test_precedence),
		cmocka_unit_test(test_grant_switch),
		cmocka_unit_test(test_assertion_field_and_secret),
		cmocka_unit_test(test_resolve_errors),
		cmocka_unit_test(test_resolve_limits_ok),
		cmocka_unit_test(test_check_options),
		cmocka_unit_test(test_unset_variable_messages),
		cmocka_unit_test(test_profile_errors),
		cmocka_unit_test(test_profile_rebase_and_files),
		cmocka_unit_test(test_profile_templates),
		cmocka_unit_test(test_profile_file_from_env),
		cmocka_unit_test(test_profile_by_name),
		cmocka_unit_test(test_form_encode),
		cmocka_unit_test(test_form_set_del_get),
		cmocka_unit_test(test_tmpl_expand),
		cmocka_unit_test(test_cache_key),
		cmocka_unit_test_setup_teardown(test_cache_open_and_roundtrip, cache_setup,
						cache_teardown),
		cmocka_unit_test_setup_teardown(test_cache_untrusted, cache_setup, cache_teardown),
		cmocka_unit_test_setup_teardown(test_cache_list_clear, cache_setup, cache_teardown),
		cmocka_unit_test_setup_teardown(test_cache_lock, cache_setup, cache_teardown),
		cmocka_unit_test(test_cache_entry_state),
		cmocka_unit_test(test_parse_token_ok),
		cmocka_unit_test(test_parse_token_bad),
		cmocka_unit_test(test_parse_token_oauth_error),
		cmocka_unit_test(test_hints),
		cmocka_unit_test(test_hint_word_boundaries),
		cmocka_unit_test(test_hint_google_delegation),
		cmocka_unit_test(test_http_check_url),
		cmocka_unit_test(test_http_url_parts),
		cmocka_unit_test(test_http_retry),
		cmocka_unit_test(test_refresh_form),
		cmocka_unit_test(test_key_role),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
