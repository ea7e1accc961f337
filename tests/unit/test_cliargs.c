/* SPDX-License-Identifier: MIT */
/* cli_core: k=v pairs, JSON files, socket path, the agent client against an
 * in-process fake agent, and the time formatting of `p11jwt decode`. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/agc.h"
#include "common/sockdir.h"
#include "cli/kv.h"
#include "cli/timefmt.h"
#include "common/err.h"
#include "common/util.h"

/* ---- k=v ---------------------------------------------------------------- */

static json_t *parse_ok(const char *const *pairs, size_t n)
{
	json_t *o = json_object();

	assert_non_null(o);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(kv_parse(o, pairs[i]), 0);
	return o;
}

static void assert_json(const json_t *v, const char *expect)
{
	json_error_t e;
	json_t *x = json_loads(expect, JSON_DECODE_ANY, &e);

	assert_non_null(x);
	if (!json_equal(v, x)) {
		char *got = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

		print_error("got %s, expected %s\n", got ? got : "(null)", expect);
		free(got);
		json_decref(x);
		fail();
	}
	json_decref(x);
}

static void test_kv_types(void **state)
{
	static const char *const p[] = {
		"iss=me",
		"exp:=1700000000",
		"aud:=[\"a\",\"b\"]",
		"cnf:={\"jkt\": \"x\"}",
		"scope=a b",
		"flag:=true",
		"nothing:=null",
		"ratio:=0.5",
		"num=42", /* = keeps a string */
		"empty=",
	};
	json_t *o;

	(void)state;
	o = parse_ok(p, ARRAY_SIZE(p));
	assert_json(o, "{\"iss\":\"me\",\"exp\":1700000000,\"aud\":[\"a\",\"b\"],"
		       "\"cnf\":{\"jkt\":\"x\"},\"scope\":\"a b\",\"flag\":true,\"nothing\":null,"
		       "\"ratio\":0.5,\"num\":\"42\",\"empty\":\"\"}");
	json_decref(o);
}

static void test_kv_split_at_first_equals(void **state)
{
	static const char *const p[] = {
		"aud=https://x.example/t?a=b&c=d",
		"k=a:=b",           /* := later in the value is just text */
		"q:=\"x=y\"",       /* = inside the JSON */
		"url=",             /* empty string */
		"name=é✓ 中文",     /* UTF-8 value */
		"clé=v",            /* UTF-8 name */
		"a:b=c",            /* a ':' not right before '=' stays in the name */
	};
	json_t *o;

	(void)state;
	o = parse_ok(p, ARRAY_SIZE(p));
	assert_json(o, "{\"aud\":\"https://x.example/t?a=b&c=d\",\"k\":\"a:=b\",\"q\":\"x=y\","
		       "\"url\":\"\",\"name\":\"é✓ 中文\",\"clé\":\"v\",\"a:b\":\"c\"}");
	json_decref(o);
}

static void test_kv_override_order(void **state)
{
	static const char *const p[] = { "x=1", "y=keep", "x:=2", "x=3" };
	json_t *o;

	(void)state;
	o = parse_ok(p, ARRAY_SIZE(p));
	assert_json(o, "{\"x\":\"3\",\"y\":\"keep\"}");
	/* a pair replaces a member that came from a file the same way */
	assert_int_equal(kv_parse(o, "y:=[1]"), 0);
	assert_json(json_object_get(o, "y"), "[1]");
	json_decref(o);
}

static void expect_kv_error(const char *arg, const char *needle)
{
	json_t *o = json_pack("{s:s}", "before", "x");

	assert_int_equal(kv_parse(o, arg), P11J_E_BAD_REQUEST);
	if (strstr(err_msg(), needle) == NULL) {
		print_error("'%s': message '%s' lacks '%s'\n", arg, err_msg(), needle);
		fail();
	}
	/* nothing half-done */
	assert_int_equal(json_object_size(o), 1);
	json_decref(o);
}

static void test_kv_errors(void **state)
{
	(void)state;
	expect_kv_error("novalue", "'novalue' is not NAME=VALUE");
	expect_kv_error("", "no '='");
	expect_kv_error("=v", "empty name in '=v'");
	expect_kv_error(":=1", "empty name in ':=1'");
	expect_kv_error("a:={", "'a:={': the value after := is not JSON");
	expect_kv_error("a:=[1,", "'a:=[1,'");
	expect_kv_error("a:=", "not JSON");           /* empty JSON */
	expect_kv_error("a:=abc", "not JSON");        /* bare word: use a=abc */
	expect_kv_error("a:={\"k\":1,\"k\":2}", "duplicate");
	expect_kv_error("bad=\xff\xfe", "not valid UTF-8");
	expect_kv_error("\xff=v", "not valid UTF-8");
}

/* ---- JSON files --------------------------------------------------------- */

static char tmpdir[64];
static uid_t me; /* the uid an agent may run as in these tests */

static int dir_setup(void **state)
{
	(void)state;
	me = geteuid();
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/p11j-cliargs-XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int dir_teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static const char *write_file(const char *name, const char *text, size_t len)
{
	static char path[128];
	FILE *f;

	if (len == (size_t)-1)
		len = strlen(text);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	return path;
}

static void test_file_object(void **state)
{
	const char *path = write_file("claims.json", "{\n \"iss\": \"me\",\n \"n\": 1\n}\n", (size_t)-1);
	json_t *o = NULL;

	(void)state;
	assert_int_equal(kv_load_file(path, &o), 0);
	assert_json(o, "{\"iss\":\"me\",\"n\":1}");
	/* pairs override the file */
	assert_int_equal(kv_parse(o, "iss=you"), 0);
	assert_json(o, "{\"iss\":\"you\",\"n\":1}");
	json_decref(o);
}

static void expect_file_error(const char *path, int code, const char *needle)
{
	json_t *o = (json_t *)0x1;

	assert_int_equal(kv_load_file(path, &o), code);
	assert_ptr_equal(o, (json_t *)0x1); /* untouched */
	if (strstr(err_msg(), needle) == NULL) {
		print_error("message '%s' lacks '%s'\n", err_msg(), needle);
		fail();
	}
}

static void test_file_errors(void **state)
{
	char want[160], *big;
	const char *path;

	(void)state;
	path = write_file("array.json", "[1, 2]", 6);
	snprintf(want, sizeof(want), "%s: must hold a JSON object", path);
	expect_file_error(path, P11J_E_BAD_REQUEST, want);

	path = write_file("bad.json", "{\n  \"a\": 1,\n  \"b\": tru\n}\n", (size_t)-1);
	snprintf(want, sizeof(want), "%s:3:", path); /* line 3 */
	expect_file_error(path, P11J_E_BAD_REQUEST, want);

	path = write_file("scalar.json", "42", 2);
	expect_file_error(path, P11J_E_BAD_REQUEST, "scalar.json:1:");

	path = write_file("empty.json", "", 0);
	expect_file_error(path, P11J_E_BAD_REQUEST, "empty.json:");

	path = write_file("dup.json", "{\"a\":1,\"a\":2}", (size_t)-1);
	expect_file_error(path, P11J_E_BAD_REQUEST, "duplicate");

	snprintf(want, sizeof(want), "%s/missing.json", tmpdir);
	expect_file_error(want, P11J_E_NOT_FOUND, "missing.json");

	/* 1 MiB of object is fine, one byte more is not */
	big = malloc(KV_FILE_MAX + 1);
	assert_non_null(big);
	memset(big, ' ', KV_FILE_MAX + 1);
	memcpy(big, "{\"a\":1}", 7);
	path = write_file("max.json", big, KV_FILE_MAX);
	{
		json_t *o = NULL;

		assert_int_equal(kv_load_file(path, &o), 0);
		json_decref(o);
	}
	path = write_file("big.json", big, KV_FILE_MAX + 1);
	expect_file_error(path, P11J_E_REQUEST_TOO_LARGE, "big.json");
	free(big);
}

/* ---- socket path -------------------------------------------------------- */

static void test_socket_path_order(void **state)
{
	char buf[108], want[64];

	(void)state;
	setenv("P11JWT_AGENT_SOCK", "/env/s", 1);
	setenv("XDG_RUNTIME_DIR", "/run/user/7", 1);
	assert_int_equal(agc_socket_path("/opt/s", buf, sizeof(buf)), 0);
	assert_string_equal(buf, "/opt/s");
	assert_int_equal(agc_socket_path("", buf, sizeof(buf)), 0); /* empty: not given */
	assert_string_equal(buf, "/env/s");
	assert_int_equal(agc_socket_path(NULL, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "/env/s");

	setenv("P11JWT_AGENT_SOCK", "", 1); /* empty: not set */
	assert_int_equal(agc_socket_path(NULL, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "/run/user/7/p11jwt/agent.sock");
	unsetenv("P11JWT_AGENT_SOCK");
	assert_int_equal(agc_socket_path(NULL, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "/run/user/7/p11jwt/agent.sock");

	snprintf(want, sizeof(want), "/tmp/p11jwt-%u/agent.sock", (unsigned)getuid());
	setenv("XDG_RUNTIME_DIR", "relative/dir", 1); /* not trusted */
	assert_int_equal(agc_socket_path(NULL, buf, sizeof(buf)), 0);
	assert_string_equal(buf, want);
	unsetenv("XDG_RUNTIME_DIR");
	assert_int_equal(agc_socket_path(NULL, buf, sizeof(buf)), 0);
	assert_string_equal(buf, want);
}

static void test_socket_path_too_long(void **state)
{
	char lng[200], buf[512];
	json_t *req, *resp = NULL;

	(void)state;
	memset(lng, 'a', sizeof(lng) - 1);
	lng[0] = '/';
	lng[sizeof(lng) - 1] = '\0';
	strcpy(buf, "unchanged");
	assert_int_equal(agc_socket_path(lng, buf, sizeof(buf)), P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "longer than"));
	/* a small caller buffer is refused, not overrun */
	assert_int_equal(agc_socket_path("/a/b/c/d", buf, 4), P11J_E_BAD_REQUEST);
	/* agc_call checks too */
	req = json_object();
	assert_int_equal(agc_call(lng, &me, 1, req, 1000, &resp, NULL), P11J_E_BAD_REQUEST);
	assert_null(resp);
	json_decref(req);
}

/* ---- agent client against a fake agent ---------------------------------- */

enum fake_mode {
	FAKE_ECHO,         /* {"id": ID, "ok": true, "echo": <the request>} */
	FAKE_WRONG_ID,     /* ok: true with another id */
	FAKE_WRONG_ID_ERR, /* ok: false with another (non-null) id */
	FAKE_NOT_JSON,
	FAKE_NOT_OBJECT,
	FAKE_NO_OK,
	FAKE_AGENT_ERROR,  /* unknown_key with a message */
	FAKE_NULL_ID_ERROR,/* bad_request with id null (agent could not read it) */
	FAKE_UNKNOWN_CODE,
	FAKE_ERROR_NO_CODE,
	FAKE_CLOSE,        /* read, then close without answering */
	FAKE_PARTIAL,      /* half a line, then close */
	FAKE_SILENT,       /* never answer */
	FAKE_EXACT_MAX,    /* a valid answer of exactly AGC_MAX_RESPONSE bytes */
	FAKE_OVER_MAX,     /* one byte more */
	FAKE_HUGE_NO_NL,   /* 2 MiB without a newline */
	FAKE_SPLIT,        /* the answer in many small writes, then trailing junk */
};

typedef struct {
	int lfd;
	enum fake_mode mode;
	char path[108];
	char got[4096]; /* the request line as received */
	size_t got_len;
	pthread_t th;
} fake_agent;

static void put(int fd, const char *s, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, s, len, MSG_NOSIGNAL);

		if (n <= 0)
			return; /* the client gave up: fine */
		s += n;
		len -= (size_t)n;
	}
}

static char *padded_answer(const char *id, size_t total)
{
	/* {"id":ID,"ok":true,"pad":"xxx"} + '\n', total bytes before the '\n' */
	char head[128];
	size_t hl = (size_t)snprintf(head, sizeof(head), "{\"id\":%s,\"ok\":true,\"pad\":\"", id);
	char *s = malloc(total + 2);

	assert_non_null(s);
	memcpy(s, head, hl);
	memset(s + hl, 'x', total - hl - 2);
	memcpy(s + total - 2, "\"}\n", 4);
	return s;
}

static void *fake_main(void *arg)
{
	fake_agent *fa = arg;
	json_t *req = NULL;
	char *id = NULL, *out = NULL;
	int fd = accept(fa->lfd, NULL, NULL);

	if (fd < 0)
		return NULL;
	/* read the request line */
	while (fa->got_len < sizeof(fa->got) - 1) {
		ssize_t n = recv(fd, fa->got + fa->got_len, sizeof(fa->got) - 1 - fa->got_len, 0);

		if (n <= 0)
			break;
		fa->got_len += (size_t)n;
		if (memchr(fa->got, '\n', fa->got_len))
			break;
	}
	fa->got[fa->got_len] = '\0';
	req = json_loads(fa->got, JSON_DISABLE_EOF_CHECK, NULL);
	id = json_dumps(json_object_get(req, "id"), JSON_ENCODE_ANY | JSON_COMPACT);
	if (id == NULL)
		id = strdup("null");

	switch (fa->mode) {
	case FAKE_ECHO: {
		char *echo = json_dumps(req, JSON_COMPACT);

		if (asprintf(&out, "{\"id\":%s,\"ok\":true,\"echo\":%s}\n", id, echo) < 0)
			out = NULL;
		free(echo);
		break;
	}
	case FAKE_WRONG_ID:
		out = strdup("{\"id\":\"someone-else\",\"ok\":true,\"keys\":[]}\n");
		break;
	case FAKE_WRONG_ID_ERR:
		out = strdup("{\"id\":\"someone-else\",\"ok\":false,\"error\":{\"code\":\"forbidden\","
			     "\"message\":\"no\"}}\n");
		break;
	case FAKE_NOT_JSON:
		out = strdup("hello, I am not an agent\n");
		break;
	case FAKE_NOT_OBJECT:
		out = strdup("[1,2,3]\n");
		break;
	case FAKE_NO_OK:
		if (asprintf(&out, "{\"id\":%s,\"keys\":[]}\n", id) < 0)
			out = NULL;
		break;
	case FAKE_AGENT_ERROR:
		if (asprintf(&out, "{\"id\":%s,\"ok\":false,\"error\":{\"code\":\"unknown_key\","
				   "\"message\":\"no key named 'x'\"}}\n", id) < 0)
			out = NULL;
		break;
	case FAKE_NULL_ID_ERROR:
		out = strdup("{\"id\":null,\"ok\":false,\"error\":{\"code\":\"bad_request\","
			     "\"message\":\"request is not JSON\"}}\n");
		break;
	case FAKE_UNKNOWN_CODE:
		if (asprintf(&out, "{\"id\":%s,\"ok\":false,\"error\":{\"code\":\"from_the_future\","
				   "\"message\":\"new thing\"}}\n", id) < 0)
			out = NULL;
		break;
	case FAKE_ERROR_NO_CODE:
		if (asprintf(&out, "{\"id\":%s,\"ok\":false,\"error\":{\"message\":\"?\"}}\n", id) < 0)
			out = NULL;
		break;
	case FAKE_CLOSE:
	case FAKE_SILENT:
		break;
	case FAKE_PARTIAL:
		out = strdup("{\"id\":");
		break;
	case FAKE_EXACT_MAX:
		out = padded_answer(id, AGC_MAX_RESPONSE);
		break;
	case FAKE_OVER_MAX:
		out = padded_answer(id, AGC_MAX_RESPONSE + 1);
		break;
	case FAKE_HUGE_NO_NL:
		out = malloc(2 * AGC_MAX_RESPONSE + 1);
		if (out) {
			memset(out, ' ', 2 * AGC_MAX_RESPONSE);
			out[2 * AGC_MAX_RESPONSE] = '\0';
		}
		break;
	case FAKE_SPLIT:
		if (asprintf(&out, "{\"id\":%s,\"ok\":true,\"n\":7}\n{\"junk\":", id) < 0)
			out = NULL;
		break;
	}
	if (fa->mode == FAKE_SPLIT && out != NULL) {
		for (size_t i = 0; out[i]; i++) {
			put(fd, out + i, 1);
			usleep(200);
		}
	} else if (fa->mode == FAKE_SILENT) {
		char c;

		(void)recv(fd, &c, 1, 0); /* until the client hangs up */
	} else if (out != NULL) {
		put(fd, out, strlen(out));
	}
	free(out);
	free(id);
	json_decref(req);
	close(fd);
	return NULL;
}

static void fake_start(fake_agent *fa, enum fake_mode mode)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	memset(fa, 0, sizeof(*fa));
	fa->mode = mode;
	snprintf(fa->path, sizeof(fa->path), "%s/agent.sock", tmpdir);
	unlink(fa->path);
	memcpy(sa.sun_path, fa->path, strlen(fa->path) + 1);
	fa->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fa->lfd >= 0);
	assert_int_equal(bind(fa->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fa->lfd, 4), 0);
	assert_int_equal(pthread_create(&fa->th, NULL, fake_main, fa), 0);
}

static void fake_stop(fake_agent *fa)
{
	pthread_join(fa->th, NULL);
	close(fa->lfd);
	unlink(fa->path);
}

/* Run one call against a fake in the given mode; returns the code. */
static int call_fake(enum fake_mode mode, int timeout_ms, fake_agent *fa, json_t **resp,
		     agc_origin *origin)
{
	json_t *req = json_pack("{s:s,s:s}", "op", "keys", "note", "é");
	int r;

	fake_start(fa, mode);
	r = agc_call(fa->path, &me, 1, req, timeout_ms, resp, origin);
	fake_stop(fa);
	json_decref(req);
	return r;
}

static void test_client_roundtrip(void **state)
{
	fake_agent fa;
	json_t *resp = NULL, *echo;
	agc_origin origin = AGC_AGENT;

	(void)state;
	assert_int_equal(call_fake(FAKE_ECHO, 5000, &fa, &resp, &origin), 0);
	assert_int_equal(origin, AGC_AGENT); /* only set on failure */
	/* one compact line, ending in '\n', with our op and an id */
	assert_true(fa.got_len > 0);
	assert_int_equal(fa.got[fa.got_len - 1], '\n');
	assert_ptr_equal(strchr(fa.got, '\n'), fa.got + fa.got_len - 1);
	assert_non_null(strstr(fa.got, "\"op\":\"keys\""));
	echo = json_object_get(resp, "echo");
	assert_string_equal(json_string_value(json_object_get(echo, "note")), "é");
	assert_true(json_equal(json_object_get(echo, "id"), json_object_get(resp, "id")));
	json_decref(resp);
}

static void test_client_split_answer(void **state)
{
	fake_agent fa;
	json_t *resp = NULL;

	(void)state;
	assert_int_equal(call_fake(FAKE_SPLIT, 5000, &fa, &resp, NULL), 0);
	assert_int_equal(json_integer_value(json_object_get(resp, "n")), 7);
	json_decref(resp);
}

static void expect_call_error(enum fake_mode mode, int code, agc_origin want_origin,
			      const char *needle)
{
	fake_agent fa;
	json_t *resp = (json_t *)0x1;
	agc_origin origin = (agc_origin)-1;

	/* a silent agent is waited for 300 ms; the others answer at once */
	assert_int_equal(call_fake(mode, mode == FAKE_SILENT ? 300 : 5000, &fa, &resp, &origin),
			 code);
	assert_ptr_equal(resp, (json_t *)0x1);
	assert_int_equal(origin, want_origin);
	if (strstr(err_msg(), needle) == NULL) {
		print_error("mode %d: message '%s' lacks '%s'\n", mode, err_msg(), needle);
		fail();
	}
}

static void test_client_protocol_errors(void **state)
{
	(void)state;
	expect_call_error(FAKE_WRONG_ID, P11J_E_PROTOCOL, AGC_TRANSPORT, "another request id");
	expect_call_error(FAKE_WRONG_ID_ERR, P11J_E_PROTOCOL, AGC_TRANSPORT,
			  "another request id");
	expect_call_error(FAKE_NOT_JSON, P11J_E_PROTOCOL, AGC_TRANSPORT, "not JSON");
	expect_call_error(FAKE_NOT_OBJECT, P11J_E_PROTOCOL, AGC_TRANSPORT, "not a JSON object");
	expect_call_error(FAKE_NO_OK, P11J_E_PROTOCOL, AGC_TRANSPORT, "\"ok\"");
	expect_call_error(FAKE_ERROR_NO_CODE, P11J_E_PROTOCOL, AGC_TRANSPORT, "no code");
	expect_call_error(FAKE_CLOSE, P11J_E_PROTOCOL, AGC_TRANSPORT, "without answering");
	expect_call_error(FAKE_PARTIAL, P11J_E_PROTOCOL, AGC_TRANSPORT, "in the middle");
}

static void test_client_size_bound(void **state)
{
	fake_agent fa;
	json_t *resp = NULL;

	(void)state;
	assert_int_equal(call_fake(FAKE_EXACT_MAX, 10000, &fa, &resp, NULL), 0);
	assert_true(strlen(json_string_value(json_object_get(resp, "pad"))) >
		    AGC_MAX_RESPONSE - 64);
	json_decref(resp);
	expect_call_error(FAKE_OVER_MAX, P11J_E_PROTOCOL, AGC_TRANSPORT, "longer than 1048576");
	expect_call_error(FAKE_HUGE_NO_NL, P11J_E_PROTOCOL, AGC_TRANSPORT,
			  "longer than 1048576");
}

static void test_client_agent_errors(void **state)
{
	(void)state;
	expect_call_error(FAKE_AGENT_ERROR, P11J_E_UNKNOWN_KEY, AGC_AGENT, "no key named 'x'");
	assert_string_equal(err_msg(), "no key named 'x'");
	assert_string_equal(err_code_name(P11J_E_UNKNOWN_KEY), "unknown_key");
	expect_call_error(FAKE_NULL_ID_ERROR, P11J_E_BAD_REQUEST, AGC_AGENT,
			  "request is not JSON");
	expect_call_error(FAKE_UNKNOWN_CODE, P11J_E_INTERNAL, AGC_AGENT,
			  "agent error 'from_the_future': new thing");
}

static void test_client_timeout(void **state)
{
	(void)state;
	expect_call_error(FAKE_SILENT, P11J_E_AGENT_UNAVAILABLE, AGC_TRANSPORT,
			  "did not answer in time");
}

static void test_client_unreachable(void **state)
{
	char path[128];
	json_t *resp = (json_t *)0x1, *req = json_pack("{s:s}", "op", "hello");
	agc_origin origin = AGC_AGENT;
	int fd;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	(void)state;
	snprintf(path, sizeof(path), "%s/no-such.sock", tmpdir);
	assert_int_equal(agc_call(path, &me, 1, req, 1000, &resp, &origin), P11J_E_AGENT_UNAVAILABLE);
	assert_ptr_equal(resp, (json_t *)0x1);
	assert_int_equal(origin, AGC_TRANSPORT);
	assert_non_null(strstr(err_msg(), path));
	assert_non_null(strstr(err_msg(), "p11jwt-agent --print-env"));

	/* a socket file nobody listens on (a dead agent): refused */
	snprintf(path, sizeof(path), "%s/dead.sock", tmpdir);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	assert_int_equal(agc_call(path, &me, 1, req, 1000, &resp, NULL), P11J_E_AGENT_UNAVAILABLE);
	assert_non_null(strstr(err_msg(), "Connection refused"));
	unlink(path);
	json_decref(req);
}

/* A socket someone else planted: refused before anything is sent (issue:
 * another local user made /tmp/p11jwt-UID first and read the PIN). */
static void test_client_squatted_socket(void **state)
{
	char dir[128], path[160], got[8] = "", c;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	json_t *resp = (json_t *)0x1, *req = json_pack("{s:s,s:s}", "op", "login", "pin", "1234");
	agc_origin origin = AGC_AGENT;
	uid_t both[2] = { me, 65534 };
	int lfd, ready[2], done[2];
	pid_t pid;

	(void)state;
	if (me != 0) {
		json_decref(req);
		skip(); /* files and listeners of another uid need root */
	}
	/* 1. a directory of another uid, open to all, with a live listener */
	snprintf(dir, sizeof(dir), "%s/squat", tmpdir);
	assert_int_equal(mkdir(dir, 0755), 0);
	assert_int_equal(chmod(dir, 0755), 0);
	assert_int_equal(chown(dir, 65534, 65534), 0);
	snprintf(path, sizeof(path), "%s/agent.sock", dir);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(chmod(path, 0777), 0);
	assert_int_equal(listen(lfd, 4), 0);
	assert_int_equal(agc_call(path, &me, 1, req, 1000, &resp, &origin), P11J_E_INSECURE);
	assert_int_equal(origin, AGC_TRANSPORT);
	assert_ptr_equal(resp, (json_t *)0x1);
	assert_non_null(strstr(err_msg(), dir));
	assert_non_null(strstr(err_msg(), "owned by uid 65534 (mode 0755)"));
	/* not even a connection was made */
	assert_int_equal(accept(lfd, NULL, NULL), -1);
	assert_int_equal(errno, EAGAIN);
	/* the agent's service user, once named, is trusted */
	assert_int_equal(sockdir_check(path, both, 2), 0);
	close(lfd);
	unlink(path);

	/* 2. our own directory, but the listener runs as another uid */
	snprintf(path, sizeof(path), "%s/other.sock", tmpdir);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	assert_int_equal(pipe(ready), 0);
	assert_int_equal(pipe(done), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char buf[256];
		int fd = socket(AF_UNIX, SOCK_STREAM, 0), cfd;
		ssize_t n, total = 0;

		if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
		    chmod(path, 0777) < 0 || setgid(65534) < 0 || setuid(65534) < 0 ||
		    listen(fd, 1) < 0)
			_exit(1);
		if (write(ready[1], "r", 1) != 1)
			_exit(1);
		cfd = accept(fd, NULL, NULL);
		while (cfd >= 0 && (n = recv(cfd, buf, sizeof(buf), 0)) > 0)
			total += n;
		if (write(done[1], total ? "y" : "n", 1) != 1)
			_exit(1);
		_exit(0);
	}
	assert_int_equal(read(ready[0], &c, 1), 1);
	assert_int_equal(agc_call(path, &me, 1, req, 2000, &resp, &origin), P11J_E_INSECURE);
	assert_non_null(strstr(err_msg(), "served by uid 65534"));
	assert_non_null(strstr(err_msg(), "--agent-uid"));
	assert_int_equal(read(done[0], got, 1), 1);
	assert_string_equal(got, "n"); /* the listener read nothing: no PIN */
	waitpid(pid, NULL, 0);
	unlink(path);
	close(ready[0]);
	close(ready[1]);
	close(done[0]);
	close(done[1]);
	json_decref(req);
}

static void test_client_request_too_large(void **state)
{
	char *pad = malloc(AGC_MAX_REQUEST);
	json_t *req, *resp = (json_t *)0x1;
	agc_origin origin = AGC_AGENT;

	(void)state;
	assert_non_null(pad);
	memset(pad, 'a', AGC_MAX_REQUEST - 1);
	pad[AGC_MAX_REQUEST - 1] = '\0';
	req = json_pack("{s:s,s:{s:s}}", "op", "sign", "claims", "pad", pad);
	/* refused before connecting: the path does not even exist */
	assert_int_equal(agc_call("/nonexistent/agent.sock", &me, 1, req, 1000, &resp, &origin),
			 P11J_E_REQUEST_TOO_LARGE);
	assert_int_equal(origin, AGC_LOCAL);
	assert_non_null(strstr(err_msg(), "at most 65536"));
	json_decref(req);
	free(pad);
}

/* ---- decode: time formatting -------------------------------------------- */

static void test_tfmt_utc(void **state)
{
	char b[64];

	(void)state;
	tfmt_utc(1700000300, b, sizeof(b));
	assert_string_equal(b, "2023-11-14 22:18:20 UTC");
	tfmt_utc(0, b, sizeof(b));
	assert_string_equal(b, "1970-01-01 00:00:00 UTC");
	tfmt_utc(-1, b, sizeof(b));
	assert_string_equal(b, "1969-12-31 23:59:59 UTC");
	tfmt_utc(INT64_C(253402300799), b, sizeof(b));
	assert_string_equal(b, "9999-12-31 23:59:59 UTC");
	tfmt_utc(INT64_C(253402300800), b, sizeof(b));
	assert_string_equal(b, "out of range");
	tfmt_utc(INT64_MAX, b, sizeof(b));
	assert_string_equal(b, "out of range");
	tfmt_utc(INT64_MIN, b, sizeof(b));
	assert_string_equal(b, "out of range");
	/* a short buffer is truncated, never overrun */
	memset(b, '#', sizeof(b));
	tfmt_utc(1700000300, b, 8);
	assert_true(strlen(b) < 8);
	assert_int_equal(b[9], '#');
}

static void test_tfmt_relative(void **state)
{
	static const struct {
		int64_t d;
		const char *want;
	} cases[] = {
		{ 0, "now" },
		{ 1, "in 1s" },
		{ -1, "1s ago" },
		{ 59, "in 59s" },
		{ 60, "in 1m" },
		{ 299, "in 4m 59s" },
		{ -300, "5m ago" },
		{ 3599, "in 59m 59s" },
		{ 3600, "in 1h" },
		{ 3661, "in 1h 1m" }, /* seconds dropped past an hour */
		{ -7260, "2h 1m ago" },
		{ 86400, "in 1d" },
		{ 90061, "in 1d 1h" },
		{ -(86400 * 400 + 3600 * 5), "400d 5h ago" },
	};
	const int64_t now = 1700000000;
	char b[64];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		tfmt_relative(now + cases[i].d, now, b, sizeof(b));
		assert_string_equal(b, cases[i].want);
	}
	/* the distance does not fit an int64: no overflow */
	tfmt_relative(INT64_MAX, INT64_MIN, b, sizeof(b));
	assert_string_equal(b, "in 213503982334601d 7h");
	tfmt_relative(INT64_MIN, INT64_MAX, b, sizeof(b));
	assert_string_equal(b, "213503982334601d 7h ago");
}

static void test_tfmt_line(void **state)
{
	char b[128];

	(void)state;
	tfmt_line("exp", 1700000300, 1700000001, b, sizeof(b));
	assert_string_equal(b, "exp  1700000300  2023-11-14 22:18:20 UTC  (in 4m 59s)");
	tfmt_line("iat", 1700000000, 1700000300, b, sizeof(b));
	assert_string_equal(b, "iat  1700000000  2023-11-14 22:13:20 UTC  (5m ago)");
	tfmt_line("nbf", INT64_C(99999999999999), 1700000000, b, sizeof(b));
	assert_non_null(strstr(b, "nbf  99999999999999  out of range  (in "));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kv_types),
		cmocka_unit_test(test_kv_split_at_first_equals),
		cmocka_unit_test(test_kv_override_order),
		cmocka_unit_test(test_kv_errors),
		cmocka_unit_test(test_file_object),
		cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_socket_path_order),
		cmocka_unit_test(test_socket_path_too_long),
		cmocka_unit_test(test_client_roundtrip),
		cmocka_unit_test(test_client_split_answer),
		cmocka_unit_test(test_client_protocol_errors),
		cmocka_unit_test(test_client_size_bound),
		cmocka_unit_test(test_client_agent_errors),
		cmocka_unit_test(test_client_timeout),
		cmocka_unit_test(test_client_unreachable),
		cmocka_unit_test(test_client_request_too_large),
		cmocka_unit_test(test_client_squatted_socket),
		cmocka_unit_test(test_tfmt_utc),
		cmocka_unit_test(test_tfmt_relative),
		cmocka_unit_test(test_tfmt_line),
	};
	return cmocka_run_group_tests(tests, dir_setup, dir_teardown);
}
