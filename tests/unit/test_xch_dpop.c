/* SPDX-License-Identifier: MIT */
/*
 * DPoP in the exchange without I/O: whether a request uses DPoP and with
 * which key (option, profile, preset), the cache key's binding, the token
 * type check, the hints (cli/xch-dpop.c), the cache entries of DPoP tokens
 * and the servers' nonces kept in the cache directory (cli/cache.c).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cache.h"
#include "cli/exchange.h"
#include "common/err.h"
#include "common/util.h"

#define NOW ((int64_t)1700000000)
#define AS_URL "https://as.example/token"
#define BASE "\"key\":\"k\",\"client_id\":\"c\",\"token_url\":\"" AS_URL "\""
#define JKT_A "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
#define JKT_B "0rC7gmQcmHmuRnE80mbe8lvewXzj2ycT9Gf6h2jMRQo"

static json_t *J(const char *s)
{
	json_error_t e;
	json_t *j = json_loads(s, 0, &e);

	if (j == NULL) {
		print_error("bad test JSON %s: %s\n", s, e.text);
		fail();
	}
	return j;
}

static int resolve(const char *profile, const char *cli, xch_req *req)
{
	json_t *p = profile ? J(profile) : NULL, *c = J(cli);
	int r = xch_resolve(p, c, NULL, NOW, req);

	json_decref(p);
	json_decref(c);
	return r;
}

static void resolve_ok(const char *profile, const char *cli, xch_req *req)
{
	if (resolve(profile, cli, req) != 0) {
		print_error("xch_resolve(%s) failed: %s\n", cli, err_msg());
		fail();
	}
}

/* ---- whether and with which key ----------------------------------------- */

static void expect_dpop(const char *profile, const char *cli, bool dpop, const char *key,
			bool from_preset)
{
	xch_req req;

	resolve_ok(profile, cli, &req);
	if (req.dpop != dpop) {
		print_error("%s: dpop %d, expected %d\n", cli, req.dpop, dpop);
		fail();
	}
	if (key)
		assert_string_equal(req.dpop_key, key);
	else
		assert_null(req.dpop_key);
	assert_int_equal(req.dpop_preset, from_preset);
	assert_null(req.dpop_jkt);
	xch_req_clear(&req);
}

static void test_dpop_resolution(void **state)
{
	(void)state;
	/* off by default, on with the option, the signing key by default */
	expect_dpop(NULL, "{" BASE "}", false, NULL, false);
	expect_dpop(NULL, "{" BASE ",\"dpop\":true}", true, "k", false);
	expect_dpop(NULL, "{" BASE ",\"dpop\":false}", false, NULL, false);
	/* --dpop-key names the proof key and implies --dpop ... */
	expect_dpop(NULL, "{" BASE ",\"dpop_key\":\"pk\"}", true, "pk", false);
	/* ... unless --no-dpop says otherwise */
	expect_dpop(NULL, "{" BASE ",\"dpop_key\":\"pk\",\"dpop\":false}", false, NULL, false);
	/* okta: on by default, off with --no-dpop or the profile's false */
	expect_dpop(NULL, "{" BASE ",\"preset\":\"okta\"}", true, "k", true);
	expect_dpop(NULL, "{" BASE ",\"preset\":\"okta\",\"dpop\":false}", false, NULL, false);
	expect_dpop("{\"preset\":\"okta\",\"dpop\":false}", "{" BASE "}", false, NULL, false);
	/* the command line wins over the profile */
	expect_dpop("{\"dpop\":false}", "{" BASE ",\"dpop\":true}", true, "k", false);
	expect_dpop("{\"dpop\":true,\"dpop_key\":\"prof\"}", "{" BASE ",\"dpop_key\":\"cli\"}",
		    true, "cli", false);
	expect_dpop("{\"dpop\":true}", "{" BASE ",\"dpop\":false}", false, NULL, false);
	/* the other presets leave it off */
	expect_dpop(NULL, "{" BASE ",\"preset\":\"smart\"}", false, NULL, false);
	expect_dpop(NULL, "{" BASE ",\"preset\":\"entra\"}", false, NULL, false);
}

static void test_dpop_errors(void **state)
{
	xch_req req;
	json_t *o;

	(void)state;
	/* oracle: the JWT is the token; no token request to prove anything in */
	assert_int_equal(resolve(NULL,
				 "{\"preset\":\"oracle\",\"key\":\"k\",\"client_id\":\"c\","
				 "\"dpop\":true}",
				 &req),
			 P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "preset 'oracle' makes the signed JWT itself the token"));
	/* types */
	o = J("{\"dpop\":\"yes\"}");
	assert_int_equal(xch_check_options(o, "profile x"), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "'dpop' must be true or false"));
	json_decref(o);
	o = J("{\"dpop_key\":true}");
	assert_int_equal(xch_check_options(o, "profile x"), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "'dpop_key' must be a string"));
	json_decref(o);
	o = J("{\"dpop\":false,\"dpop_key\":\"k\"}");
	assert_int_equal(xch_check_options(o, "profile x"), 0);
	json_decref(o);
}

/* ---- the cache key ------------------------------------------------------ */

static void key_of(const char *cli, const char *jkt, char out[65])
{
	xch_req req;

	resolve_ok(NULL, cli, &req);
	if (jkt)
		req.dpop_jkt = strdup(jkt);
	assert_int_equal(xch_cache_key(&req, out), 0);
	xch_req_clear(&req);
}

static void test_dpop_cache_key(void **state)
{
	char bearer[65], bearer2[65], a[65], a2[65], b[65], other[65];
	xch_req req;

	(void)state;
	key_of("{" BASE "}", NULL, bearer);
	key_of("{" BASE ",\"dpop\":false}", NULL, bearer2);
	key_of("{" BASE ",\"dpop\":true}", JKT_A, a);
	key_of("{" BASE ",\"dpop_key\":\"k\"}", JKT_A, a2);
	key_of("{" BASE ",\"dpop\":true}", JKT_B, b);
	key_of("{" BASE ",\"dpop_key\":\"other\"}", JKT_A, other);
	/* bearer and DPoP never share an entry; neither do two proof keys */
	assert_string_equal(bearer, bearer2);
	assert_string_not_equal(bearer, a);
	assert_string_not_equal(a, b);
	/* the binding is the key's thumbprint, not its name */
	assert_string_equal(a, a2);
	assert_string_equal(a, other);
	/* a DPoP request's key cannot be made without its binding */
	resolve_ok(NULL, "{" BASE ",\"dpop\":true}", &req);
	assert_int_equal(xch_cache_key(&req, a), P11J_E_INTERNAL);
	xch_req_clear(&req);
}

/* ---- the token type ----------------------------------------------------- */

static void test_token_type(void **state)
{
	xch_req bearer, dpop;
	xch_token t = { 0 };

	(void)state;
	resolve_ok(NULL, "{" BASE "}", &bearer);
	resolve_ok(NULL, "{" BASE ",\"dpop\":true}", &dpop);
	t.token_type = NULL; /* absent: Bearer */
	assert_int_equal(xch_check_token_type(&bearer, &t), 0);
	assert_int_equal(xch_check_token_type(&dpop, &t), P11J_E_BAD_RESPONSE);
	assert_non_null(strstr(err_msg(), "issued token_type 'Bearer', not DPoP"));
	assert_non_null(strstr(err_msg(), "not bound to key 'k'"));
	t.token_type = "bearer";
	assert_int_equal(xch_check_token_type(&bearer, &t), 0);
	assert_int_equal(xch_check_token_type(&dpop, &t), P11J_E_BAD_RESPONSE);
	t.token_type = "DPoP";
	assert_int_equal(xch_check_token_type(&dpop, &t), 0);
	assert_int_equal(xch_check_token_type(&bearer, &t), P11J_E_BAD_RESPONSE);
	assert_non_null(strstr(err_msg(), "(add --dpop)"));
	t.token_type = "dpop"; /* RFC 6749 7.1: case-insensitive */
	assert_int_equal(xch_check_token_type(&dpop, &t), 0);
	t.token_type = "N_A";
	assert_int_equal(xch_check_token_type(&dpop, &t), P11J_E_BAD_RESPONSE);
	xch_req_clear(&bearer);
	xch_req_clear(&dpop);
}

/* ---- hints -------------------------------------------------------------- */

static void test_dpop_hints(void **state)
{
	xch_req bearer, dpop;
	char buf[1024];
	const char *h;

	(void)state;
	resolve_ok(NULL, "{" BASE "}", &bearer);
	resolve_ok(NULL, "{" BASE ",\"dpop_key\":\"pk\"}", &dpop);

	assert_true(xch_dpop_related("invalid_dpop_proof", NULL));
	assert_true(xch_dpop_related("use_dpop_nonce", "x"));
	assert_true(xch_dpop_related("invalid_grant", "DPoP proof JWT Replay detected"));
	assert_false(xch_dpop_related("invalid_grant", "assertion expired"));
	assert_false(xch_dpop_related(NULL, NULL));

	/* without --dpop: the client may require it */
	for (size_t i = 0; i < 3; i++) {
		static const char *const e[] = { "invalid_grant", "invalid_request",
						 "invalid_client" /* it names DPoP */ };

		h = xch_dpop_hint(&bearer, e[i], "DPoP proof JWT not provided", NULL, NULL, buf,
				  sizeof(buf));
		assert_non_null(h);
		assert_non_null(strstr(h, "add --dpop"));
		assert_non_null(strstr(h, "dpop = yes"));
	}
	assert_null(xch_dpop_hint(&bearer, "invalid_scope", "no such scope", NULL, NULL, buf,
				  sizeof(buf)));
	/* invalid_client is about the assertion, unless it names DPoP */
	assert_null(xch_dpop_hint(&bearer, "invalid_client", "invalid assertion aud", NULL, NULL,
				  buf, sizeof(buf)));
	assert_non_null(xch_dpop_hint(&bearer, "invalid_grant", "assertion aud mismatch", NULL,
				      NULL, buf, sizeof(buf)));
	assert_null(xch_dpop_hint(&bearer, NULL, NULL, NULL, NULL, buf, sizeof(buf)));
	/* with --dpop, a refused proof: the server's algs when known */
	h = xch_dpop_hint(&dpop, "invalid_dpop_proof", "invalid DPoP key binding", "PS256",
			  "ES256 EdDSA", buf, sizeof(buf));
	assert_non_null(h);
	assert_non_null(strstr(h, "signed with PS256 by key 'pk'"));
	assert_non_null(strstr(h, "dpop_signing_alg_values_supported: ES256 EdDSA"));
	h = xch_dpop_hint(&dpop, "invalid_dpop_proof", NULL, "ES256", "ES256 EdDSA", buf,
			  sizeof(buf));
	assert_non_null(strstr(h, "the server accepts ES256 for proofs"));
	assert_non_null(strstr(h, "clock"));
	h = xch_dpop_hint(&dpop, "invalid_dpop_proof", NULL, "ES256", NULL, buf, sizeof(buf));
	assert_non_null(strstr(h, "could not read it"));
	assert_non_null(strstr(h, "ES256"));
	/* the nonce asked for again after the retry */
	h = xch_dpop_hint(&dpop, "use_dpop_nonce", NULL, "ES256", NULL, buf, sizeof(buf));
	assert_non_null(strstr(h, "asked for a DPoP nonce again"));
	/* with --dpop, an error that is not about DPoP: the usual hints */
	assert_null(xch_dpop_hint(&dpop, "invalid_grant", "assertion expired", "ES256", NULL, buf,
				  sizeof(buf)));
	/* a small buffer truncates, never overflows */
	h = xch_dpop_hint(&dpop, "invalid_dpop_proof", NULL, "PS256", "ES256", buf, 16);
	assert_int_equal(strlen(h), 15);
	xch_req_clear(&bearer);
	xch_req_clear(&dpop);
}

static void test_api_hints(void **state)
{
	xch_req dpop;
	char buf[512];
	const char *h;

	(void)state;
	resolve_ok(NULL, "{" BASE ",\"dpop\":true}", &dpop);
	h = xch_api_dpop_hint(&dpop, true, 401, "DPoP error=\"use_dpop_nonce\"", buf, sizeof(buf));
	assert_non_null(h);
	assert_non_null(strstr(h, "asked for a DPoP nonce again"));
	h = xch_api_dpop_hint(&dpop, true, 401,
			      "Bearer realm=\"x\", DPoP error=\"invalid_dpop_proof\"", buf,
			      sizeof(buf));
	assert_non_null(strstr(h, "refused the DPoP proof of key 'k'"));
	assert_null(xch_api_dpop_hint(&dpop, true, 401, "DPoP error=\"invalid_token\"", buf,
				      sizeof(buf)));
	assert_null(xch_api_dpop_hint(&dpop, true, 403, "DPoP error=\"use_dpop_nonce\"", buf,
				      sizeof(buf)));
	assert_null(xch_api_dpop_hint(&dpop, true, 401, NULL, buf, sizeof(buf)));
	/* a bearer token at an API that challenges with DPoP */
	h = xch_api_dpop_hint(&dpop, false, 401, "DPoP algs=\"ES256\"", buf, sizeof(buf));
	assert_non_null(strstr(h, "add --dpop"));
	assert_non_null(xch_api_dpop_hint(&dpop, false, 401, "DPoP", buf, sizeof(buf)));
	assert_null(xch_api_dpop_hint(&dpop, false, 401, "DPoPx", buf, sizeof(buf)));
	assert_null(xch_api_dpop_hint(&dpop, false, 401, "Bearer error=\"invalid_token\"", buf,
				      sizeof(buf)));
	xch_req_clear(&dpop);
}

/* ---- cache entries and nonces ------------------------------------------- */

static char rt_dir[64];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int cache_setup(void **state)
{
	static tcache c;

	snprintf(rt_dir, sizeof(rt_dir), "/tmp/p11j-xdpop-XXXXXX");
	if (mkdtemp(rt_dir) == NULL)
		return -1;
	setenv("XDG_RUNTIME_DIR", rt_dir, 1);
	if (cache_open(&c) != 0)
		return -1;
	*state = &c;
	return 0;
}

static int cache_teardown(void **state)
{
	(void)state;
	nftw(rt_dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	unsetenv("XDG_RUNTIME_DIR");
	return 0;
}

static void test_dpop_cache_entries(void **state)
{
	static const char *const good[] = {
		"{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1}",
		"{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1,\"token_type\":\"Bearer\"}",
		"{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1,\"token_type\":\"DPoP\","
		"\"jkt\":\"" JKT_A "\"}",
		"{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1,\"token_type\":\"dpop\","
		"\"jkt\":\"" JKT_A "\"}",
	};
	static const char *const bad[] = {
		/* a DPoP token without its binding is refused */
		"{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1,\"token_type\":\"DPoP\"}",
		"{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1,\"token_type\":\"DPoP\","
		"\"jkt\":7}",
		"{\"v\":1,\"access_token\":\"AT\",\"obtained_at\":1,\"token_type\":1}",
	};
	json_t *e;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
		assert_int_equal(cache_entry_parse(good[i], strlen(good[i]), &e), 0);
		assert_int_equal(cache_entry_is_dpop(e), i >= 2);
		json_decref(e);
	}
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		e = NULL;
		assert_int_equal(cache_entry_parse(bad[i], strlen(bad[i]), &e),
				 P11J_E_BAD_RESPONSE);
		assert_null(e);
	}
}

static void test_dpop_nonces(void **state)
{
	tcache *c = *state;
	char *n = NULL, path[PATH_MAX];
	json_t *list = NULL;
	struct stat st;
	int skipped = -1, removed = -1;
	FILE *f;

	assert_int_equal(cache_nonce_get(c, "https://as.example", &n), P11J_E_NOT_FOUND);
	assert_null(n);
	assert_int_equal(cache_nonce_put(c, "https://as.example", "n-1", NOW), 0);
	assert_int_equal(cache_nonce_put(c, "https://rs.example:8443", "rs-1", NOW), 0);
	assert_int_equal(cache_nonce_get(c, "https://as.example", &n), 0);
	assert_string_equal(n, "n-1");
	free(n);
	/* the latest wins */
	assert_int_equal(cache_nonce_put(c, "https://as.example", "n-2", NOW + 1), 0);
	assert_int_equal(cache_nonce_get(c, "https://as.example", &n), 0);
	assert_string_equal(n, "n-2");
	free(n);
	assert_int_equal(cache_nonce_get(c, "https://rs.example:8443", &n), 0);
	assert_string_equal(n, "rs-1");
	free(n);
	/* per origin: another port is another server */
	assert_int_equal(cache_nonce_get(c, "https://rs.example", &n), P11J_E_NOT_FOUND);
	/* what is not a nonce (RFC 9449 NQCHAR) is not kept */
	assert_int_equal(cache_nonce_put(c, "https://as.example", "a b", NOW), P11J_E_BAD_REQUEST);
	assert_int_equal(cache_nonce_put(c, "https://as.example", "q\"", NOW), P11J_E_BAD_REQUEST);
	assert_int_equal(cache_nonce_put(c, "https://as.example", "", NOW), P11J_E_BAD_REQUEST);
	assert_int_equal(cache_nonce_get(c, "https://as.example", &n), 0);
	assert_string_equal(n, "n-2");
	free(n);

	/* the files: 0600, ours; nonces are not tokens: list skips them */
	{
		unsigned char found = 0;
		char cmd[PATH_MAX + 64];

		snprintf(cmd, sizeof(cmd), "ls %s | grep -c '\\.nonce$'", c->dir);
		f = popen(cmd, "r");
		assert_non_null(f);
		assert_int_equal(fscanf(f, "%hhu", &found), 1);
		pclose(f);
		assert_int_equal(found, 2);
	}
	assert_int_equal(cache_list(c, &list, &skipped), 0);
	assert_int_equal(json_array_size(list), 0);
	assert_int_equal(skipped, 0);
	json_decref(list);

	/* a file that names another origin (copied or planted) is refused */
	{
		char *other = NULL;
		DIR *d;
		struct dirent *de;

		assert_int_equal(cache_nonce_put(c, "https://evil.example", "e-1", NOW), 0);
		/* find it: the one whose content names evil */
		d = opendir(c->dir);
		assert_non_null(d);
		while ((de = readdir(d)) != NULL) {
			char buf[512] = { 0 };

			if (strstr(de->d_name, ".nonce") == NULL)
				continue;
			snprintf(path, sizeof(path), "%s/%s", c->dir, de->d_name);
			f = fopen(path, "r");
			assert_non_null(f);
			if (fread(buf, 1, sizeof(buf) - 1, f) > 0 && strstr(buf, "evil")) {
				fclose(f);
				break;
			}
			fclose(f);
		}
		closedir(d);
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 0777, 0600);
		f = fopen(path, "w");
		fputs("{\"v\":1,\"origin\":\"https://as.example\",\"nonce\":\"x\",\"at\":1}", f);
		fclose(f);
		assert_int_equal(cache_nonce_get(c, "https://evil.example", &other),
				 P11J_E_BAD_RESPONSE);
		assert_null(other);
		/* a loose mode is not trusted */
		assert_int_equal(cache_nonce_put(c, "https://evil.example", "e-2", NOW), 0);
		assert_int_equal(chmod(path, 0644), 0);
		assert_int_equal(cache_nonce_get(c, "https://evil.example", &other),
				 P11J_E_INSECURE);
	}
	/* clear removes them */
	assert_int_equal(cache_clear(c, &removed), 0);
	assert_int_equal(removed, 0); /* entries only are counted */
	assert_int_equal(cache_nonce_get(c, "https://as.example", &n), P11J_E_NOT_FOUND);
	assert_int_equal(cache_nonce_get(c, "https://rs.example:8443", &n), P11J_E_NOT_FOUND);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dpop_resolution),
		cmocka_unit_test(test_dpop_errors),
		cmocka_unit_test(test_dpop_cache_key),
		cmocka_unit_test(test_token_type),
		cmocka_unit_test(test_dpop_hints),
		cmocka_unit_test(test_api_hints),
		cmocka_unit_test_setup_teardown(test_dpop_cache_entries, cache_setup, cache_teardown),
		cmocka_unit_test_setup_teardown(test_dpop_nonces, cache_setup, cache_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
