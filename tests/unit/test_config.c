/* SPDX-License-Identifier: MIT */
/*
 * The configuration file (agent/config.c) and the per-key policy it sets
 * (agent/policy.c), driven through proto_handle() with software keys.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "agent/config.h"
#include "agent/keyring.h"
#include "agent/policy.h"
#include "agent/proto.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/b64url.h"
#include "jose/jwk.h"
#include "support/softsign.h"

#define NOW 1700000000

static int64_t fixed_now(void)
{
	return NOW;
}

/* ---- parsing ---------------------------------------------------------- */

static cfg_config *load_ok(const char *text)
{
	cfg_config *c = NULL;
	char *errs = NULL;
	int r = cfg_load_string("t.conf", text, strlen(text), &c, &errs);

	if (r != 0)
		fail_msg("unexpected errors:\n%s", errs ? errs : err_msg());
	assert_null(errs);
	return c;
}

/* Load text that must fail; returns the error lines (free them). */
static char *load_bad(const char *text)
{
	cfg_config *c = NULL;
	char *errs = NULL;

	assert_int_equal(cfg_load_string("t.conf", text, strlen(text), &c, &errs),
			 P11J_E_BAD_REQUEST);
	assert_null(c);
	assert_non_null(errs);
	return errs;
}

static void expect_line(const char *errs, const char *want)
{
	if (strstr(errs, want) == NULL)
		fail_msg("errors lack '%s':\n%s", want, errs);
}

static size_t count_lines(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static const char full_conf[] =
	"# a comment\n"
	"; another\n"
	"[agent]\n"
	"socket = /run/p11jwt/agent.sock\n"
	"max_connections = 50\n"
	"workers = 3\n"
	"line_timeout = 7 ; inline comment\n"
	"\n"
	"[token hsm]\n"
	"module = /usr/lib/softhsm/libsofthsm2.so\n"
	"uri = pkcs11:token=p11jwt-test\n"
	"pin_file = /etc/p11jwt/pin\n"
	"module_allow = /opt/a /opt/b\n"
	"module_allow = /opt/c\n"
	"\n"
	"[key nhs-int]\n"
	"token = hsm\n"
	"uri = pkcs11:object=rsa-2048;id=%01\n"
	"algs = RS512\n"
	"alg = RS512\n"
	"kid = id\n"
	"uids = 0, nobody 4242\n"
	"gids = nogroup\n"
	"max_lifetime = 300\n"
	"iss = client-1\n"
	"sub = client-1\n"
	"aud = https://int.api.service.nhs.uk/oauth2/token \"https://*.example/x y\"\n"
	"   https://third.example\n"
	"deny_header = jku x5u jwk kid\n"
	"include = x5t x5t#S256\n"
	"include_auto = x5t\n"
	"\n"
	"[key plain]\n"
	"object = ec-p256\n"
	"kid = fixed:my-kid\n";

static void test_parse_full(void **state)
{
	cfg_config *c = load_ok(full_conf);
	const cfg_key *k;

	(void)state;
	assert_string_equal(c->socket, "/run/p11jwt/agent.sock");
	assert_int_equal(c->max_connections, 50);
	assert_int_equal(c->workers, 3);
	assert_int_equal(c->line_timeout, 7);
	assert_int_equal(c->ntokens, 1);
	assert_string_equal(c->tokens[0].name, "hsm");
	assert_int_equal(c->tokens[0].line, 9);
	assert_string_equal(c->tokens[0].module, "/usr/lib/softhsm/libsofthsm2.so");
	assert_string_equal(c->tokens[0].uri, "pkcs11:token=p11jwt-test");
	assert_string_equal(c->tokens[0].pin_file, "/etc/p11jwt/pin");
	assert_int_equal(c->tokens[0].module_allow.n, 3);
	assert_string_equal(c->tokens[0].module_allow.v[2], "/opt/c");
	assert_int_equal(c->nkeys, 2);
	k = cfg_find_key(c, "nhs-int");
	assert_non_null(k);
	assert_int_equal(k->line, 16);
	assert_string_equal(k->token, "hsm");
	assert_int_equal(k->pol.algs, JWA_BIT(JWA_RS512));
	assert_int_equal(k->alg, JWA_RS512);
	assert_int_equal(k->kid_mode, CFG_KID_ID);
	/* uids and gids resolved at load, names and numbers */
	assert_int_equal(k->pol.nuids, 3);
	assert_int_equal(k->pol.uids[0], 0);
	assert_int_equal(k->pol.uids[1], 65534);
	assert_int_equal(k->pol.uids[2], 4242);
	assert_int_equal(k->pol.ngids, 1);
	assert_int_equal(k->pol.gids[0], 65534);
	assert_int_equal(k->pol.max_lifetime, 300);
	assert_int_equal(k->pol.iss.n, 1);
	/* a quoted item keeps its blank; an indented line continues the list */
	assert_int_equal(k->pol.aud.n, 3);
	assert_string_equal(k->pol.aud.v[1], "https://*.example/x y");
	assert_string_equal(k->pol.aud.v[2], "https://third.example");
	assert_int_equal(k->pol.deny_header.n, 4);
	assert_int_equal(k->pol.include, POL_INC_X5T | POL_INC_X5T_S256);
	assert_int_equal(k->pol.include_auto, POL_INC_X5T);
	k = cfg_find_key(c, "plain");
	assert_string_equal(k->object, "ec-p256");
	assert_int_equal(k->kid_mode, CFG_KID_FIXED);
	assert_string_equal(k->kid, "my-kid");
	assert_null(cfg_find_key(c, "nope"));
	cfg_free(c);
}

static void test_defaults(void **state)
{
	cfg_config *c = load_ok("[key k]\nobject = x\n[key d]\nobject = y\ndeny_header = none\n"
				"kid = thumbprint\n");
	const cfg_key *k = cfg_find_key(c, "k");

	(void)state;
	assert_null(c->socket);
	assert_int_equal(c->max_connections, 0);
	assert_int_equal(c->idle_timeout, 0);
	assert_int_equal(c->max_connections_per_uid, 0);
	assert_int_equal(c->ntokens, 0);
	assert_int_equal(k->pol.algs, 0);
	assert_int_equal(k->alg, JWA_NONE);
	assert_int_equal(k->kid_mode, CFG_KID_THUMBPRINT);
	assert_int_equal(k->pol.nuids + k->pol.ngids, 0);
	assert_int_equal(k->pol.max_lifetime, POL_DEFAULT_MAX_LIFETIME);
	assert_int_equal(k->pol.deny_header.n, 3);
	assert_string_equal(k->pol.deny_header.v[0], "jku");
	assert_string_equal(k->pol.deny_header.v[1], "x5u");
	assert_string_equal(k->pol.deny_header.v[2], "jwk");
	assert_int_equal(k->pol.include, POL_INC_ALL);
	assert_int_equal(k->pol.include_auto, 0);
	assert_int_equal(cfg_find_key(c, "d")->pol.deny_header.n, 0);
	cfg_free(c);
	/* an empty file is valid */
	c = load_ok("");
	assert_int_equal(c->nkeys, 0);
	cfg_free(c);
}

/* Every error of a file, each with its line. */
static void test_every_error_with_line(void **state)
{
	static const char text[] =
		"name = outside\n"                             /* 1 */
		"[agent]\n"                                    /* 2 */
		"workers = 0\n"                                /* 3 */
		"max_connections = lots\n"                     /* 4 */
		"bogus = 1\n"                                  /* 5 */
		"socket = relative.sock\n"                     /* 6 */
		"[frob]\n"                                     /* 7 */
		"x = 1\n"                                      /* 8 */
		"[token t1]\n"                                 /* 9 */
		"module = lib.so\n"                            /* 10 */
		"uri = http://x\n"                             /* 11 */
		"allow_unsafe_keys = maybe\n"                  /* 12 */
		"[token t1]\n"                                 /* 13 */
		"[key k1]\n"                                   /* 14 */
		"object = a\n"                                 /* 15 */
		"algs = RS256 XS999\n"                         /* 16 */
		"alg = none\n"                                 /* 17 */
		"uids = no-such-user-p11j\n"                   /* 18 */
		"gids = no-such-group-p11j\n"                  /* 19 */
		"max_lifetime = 86401\n"                       /* 20 */
		"aud = https://[unclosed\n"                    /* 21 */
		"token = t9\n"                                 /* 22 */
		"object = b\n"                                 /* 23 */
		"include = x5t x5q\n"                          /* 24 */
		"this line has no equals sign\n"               /* 25 */
		"[key k1]\n"                                   /* 26 */
		"[key]\n"                                      /* 27 */
		"[key k2\n"                                    /* 28 */
		"[key k3]\n"                                   /* 29 */
		"kid = \n"                                     /* 30 */
		"[key k4]\n"                                   /* 31 */
		"uri = pkcs11:token=x\n"                       /* 32 */
		"algs = ES256\n"                               /* 33 */
		"alg = ES384\n"                                /* 34 */
		"include = x5t\n"                              /* 35 */
		"include_auto = x5c\n"                         /* 36 */
		"deny_header = alg\n";                         /* 37 */
	char *errs = load_bad(text);

	(void)state;
	expect_line(errs, "t.conf:1: setting 'name' outside a section");
	expect_line(errs, "t.conf:3: 'workers' must be a whole number from 1 to 64, not '0'");
	expect_line(errs, "t.conf:4: 'max_connections' must be a whole number");
	expect_line(errs, "t.conf:5: unknown setting 'bogus' in [agent]");
	expect_line(errs, "t.conf:6: 'socket' must be an absolute path");
	expect_line(errs, "t.conf:7: unknown section [frob]");
	expect_line(errs, "t.conf:10: 'module' must be an absolute path");
	expect_line(errs, "t.conf:11: 'uri' must be a PKCS#11 URI");
	expect_line(errs, "t.conf:12: 'allow_unsafe_keys' must be yes or no");
	expect_line(errs, "t.conf:13: duplicate [token t1] (first at line 9)");
	expect_line(errs, "t.conf:16: unknown alg 'XS999'");
	expect_line(errs, "t.conf:17: unknown alg 'none'");
	expect_line(errs, "t.conf:18: unknown user 'no-such-user-p11j'");
	expect_line(errs, "t.conf:19: unknown group 'no-such-group-p11j'");
	expect_line(errs, "t.conf:20: 'max_lifetime' must be a whole number from 1 to 86400");
	expect_line(errs, "t.conf:21: bad glob 'https://[unclosed'");
	expect_line(errs, "t.conf:22: [key k1] names token 't9', which has no [token] section");
	expect_line(errs, "t.conf:23: 'object' given twice in [key k1] (first at line 15)");
	expect_line(errs, "t.conf:24: unknown certificate member 'x5q'");
	expect_line(errs, "t.conf:25: expected '[section]' or 'name = value'");
	expect_line(errs, "t.conf:26: duplicate [key k1] (first at line 14)");
	expect_line(errs, "t.conf:27: [key] needs a name");
	expect_line(errs, "t.conf:28: missing ']'");
	expect_line(errs, "t.conf:29: [key k3] needs 'uri' or 'object'");
	expect_line(errs, "t.conf:30: 'kid' has no value");
	expect_line(errs, "t.conf:31: [key k4]: 'uri' names no object= or id=");
	expect_line(errs, "t.conf:31: [key k4]: 'alg' ES384 is not in 'algs'");
	expect_line(errs, "t.conf:37: 'alg' cannot be denied");
	assert_int_equal(count_lines(errs), 28);
	free(errs);
}

static void test_more_errors(void **state)
{
	char long_line[300], *errs;

	(void)state;
	/* two tokens: a key must say which */
	errs = load_bad("[token a]\n[token b]\n[key k]\nobject = x\n");
	expect_line(errs, "t.conf:3: [key k]: 2 tokens are defined; name one with 'token'");
	assert_int_equal(count_lines(errs), 1);
	free(errs);
	/* both uri and object; scalar twice in [agent]; [agent] twice */
	errs = load_bad("[agent]\nworkers = 2\nworkers = 3\n[agent]\n[key k]\nobject = x\n"
			"uri = pkcs11:object=x\n");
	expect_line(errs, "t.conf:3: 'workers' given twice in [agent] (first at line 2)");
	expect_line(errs, "t.conf:4: duplicate [agent] (first at line 1)");
	expect_line(errs, "t.conf:5: [key k] has both 'uri' and 'object'");
	free(errs);
	/* the connection limits: ranges, once each */
	{
		cfg_config *c = load_ok("[agent]\nidle_timeout = 120\n"
					"max_connections_per_uid = 5\n");

		assert_int_equal(c->idle_timeout, 120);
		assert_int_equal(c->max_connections_per_uid, 5);
		cfg_free(c);
	}
	errs = load_bad("[agent]\nidle_timeout = 0\nidle_timeout = 86401\n"
			"max_connections_per_uid = 65537\nmax_connections_per_uid = 2\n"
			"max_connections_per_uid = 3\n");
	expect_line(errs, "t.conf:2: 'idle_timeout' must be a whole number from 1 to 86400");
	expect_line(errs, "t.conf:3: 'idle_timeout' given twice in [agent] (first at line 2)");
	expect_line(errs, "t.conf:4: 'max_connections_per_uid' must be a whole number from 1 to "
			  "65536");
	expect_line(errs, "t.conf:5: 'max_connections_per_uid' given twice in [agent]");
	free(errs);
	/* a line longer than inih's buffer is reported, not split */
	memset(long_line, 'a', sizeof(long_line));
	memcpy(long_line, "[key k]\nobject = ", 17);
	strcpy(long_line + 280, "\n");
	errs = load_bad(long_line);
	expect_line(errs, "t.conf:2: line is longer than");
	free(errs);
	/* a bad name */
	errs = load_bad("[key a/b]\nobject = x\n");
	expect_line(errs, "t.conf:1: [key] needs a name of 1 to 64");
	free(errs);
	/* kid too long */
	memset(long_line, 'k', sizeof(long_line));
	errs = load_bad("[key k]\nobject = x\nuids = 99999999999999999999\n");
	expect_line(errs, "t.conf:3: uid 99999999999999999999 is out of range");
	free(errs);
}

/* [token] module_init_args: the module's C_Initialize parameters, kept
 * verbatim ('=' and ':' inside), once, printable, and only with a module
 * path; a change makes a reload open the token again. */
static void test_module_init_args(void **state)
{
	static const char good[] =
		"[token nss]\n"
		"module = /usr/lib/x86_64-linux-gnu/libsoftokn3.so\n"
		"module_init_args = configdir='sql:/var/lib/p11jwt/nssdb' certPrefix='' "
		"keyPrefix='' secmod='secmod.db' flags=readOnly\n"
		"[token viauri]\n"
		"uri = pkcs11:token=x?module-path=/usr/lib/x86_64-linux-gnu/libsoftokn3.so\n"
		"module_init_args = configdir='sql:/tmp/db'\n"
		"[token plain]\n"
		"module = /usr/lib/softhsm/libsofthsm2.so\n"
		"[key k]\n"
		"token = nss\n"
		"object = k\n";
	cfg_config *c, *d;
	const char *e;
	char *errs;

	(void)state;
	c = load_ok(good);
	assert_int_equal(c->ntokens, 3);
	assert_string_equal(c->tokens[0].module_init_args,
			    "configdir='sql:/var/lib/p11jwt/nssdb' certPrefix='' keyPrefix='' "
			    "secmod='secmod.db' flags=readOnly");
	assert_string_equal(c->tokens[1].module_init_args, "configdir='sql:/tmp/db'");
	assert_null(c->tokens[2].module_init_args);
	assert_true(cfg_token_same(&c->tokens[0], &c->tokens[0]));
	d = load_ok(good);
	free(d->tokens[0].module_init_args);
	d->tokens[0].module_init_args = strdup("configdir='sql:/elsewhere'");
	assert_false(cfg_token_same(&c->tokens[0], &d->tokens[0]));
	free(d->tokens[0].module_init_args);
	d->tokens[0].module_init_args = NULL;
	assert_false(cfg_token_same(&c->tokens[0], &d->tokens[0]));
	cfg_free(d);
	cfg_free(c);

	errs = load_bad("[token a]\n"
			"module = /usr/lib/x.so\n"
			"module_init_args = configdir='sql:/a'\n"
			"module_init_args = configdir='sql:/b'\n"
			"[token b]\n"
			"module = /usr/lib/y.so\n"
			"module_init_args =\n"
			"[token c]\n"
			"module = /usr/lib/z.so\n"
			"module_init_args = a\tb\n"
			"[token d]\n"
			"uri = pkcs11:token=d\n"
			"module_init_args = configdir='sql:/d'\n"
			"[token e]\n"
			"module = /usr/lib/e.so\n"
			"module_init_arg = typo\n");
	e = errs != NULL ? errs : ""; /* (load_bad asserted it; GCC cannot tell) */
	expect_line(e, "t.conf:4: 'module_init_args' given twice in [token a] (first at "
			  "line 3)");
	expect_line(e, "t.conf:7: 'module_init_args' has no value");
	expect_line(e, "t.conf:10: 'module_init_args' must not hold control characters");
	expect_line(e, "t.conf:13: [token d]: 'module_init_args' needs 'module'");
	expect_line(e, "t.conf:16: unknown setting 'module_init_arg' in [token e] (module, "
			  "uri, pin_file, module_allow, module_init_args, allow_unsafe_keys)");
	assert_int_equal(count_lines(e), 5);
	free(errs);
}

static void test_file_and_check_config(void **state)
{
	const char *bdir = getenv("P11JWT_BUILDDIR");
	char dir[] = "/tmp/p11j-cfg-XXXXXX", good[64], bad[64], agent[512], cmd[1200];
	cfg_config *c = NULL;
	char *errs = NULL;
	FILE *f;
	int st;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(good, sizeof(good), "%s/good.conf", dir);
	snprintf(bad, sizeof(bad), "%s/bad.conf", dir);
	f = fopen(good, "w");
	fputs(full_conf, f);
	fclose(f);
	f = fopen(bad, "w");
	fputs("[key k]\nobject = x\nalgs = HS256\n\n[nope]\n", f);
	fclose(f);
	assert_int_equal(cfg_load(good, &c, &errs), 0);
	assert_int_equal(c->nkeys, 2);
	cfg_free(c);
	c = NULL;
	assert_int_equal(cfg_load(bad, &c, &errs), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(errs, "bad.conf:3: unknown alg 'HS256'"));
	assert_non_null(strstr(errs, "bad.conf:5: unknown section [nope]"));
	free(errs);
	snprintf(cmd, sizeof(cmd), "%s/missing.conf", dir);
	assert_int_equal(cfg_load(cmd, &c, &errs), P11J_E_NOT_FOUND);
	assert_null(errs);

	/* the agent's --check-config: exit 0 / 2, errors on stderr */
	if (bdir != NULL) {
		snprintf(agent, sizeof(agent), "%s/agent/p11jwt-agent", bdir);
		snprintf(cmd, sizeof(cmd), "%s --check-config %s >%s/out 2>&1", agent, good, dir);
		st = system(cmd);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 0);
		snprintf(cmd, sizeof(cmd), "%s --check-config %s >%s/out 2>&1", agent, bad, dir);
		st = system(cmd);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 2);
		snprintf(cmd, sizeof(cmd), "grep -q '^%s:5: unknown section' %s/out", bad, dir);
		assert_int_equal(system(cmd), 0);
		snprintf(cmd, sizeof(cmd), "grep -q '^%s:3: unknown alg' %s/out", bad, dir);
		assert_int_equal(system(cmd), 0);
		snprintf(cmd, sizeof(cmd), "%s --check-config %s/missing.conf 2>/dev/null", agent, dir);
		st = system(cmd);
		assert_int_equal(WEXITSTATUS(st), 2);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void test_globs(void **state)
{
	(void)state;
	assert_true(pol_is_glob("https://*.x"));
	assert_true(pol_is_glob("a?"));
	assert_true(pol_is_glob("[ab]"));
	assert_false(pol_is_glob("https://exact"));
}

/* ---- policy through proto_handle() ----------------------------------- */

static keyring kr;
static EVP_PKEY *pk[3];
static uint8_t *cert_der;
static int cert_len;
static cfg_config *pcfg;
static proto_env env;
static const proto_peer owner = { .uid = 1000, .gid = 1000, .pid = 1 };
static const proto_peer svc = { .uid = 2000, .gid = 2000, .pid = 2 };
static const proto_peer grp = { .uid = 2001, .gid = 3000, .pid = 3 };
static const proto_peer stranger = { .uid = 2002, .gid = 2002, .pid = 4 };
static const proto_peer root = { .uid = 0, .gid = 0, .pid = 5 };

static const char policy_conf[] =
	"[key nhs-int]\n"
	"object = rsa\n"
	"algs = RS512\n"
	"uids = 2000\n"
	"max_lifetime = 300\n"
	"iss = client-1\n"
	"sub = client-*\n"
	"aud = https://int.api.service.nhs.uk/oauth2/token https://*.example.org/token\n"
	"kid = fixed:nhs-kid-1\n"
	"include = x5t\n"
	"include_auto = x5t#S256\n"
	"[key group]\n"
	"object = p256\n"
	"gids = 3000\n"
	"kid = id\n"
	"max_lifetime = 86400\n"
	"deny_header = jku x5u jwk typ\n"
	"[key mine]\n"
	"object = ed\n";

static int setup(void **state)
{
	char *errs = NULL;
	kr_key *k;

	(void)state;
	pk[0] = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	pk[1] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	pk[2] = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	if (pk[0] == NULL || pk[1] == NULL || pk[2] == NULL || softsign_cert(pk[0], &cert_der, &cert_len) < 0)
		return -1;
	if (cfg_load_string("p.conf", policy_conf, strlen(policy_conf), &pcfg, &errs) < 0) {
		fprintf(stderr, "%s", errs);
		return -1;
	}
	/* what the agent does with a token's keys (agent/reload.c), by hand */
	if (kr_add(&kr, "nhs-int", "pkcs11:object=rsa", pk[0], cert_der, (size_t)cert_len, 0,
		   softsign_fn, pk[0]) < 0 ||
	    kr_add(&kr, "group", "pkcs11:object=p256", pk[1], NULL, 0, 0, softsign_fn, pk[1]) < 0 ||
	    kr_add(&kr, "mine", "pkcs11:object=ed", pk[2], NULL, 0, 0, softsign_fn, pk[2]) < 0)
		return -1;
	k = (kr_key *)kr_find(&kr, "nhs-int");
	if (kr_key_configure(k, &cfg_find_key(pcfg, "nhs-int")->pol, JWA_NONE, "nhs-kid-1") < 0)
		return -1;
	k = (kr_key *)kr_find(&kr, "group");
	if (kr_key_configure(k, &cfg_find_key(pcfg, "group")->pol, JWA_NONE, "02") < 0)
		return -1;
	k = (kr_key *)kr_find(&kr, "mine");
	if (kr_key_configure(k, &cfg_find_key(pcfg, "mine")->pol, JWA_NONE, NULL) < 0)
		return -1;
	kr_sort(&kr);
	env.kr = &kr;
	env.owner_uid = 1000;
	env.version = "test";
	util_set_clock(fixed_now);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	kr_free(&kr);
	cfg_free(pcfg);
	for (int i = 0; i < 3; i++)
		EVP_PKEY_free(pk[i]);
	OPENSSL_free(cert_der);
	util_set_clock(NULL);
	return 0;
}

static json_t *call_as(const proto_peer *peer, const char *line)
{
	char *resp = NULL;
	size_t rlen = 0;
	json_t *v;

	assert_int_equal(proto_handle(&env, peer, line, strlen(line), &resp, &rlen), 0);
	v = json_loadb(resp, rlen, 0, NULL);
	assert_non_null(v);
	free(resp);
	return v;
}

static void expect_err(const proto_peer *peer, const char *line, const char *code,
		       const char *msg)
{
	json_t *v = call_as(peer, line), *e = json_object_get(v, "error");
	const char *m = json_string_value(json_object_get(e, "message"));

	if (!json_is_false(json_object_get(v, "ok")))
		fail_msg("'%s' was accepted", line);
	assert_string_equal(json_string_value(json_object_get(e, "code")), code);
	if (msg != NULL && (m == NULL || strcmp(m, msg) != 0))
		fail_msg("message '%s', wanted '%s'", m ? m : "(none)", msg);
	json_decref(v);
}

/* Sign and return the JWT's decoded header (and the payload in *claims). */
static json_t *sign_ok(const proto_peer *peer, const char *line, json_t **claims)
{
	json_t *v = call_as(peer, line), *h;
	const char *jwt = json_string_value(json_object_get(v, "jwt")), *dot;
	uint8_t *buf = NULL;
	size_t len = 0;

	if (!json_is_true(json_object_get(v, "ok")))
		fail_msg("'%s' refused: %s", line,
			 json_string_value(json_object_get(json_object_get(v, "error"), "message")));
	dot = strchr(jwt, '.');
	assert_int_equal(b64u_decode(jwt, (size_t)(dot - jwt), &buf, &len), 0);
	h = json_loadb((const char *)buf, len, 0, NULL);
	free(buf);
	if (claims != NULL) {
		const char *dot2 = strchr(dot + 1, '.');

		assert_int_equal(b64u_decode(dot + 1, (size_t)(dot2 - dot - 1), &buf, &len), 0);
		*claims = json_loadb((const char *)buf, len, 0, NULL);
		free(buf);
	}
	json_decref(v);
	assert_non_null(h);
	return h;
}

#define NHS_OK "\"claims\":{\"iss\":\"client-1\",\"sub\":\"client-1\"," \
	       "\"aud\":\"https://int.api.service.nhs.uk/oauth2/token\"}"

static void test_alg_policy(void **state)
{
	json_t *h;

	(void)state;
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"alg\":\"RS256\"," NHS_OK "}",
		   "policy_violation", "alg RS256 not allowed for key nhs-int (allowed: RS512)");
	expect_err(&owner, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"alg\":\"PS512\"," NHS_OK "}",
		   "policy_violation", "alg PS512 not allowed for key nhs-int (allowed: RS512)");
	/* an alg the key cannot do at all is still unsupported_alg */
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"alg\":\"ES256\"," NHS_OK "}",
		   "unsupported_alg", NULL);
	/* the default alg follows the policy */
	h = sign_ok(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\"," NHS_OK "}", NULL);
	assert_string_equal(json_string_value(json_object_get(h, "alg")), "RS512");
	json_decref(h);
}

static void test_lifetime_policy(void **state)
{
	json_t *h, *c = NULL;

	(void)state;
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"lifetime\":301," NHS_OK "}",
		   "policy_violation", "key nhs-int: lifetime 301 over the key's max_lifetime 300");
	h = sign_ok(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"lifetime\":300," NHS_OK "}", &c);
	assert_int_equal(json_integer_value(json_object_get(c, "exp")), NOW + 300);
	json_decref(h);
	json_decref(c);
	/* exp set by the caller counts from now */
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		   "\"sub\":\"client-1\",\"aud\":\"https://int.api.service.nhs.uk/oauth2/token\","
		   "\"exp\":1700000301}}", "policy_violation",
		   "key nhs-int: claim exp is 301 s from now, over the key's max_lifetime 300");
	/* so does an iat in the future */
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		   "\"sub\":\"client-1\",\"aud\":\"https://int.api.service.nhs.uk/oauth2/token\","
		   "\"iat\":1700001000}}", "policy_violation", NULL);
	/* a key without max_lifetime: the default, 3600 */
	expect_err(&owner, "{\"op\":\"sign\",\"key\":\"mine\",\"lifetime\":3601}", "policy_violation",
		   "key mine: lifetime 3601 over the key's max_lifetime 3600");
	h = sign_ok(&owner, "{\"op\":\"sign\",\"key\":\"mine\",\"lifetime\":3600}", NULL);
	json_decref(h);
	/* a max_lifetime up to 86400 is honoured; beyond is a bad request */
	h = sign_ok(&grp, "{\"op\":\"sign\",\"key\":\"group\",\"lifetime\":86400}", NULL);
	json_decref(h);
	expect_err(&grp, "{\"op\":\"sign\",\"key\":\"group\",\"lifetime\":86401}", "bad_request", NULL);
}

static void test_claim_policy(void **state)
{
	json_t *h;

	(void)state;
	/* exact and glob matches */
	h = sign_ok(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		    "\"sub\":\"client-77\",\"aud\":\"https://a.example.org/token\"}}", NULL);
	json_decref(h);
	/* aud as an array: every element must match */
	h = sign_ok(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		    "\"sub\":\"client-1\",\"aud\":[\"https://int.api.service.nhs.uk/oauth2/token\","
		    "\"https://b.example.org/token\"]}}", NULL);
	json_decref(h);
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		   "\"sub\":\"client-1\",\"aud\":[\"https://int.api.service.nhs.uk/oauth2/token\","
		   "\"https://x\"]}}", "policy_violation",
		   "key nhs-int: claim aud 'https://x' does not match any allowed value (policy aud)");
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		   "\"sub\":\"client-1\",\"aud\":\"https://x\"}}", "policy_violation",
		   "key nhs-int: claim aud 'https://x' does not match any allowed value (policy aud)");
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		   "\"sub\":\"client-1\",\"aud\":[]}}", "policy_violation", NULL);
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		   "\"sub\":\"client-1\",\"aud\":[\"https://a.example.org/token\",5]}}",
		   "policy_violation", NULL);
	/* the glob does not match a different path, and '*' is not a prefix match */
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		   "\"sub\":\"client-1\",\"aud\":\"https://a.example.org/token2\"}}",
		   "policy_violation", NULL);
	/* iss exact: a glob-looking value is not a pattern there */
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-2\","
		   "\"sub\":\"client-1\",\"aud\":\"https://a.example.org/token\"}}", "policy_violation",
		   "key nhs-int: claim iss 'client-2' does not match any allowed value (policy iss)");
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":\"client-1\","
		   "\"sub\":\"other\",\"aud\":\"https://a.example.org/token\"}}", "policy_violation",
		   "key nhs-int: claim sub 'other' does not match any allowed value (policy sub)");
	/* a required claim that is missing, or not a string */
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"sub\":\"client-1\","
		   "\"aud\":\"https://a.example.org/token\"}}", "policy_violation",
		   "key nhs-int: claim iss is required (policy iss)");
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"claims\":{\"iss\":[\"client-1\"],"
		   "\"sub\":\"client-1\",\"aud\":\"https://a.example.org/token\"}}",
		   "policy_violation", NULL);
	/* keys without claim rules take any */
	h = sign_ok(&owner, "{\"op\":\"sign\",\"key\":\"mine\",\"claims\":{\"iss\":\"x\",\"aud\":[]}}",
		    NULL);
	json_decref(h);
}

static void test_header_policy(void **state)
{
	json_t *h;

	(void)state;
	/* the defaults: jku, x5u and jwk */
	expect_err(&owner, "{\"op\":\"sign\",\"key\":\"mine\",\"header\":{\"jku\":\"https://e/k\"}}",
		   "policy_violation",
		   "key mine: header parameter jku may not be set by clients (policy deny_header)");
	expect_err(&owner, "{\"op\":\"sign\",\"key\":\"mine\",\"header\":{\"x5u\":\"https://e\"}}",
		   "policy_violation", NULL);
	expect_err(&owner, "{\"op\":\"sign\",\"key\":\"mine\",\"header\":{\"jwk\":{}}}",
		   "policy_violation", NULL);
	h = sign_ok(&owner, "{\"op\":\"sign\",\"key\":\"mine\",\"header\":{\"typ\":\"at+jwt\"}}", NULL);
	assert_string_equal(json_string_value(json_object_get(h, "typ")), "at+jwt");
	json_decref(h);
	/* a configured list */
	expect_err(&grp, "{\"op\":\"sign\",\"key\":\"group\",\"header\":{\"typ\":\"x\"}}",
		   "policy_violation",
		   "key group: header parameter typ may not be set by clients (policy deny_header)");
	/* certificate members: allowed, refused, added */
	h = sign_ok(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"include\":[\"x5t\"]," NHS_OK "}",
		    NULL);
	assert_non_null(json_object_get(h, "x5t"));
	assert_non_null(json_object_get(h, "x5t#S256")); /* include_auto */
	assert_null(json_object_get(h, "x5c"));
	json_decref(h);
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\",\"include\":[\"x5c\"]," NHS_OK "}",
		   "policy_violation", "key nhs-int: x5c may not be included (policy include)");
}

static void test_peers(void **state)
{
	json_t *v, *keys;

	(void)state;
	/* uids: allowed on its key, forbidden on the others */
	v = sign_ok(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\"," NHS_OK "}", NULL);
	json_decref(v);
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"mine\"}", "forbidden",
		   "uid 2000 (gid 2000) may not use key 'mine' (policy uids, gids)");
	expect_err(&svc, "{\"op\":\"sign\",\"key\":\"group\"}", "forbidden", NULL);
	/* gids */
	v = sign_ok(&grp, "{\"op\":\"sign\",\"key\":\"group\"}", NULL);
	json_decref(v);
	expect_err(&grp, "{\"op\":\"sign\",\"key\":\"nhs-int\"," NHS_OK "}", "forbidden", NULL);
	/* a uid no key allows learns nothing */
	expect_err(&stranger, "{\"op\":\"keys\"}", "forbidden", NULL);
	expect_err(&stranger, "{\"op\":\"sign\",\"key\":\"nhs-int\"," NHS_OK "}", "forbidden",
		   "uid 2002 may not use this agent (it serves uid 1000)");
	/* the owner and root use every key (a key without rules: only them) */
	v = sign_ok(&owner, "{\"op\":\"sign\",\"key\":\"mine\"}", NULL);
	json_decref(v);
	v = sign_ok(&root, "{\"op\":\"sign\",\"key\":\"group\"}", NULL);
	json_decref(v);
	/* login, lock and status stay the owner's */
	expect_err(&svc, "{\"op\":\"status\"}", "forbidden", NULL);

	/* keys and jwks list what the peer may use */
	v = call_as(&svc, "{\"op\":\"keys\"}");
	keys = json_object_get(v, "keys");
	assert_int_equal(json_array_size(keys), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(keys, 0), "name")),
			    "nhs-int");
	json_decref(v);
	v = call_as(&svc, "{\"op\":\"jwks\"}");
	keys = json_object_get(v, "keys");
	assert_int_equal(json_array_size(keys), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(keys, 0), "kid")),
			    "nhs-kid-1");
	json_decref(v);
	expect_err(&svc, "{\"op\":\"jwks\",\"key\":\"mine\"}", "forbidden", NULL);
	v = call_as(&grp, "{\"op\":\"keys\"}");
	assert_int_equal(json_array_size(json_object_get(v, "keys")), 1);
	json_decref(v);
	v = call_as(&owner, "{\"op\":\"keys\"}");
	assert_int_equal(json_array_size(json_object_get(v, "keys")), 3);
	json_decref(v);
	v = call_as(&owner, "{\"op\":\"jwks\"}");
	assert_int_equal(json_array_size(json_object_get(v, "keys")), 3);
	json_decref(v);
}

static void test_kid_modes(void **state)
{
	json_t *v, *h, *keys, *e;
	char *thp = NULL;
	size_t i;

	(void)state;
	/* fixed and id kids in the JWT header, the JWKS and the keys op;
	 * the default stays the RFC 7638 thumbprint */
	h = sign_ok(&svc, "{\"op\":\"sign\",\"key\":\"nhs-int\"," NHS_OK "}", NULL);
	assert_string_equal(json_string_value(json_object_get(h, "kid")), "nhs-kid-1");
	json_decref(h);
	h = sign_ok(&grp, "{\"op\":\"sign\",\"key\":\"group\"}", NULL);
	assert_string_equal(json_string_value(json_object_get(h, "kid")), "02");
	json_decref(h);
	v = call_as(&owner, "{\"op\":\"jwks\"}");
	keys = json_object_get(v, "keys");
	json_array_foreach(keys, i, e) {
		const char *kid = json_string_value(json_object_get(e, "kid"));

		if (strcmp(json_string_value(json_object_get(e, "kty")), "RSA") == 0) {
			assert_string_equal(kid, "nhs-kid-1");
			assert_string_equal(json_string_value(json_object_get(e, "alg")), "RS512");
		} else if (strcmp(json_string_value(json_object_get(e, "kty")), "EC") == 0) {
			assert_string_equal(kid, "02");
		} else {
			json_t *pub = json_copy(e);

			json_object_del(pub, "kid");
			json_object_del(pub, "alg");
			json_object_del(pub, "use");
			assert_int_equal(jwk_thumbprint(pub, &thp), 0);
			assert_string_equal(kid, thp);
			free(thp);
			json_decref(pub);
		}
	}
	json_decref(v);
	v = call_as(&owner, "{\"op\":\"keys\"}");
	keys = json_object_get(v, "keys");
	json_array_foreach(keys, i, e)
		if (strcmp(json_string_value(json_object_get(e, "name")), "nhs-int") == 0) {
			assert_string_equal(json_string_value(json_object_get(e, "kid")), "nhs-kid-1");
			assert_string_equal(json_string_value(json_object_get(e, "alg")), "RS512");
		}
	json_decref(v);
}

/* Rotation states: state and retire_after in [key] sections, and the rule
 * a retiring key follows once its date has passed. */
static void test_key_states(void **state)
{
	static const char text[] = "[key a]\nobject = a\n"
				   "[key b]\nobject = b\nstate = next\n"
				   "[key c]\nobject = c\nstate = retiring\nretire_after = 2027-01-31\n"
				   "[key d]\nobject = d\nstate = retiring\n"
				   "retire_after = 2027-01-31T10:00:00.5-02:30\n";
	cfg_config *cfg = NULL;
	char *errs = NULL;
	unsigned inc = 0;
	json_t *claims = json_pack("{s:i,s:i}", "iat", 1800000000, "exp", 1800000060);
	const pol_key *c;

	(void)state;
	assert_int_equal(cfg_load_string("s.conf", text, strlen(text), &cfg, &errs), 0);
	assert_int_equal(cfg_find_key(cfg, "a")->pol.state, POL_STATE_ACTIVE);
	assert_int_equal(cfg_find_key(cfg, "b")->pol.state, POL_STATE_NEXT);
	c = &cfg_find_key(cfg, "c")->pol;
	assert_int_equal(c->state, POL_STATE_RETIRING);
	assert_int_equal(c->retire_after, 1801353600); /* 2027-01-31T00:00:00Z */
	assert_int_equal(cfg_find_key(cfg, "d")->pol.retire_after, 1801353600 + 12 * 3600 + 1800);
	/* signs before its date, not from it on */
	assert_int_equal(pol_check_sign(c, "c", JWA_BIT(JWA_ES256), JWA_ES256, NULL, 60, claims,
					1801353599, &inc), 0);
	assert_int_equal(pol_check_sign(c, "c", JWA_BIT(JWA_ES256), JWA_ES256, NULL, 60, claims,
					1801353600, &inc), P11J_E_POLICY);
	assert_non_null(strstr(err_msg(), "key c is retiring and signs nothing after "
				      "2027-01-31T00:00:00Z"));
	assert_int_equal(pol_check_state(c, "c", 1801353600), P11J_E_POLICY);
	/* next and active keys are never refused for their state */
	assert_int_equal(pol_check_state(&cfg_find_key(cfg, "b")->pol, "b", INT64_MAX), 0);
	assert_int_equal(pol_check_state(NULL, "x", INT64_MAX), 0);
	json_decref(claims);
	cfg_free(cfg);
}

/* Without rules (pol NULL): the agent's uid and root, 3600 s, no jku. */
static void test_no_policy_defaults(void **state)
{
	(void)state;
	assert_true(pol_may_use(NULL, 1000, 1000, 5));
	assert_true(pol_may_use(NULL, 1000, 0, 5));
	assert_false(pol_may_use(NULL, 1000, 1001, 1000));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_full),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_every_error_with_line),
		cmocka_unit_test(test_more_errors),
		cmocka_unit_test(test_module_init_args),
		cmocka_unit_test(test_file_and_check_config),
		cmocka_unit_test(test_globs),
		cmocka_unit_test(test_no_policy_defaults),
		cmocka_unit_test(test_alg_policy),
		cmocka_unit_test(test_lifetime_policy),
		cmocka_unit_test(test_claim_policy),
		cmocka_unit_test(test_header_policy),
		cmocka_unit_test(test_peers),
		cmocka_unit_test(test_kid_modes),
		cmocka_unit_test(test_key_states),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
