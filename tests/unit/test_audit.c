/* SPDX-License-Identifier: MIT */
/* The audit trail: the record proto_handle_ex() fills, the line
 * audit_line() builds from it (exact members, never the JWT or the PIN),
 * the file sink, and the "status" op. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <openssl/evp.h>

#include "agent/audit.h"
#include "agent/keyring.h"
#include "agent/proto.h"
#include "common/err.h"
#include "common/util.h"
#include "support/protoenv.h"
#include "support/softsign.h"

static keyring kr;
static EVP_PKEY *pk;
static proto_env env;
static const proto_peer me = {.uid = 1000, .gid = 1001, .pid = 42};
static const proto_peer stranger = {.uid = 2000, .gid = 2000, .pid = 7};
#define NOW_MS 1700000000123LL /* 2023-11-14T22:13:20.123Z */

static int setup(void **state)
{
	(void)state;
	pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (pk == NULL ||
	    kr_add(&kr, "p256", "pkcs11:object=p256", pk, NULL, 0, 0, softsign_fn, pk) < 0)
		return -1;
	protoenv_init(&env, &kr);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	kr_free(&kr);
	EVP_PKEY_free(pk);
	protoenv_fini();
	return 0;
}

/* Handle line as peer; the answer in *ret_resp (parsed), the audit line
 * (or NULL when not audited) returned. */
static char *handle(const proto_peer *peer, const char *line, json_t **ret_resp, int *ret_result)
{
	proto_audit a = {0};
	char *resp = NULL, *al = NULL;
	size_t rlen = 0, alen = 0;

	assert_int_equal(proto_handle_ex(&env, peer, line, strlen(line), &a, &resp, &rlen), 0);
	if (ret_resp != NULL) {
		*ret_resp = json_loadb(resp, rlen, 0, NULL);
		assert_non_null(*ret_resp);
	}
	if (ret_result != NULL)
		*ret_result = a.result;
	if (proto_audit_has_record(&a)) {
		assert_int_equal(audit_line(&a, peer, NOW_MS, &al, &alen), 0);
		assert_int_equal(strlen(al), alen);
		assert_true(alen > 0 && al[alen - 1] == '\n');
		assert_null(memchr(al, '\n', alen - 1));
		/* appended to a batch (as the agent writes them): the records
		 * before it are kept, and the same line follows them */
		{
			static const char before[] = "{\"an\":\"earlier record\"}\n";
			jsonf_buf b = {0};

			assert_int_equal(jsonf_raw(&b, before, strlen(before)), 0);
			assert_int_equal(audit_line_append(&b, &a, peer, NOW_MS), 0);
			assert_int_equal(b.len, strlen(before) + alen);
			assert_memory_equal(b.p, before, strlen(before));
			assert_memory_equal(b.p + strlen(before), al, alen);
			jsonf_free(&b);
		}
	}
	free(resp);
	proto_audit_clear(&a);
	return al;
}

static void test_sign_ok_line(void **state)
{
	json_t *resp = NULL, *rec;
	const char *jwt, *dot;
	char want[1024];
	int result = -99;
	char *al;

	(void)state;
	al = handle(&me,
	            "{\"op\":\"sign\",\"key\":\"p256\",\"claims\":{\"iss\":\"client-1\","
	            "\"sub\":\"user-1\",\"aud\":\"https://auth.example/token\",\"scope\":\"s\"}}",
	            &resp, &result);
	assert_int_equal(result, 0);
	assert_non_null(al);
	jwt = json_string_value(json_object_get(resp, "jwt"));
	assert_non_null(jwt);
	snprintf(want, sizeof(want),
	         "{\"time\":\"2023-11-14T22:13:20.123Z\",\"uid\":1000,\"gid\":1001,\"pid\":42,"
	         "\"op\":\"sign\",\"key\":\"p256\",\"alg\":\"ES256\",\"kid\":\"%s\","
	         "\"iss\":\"client-1\",\"sub\":\"user-1\",\"aud\":\"https://auth.example/token\","
	         "\"jti\":\"%s\",\"exp\":1700000300,\"result\":\"ok\"}\n",
	         kr.keys[0]->kid, json_string_value(json_object_get(resp, "jti")));
	assert_string_equal(al, want);
	/* neither the JWT nor any of its parts (the signature) */
	assert_null(strstr(al, "eyJ"));
	dot = strrchr(jwt, '.');
	assert_non_null(dot);
	assert_null(strstr(al, dot + 1));
	assert_null(strstr(al, "scope"));
	rec = json_loads(al, 0, NULL);
	assert_int_equal(json_object_size(rec), 14);
	json_decref(rec);
	json_decref(resp);
	free(al);
}

static void test_sign_refused_lines(void **state)
{
	char *al;
	char want[512];
	int result = 0;

	(void)state;
	al = handle(&me, "{\"op\":\"sign\",\"key\":\"nope\",\"claims\":{\"iss\":\"x\"}}", NULL,
	            &result);
	assert_int_equal(result, P11J_E_UNKNOWN_KEY);
	assert_string_equal(al, "{\"time\":\"2023-11-14T22:13:20.123Z\",\"uid\":1000,\"gid\":1001,"
	                        "\"pid\":42,\"op\":\"sign\",\"key\":\"nope\",\"iss\":\"x\","
	                        "\"result\":\"unknown_key\"}\n");
	free(al);

	/* the key exists: its kid is recorded even though nothing was signed */
	al = handle(&me, "{\"op\":\"sign\",\"key\":\"p256\",\"alg\":\"RS256\"}", NULL, &result);
	assert_int_equal(result, P11J_E_UNSUPPORTED_ALG);
	snprintf(want, sizeof(want),
	         "{\"time\":\"2023-11-14T22:13:20.123Z\",\"uid\":1000,\"gid\":1001,\"pid\":42,"
	         "\"op\":\"sign\",\"key\":\"p256\",\"alg\":\"RS256\",\"kid\":\"%s\","
	         "\"result\":\"unsupported_alg\"}\n",
	         kr.keys[0]->kid);
	assert_string_equal(al, want);
	free(al);

	/* a stranger's attempt is recorded with its uid */
	al = handle(&stranger,
	            "{\"op\":\"sign\",\"key\":\"p256\",\"claims\":{\"jti\":\"j1\",\"exp\":5}}",
	            NULL, &result);
	assert_int_equal(result, P11J_E_FORBIDDEN);
	assert_non_null(strstr(al, "\"uid\":2000,\"gid\":2000,\"pid\":7,"));
	assert_non_null(strstr(al, "\"jti\":\"j1\",\"exp\":5,\"result\":\"forbidden\"}"));
	free(al);

	/* a bad request is still a sign attempt */
	al = handle(&me, "{\"op\":\"sign\",\"key\":\"p256\",\"lifetime\":0}", NULL, &result);
	assert_int_equal(result, P11J_E_BAD_REQUEST);
	assert_non_null(strstr(al, "\"result\":\"bad_request\"}"));
	free(al);
}

static int fake_reload(void *ud, json_t *resp)
{
	(void)ud;
	json_object_set_new(resp, "added", json_array());
	return 0;
}

/* reload changes what the agent serves: recorded like login and lock */
static void test_reload_audited(void **state)
{
	int result = -1;
	char *al;

	(void)state;
	env.reload = fake_reload;
	al = handle(&me, "{\"op\":\"reload\"}", NULL, &result);
	assert_int_equal(result, 0);
	assert_non_null(al);
	assert_non_null(strstr(al, "\"uid\":1000,"));
	assert_non_null(strstr(al, "\"op\":\"reload\",\"result\":\"ok\"}"));
	free(al);
	al = handle(&stranger, "{\"op\":\"reload\"}", NULL, &result);
	assert_int_equal(result, P11J_E_FORBIDDEN);
	assert_non_null(al);
	assert_non_null(strstr(al, "\"op\":\"reload\",\"result\":\"forbidden\"}"));
	free(al);
	env.reload = NULL;
}

static void test_not_audited(void **state)
{
	int result = 0;

	(void)state;
	assert_null(handle(&me, "{\"op\":\"hello\"}", NULL, &result));
	assert_int_equal(result, 0);
	assert_null(handle(&me, "{\"op\":\"keys\"}", NULL, &result));
	assert_int_equal(result, 0);
	assert_null(handle(&me, "{\"op\":\"nope\"}", NULL, &result));
	assert_int_equal(result, P11J_E_UNKNOWN_OP);
	assert_null(handle(&me, "not json", NULL, &result));
	assert_int_equal(result, P11J_E_BAD_REQUEST);
	assert_null(handle(&me, "[\"op\",\"sign\"]", NULL, &result));
	assert_int_equal(result, P11J_E_BAD_REQUEST);
}

static void test_pin_never_recorded(void **state)
{
	int result = 0;
	char *al;

	(void)state;
	/* no login callback here: unknown_op, but the attempt is recorded */
	al =
	    handle(&me, "{\"op\":\"login\",\"pin\":\"918273\",\"token\":\"pkcs11:pin-value=5555\"}",
	           NULL, &result);
	assert_non_null(al);
	assert_null(strstr(al, "918273"));
	assert_null(strstr(al, "5555"));
	assert_null(strstr(al, "pkcs11"));
	assert_non_null(strstr(al, "\"op\":\"login\",\"result\":\"unknown_op\"}"));
	free(al);
	al = handle(&me, "{\"op\":\"lock\"}", NULL, &result);
	assert_non_null(strstr(al, "\"op\":\"lock\",\"result\":"));
	free(al);
}

static void test_claims_bounded(void **state)
{
	char req[4096], *al;
	json_t *rec;
	size_t o;
	int result = 0;

	(void)state;
	/* a 1000-byte iss is cut to 256 bytes, not at a UTF-8 continuation
	 * byte; a non-string sub is left out; aud arrays keep 16 entries */
	o = (size_t)snprintf(req, sizeof(req),
	                     "{\"op\":\"sign\",\"key\":\"p256\",\"claims\":{\"iss\":\"a");
	for (int i = 0; i < 500; i++)
		o += (size_t)snprintf(req + o, sizeof(req) - o, "\xc3\xa9");
	o += (size_t)snprintf(req + o, sizeof(req) - o, "\",\"sub\":{\"x\":1},\"aud\":[");
	for (int i = 0; i < 20; i++)
		o += (size_t)snprintf(req + o, sizeof(req) - o, "%s\"a%d\"", i ? "," : "", i);
	snprintf(req + o, sizeof(req) - o, "],\"exp\":\"soon\"}}");
	al = handle(&me, req, NULL, &result);
	assert_int_equal(result, 0); /* the JWT keeps them as sent */
	rec = json_loads(al, 0, NULL);
	assert_non_null(rec);
	assert_int_equal(json_string_length(json_object_get(rec, "iss")), 255);
	assert_null(json_object_get(rec, "sub"));
	assert_int_equal(json_array_size(json_object_get(rec, "aud")), 16);
	assert_string_equal(json_string_value(json_array_get(json_object_get(rec, "aud"), 15)),
	                    "a15");
	/* exp was given (not an integer): kept in the JWT, not recorded */
	assert_null(json_object_get(rec, "exp"));
	json_decref(rec);
	free(al);
}

static void test_file_sink(void **state)
{
	char dir[] = "/tmp/p11j-audit-XXXXXX", path[128], spec[140], moved[140], buf[256];
	audit_sink *s = NULL;
	struct stat st;
	ssize_t n;
	int fd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/audit.log", dir);
	snprintf(spec, sizeof(spec), "file:%s", path);
	assert_int_equal(audit_open(spec, &s), 0);
	assert_true(audit_enabled(s));
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(audit_write(s, "{\"a\":1}\n", 8), 0);
	assert_int_equal(audit_write(s, "{\"b\":2}\n", 8), 0);
	/* rotation: renamed away, reopened on request */
	snprintf(moved, sizeof(moved), "%s.1", path);
	assert_int_equal(rename(path, moved), 0);
	audit_reopen_later(s);
	assert_int_equal(audit_write(s, "{\"c\":3}\n", 8), 0);
	audit_close(s);
	fd = open(moved, O_RDONLY);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	assert_string_equal(buf, "{\"a\":1}\n{\"b\":2}\n");
	fd = open(path, O_RDONLY);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	assert_string_equal(buf, "{\"c\":3}\n");

	/* a file others may write is refused, as are unknown destinations */
	assert_int_equal(chmod(path, 0622), 0);
	assert_int_equal(audit_open(spec, &s), P11J_E_INSECURE);
	assert_int_equal(audit_open("file:", &s), P11J_E_BAD_REQUEST);
	assert_int_equal(audit_open("journal", &s), P11J_E_BAD_REQUEST);
	assert_int_equal(audit_open("none", &s), 0);
	assert_false(audit_enabled(s));
	assert_int_equal(audit_write(s, "x\n", 2), 0);
	audit_close(s);
	unlink(path);
	unlink(moved);
	rmdir(dir);
}

static int fake_status(void *ud, json_t *resp)
{
	(void)ud;
	return json_object_set_new(resp, "requests", json_integer(77)) < 0 ? P11J_E_NOMEM : 0;
}

/* A stand-in syslog daemon: a datagram socket bound at path. */
static int fake_syslogd(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct timeval tv = { .tv_sec = 5 };

	assert_true(fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	unlink(path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static void expect_message(int fd, const char *line)
{
	char buf[512], want[128];
	ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
	const char *colon;

	assert_true(n > 0);
	buf[n] = '\0';
	/* "<86>Nov 23 14:15:09 p11jwt-agent[PID]: line", as syslog(3) sends */
	assert_true(strncmp(buf, "<86>", 4) == 0); /* LOG_AUTHPRIV | LOG_INFO */
	snprintf(want, sizeof(want), " p11jwt-agent[%d]: ", (int)getpid());
	colon = strstr(buf, want);
	assert_non_null(colon);
	assert_int_equal(colon - buf, 4 + 15); /* "Mmm dd hh:mm:ss" */
	assert_string_equal(colon + strlen(want), line);
}

/* The syslog sink speaks to the socket itself, so that a record that
 * cannot be delivered is an error (and the JWT refused), never a silent
 * loss as with syslog(3) when nothing listens. */
static void test_syslog_sink(void **state)
{
	char dir[] = "/tmp/p11j-syslog-XXXXXX", path[128];
	audit_sink *s = NULL;
	int d;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/log", dir);

	/* nobody listens: "syslog" refuses to start, "auto" falls back */
	assert_int_equal(audit_open_at("syslog", path, &s), P11J_E_SYSTEM);
	assert_non_null(strstr(err_msg(), path));
	assert_int_equal(audit_open_at("auto", path, &s), 0);
	assert_true(audit_enabled(s));
	assert_true(audit_on_stderr(s));
	audit_close(s);

	d = fake_syslogd(path);
	assert_int_equal(audit_open_at("auto", path, &s), 0);
	assert_false(audit_on_stderr(s));
	/* a batch: one message per line, without the newline */
	assert_int_equal(audit_write(s, "{\"a\":1}\n{\"b\":2}\n", 16), 0);
	expect_message(d, "{\"a\":1}");
	expect_message(d, "{\"b\":2}");

	/* the daemon goes away: the write fails, loudly */
	close(d);
	unlink(path);
	assert_int_equal(audit_write(s, "{\"c\":3}\n", 8), P11J_E_SYSTEM);
	assert_non_null(strstr(err_msg(), path));

	/* it comes back (a new socket at the path): reconnected */
	d = fake_syslogd(path);
	assert_int_equal(audit_write(s, "{\"d\":4}\n", 8), 0);
	expect_message(d, "{\"d\":4}");
	/* restarted once more while connected: the stale socket is replaced */
	close(d);
	d = fake_syslogd(path);
	assert_int_equal(audit_write(s, "{\"e\":5}\n", 8), 0);
	expect_message(d, "{\"e\":5}");
	audit_close(s);
	close(d);
	unlink(path);
	rmdir(dir);
}

static void test_status_op(void **state)
{
	json_t *resp = NULL;
	int result = 0;

	(void)state;
	assert_null(handle(&me, "{\"op\":\"status\",\"id\":9}", &resp, &result));
	assert_int_equal(result, 0);
	assert_true(json_is_true(json_object_get(resp, "ok")));
	assert_string_equal(json_string_value(json_object_get(resp, "version")), "test");
	assert_int_equal(json_integer_value(json_object_get(resp, "keys")), 1);
	assert_int_equal(json_integer_value(json_object_get(resp, "protocol")), PROTO_VERSION);
	assert_null(json_object_get(resp, "requests"));
	json_decref(resp);

	env.status = fake_status;
	assert_null(handle(&me, "{\"op\":\"status\"}", &resp, &result));
	assert_int_equal(json_integer_value(json_object_get(resp, "requests")), 77);
	json_decref(resp);
	assert_null(handle(&me, "{\"op\":\"status\",\"verbose\":true}", &resp, &result));
	assert_int_equal(result, P11J_E_BAD_REQUEST);
	json_decref(resp);
	assert_null(handle(&stranger, "{\"op\":\"status\"}", &resp, &result));
	assert_int_equal(result, P11J_E_FORBIDDEN);
	assert_null(json_object_get(resp, "requests"));
	json_decref(resp);
	env.status = NULL;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sign_ok_line),   cmocka_unit_test(test_sign_refused_lines),
	    cmocka_unit_test(test_not_audited),    cmocka_unit_test(test_pin_never_recorded),
	    cmocka_unit_test(test_claims_bounded), cmocka_unit_test(test_file_sink),
	    cmocka_unit_test(test_syslog_sink),    cmocka_unit_test(test_status_op),
	    cmocka_unit_test(test_reload_audited),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
