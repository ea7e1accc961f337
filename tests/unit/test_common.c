/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/sockdir.h"
#include "common/util.h"

static void test_err_names_roundtrip(void **state)
{
	static const char *const wire[] = { "bad_request", "request_too_large", "unknown_op",
		"unknown_key", "unsupported_alg", "forbidden", "token_unavailable",
		"pin_incorrect", "pin_required", "policy_violation", "internal" };

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(wire); i++)
		assert_string_equal(err_code_name(err_code_from_name(wire[i])), wire[i]);
	assert_string_equal(err_code_name(-9999), "internal");
	assert_int_equal(err_code_from_name("no_such_code"), P11J_E_INTERNAL);
}

static void test_err_detail_thread_local(void **state)
{
	(void)state;
	err_clear();
	assert_int_equal(err_set(P11J_E_UNKNOWN_KEY, "no key named '%s'", "x"), P11J_E_UNKNOWN_KEY);
	assert_string_equal(err_msg(), "no key named 'x'");
	err_clear();
	assert_string_equal(err_msg(), "no error detail recorded");
}

static void test_uuid4_format(void **state)
{
	char a[37], b[37];

	(void)state;
	assert_int_equal(util_uuid4(a), 0);
	assert_int_equal(util_uuid4(b), 0);
	assert_int_equal(strlen(a), 36);
	assert_int_equal(a[14], '4');
	assert_true(strchr("89ab", a[19]) != NULL);
	assert_int_equal(a[8], '-');
	assert_int_equal(a[23], '-');
	assert_string_not_equal(a, b);
}

static int cmp_uuid(const void *a, const void *b)
{
	return memcmp(a, b, 37);
}

/* 1000 values cross the per-thread pool's refills (256 per 4 KiB); all
 * differ and all are well formed */
static void test_uuid4_many_distinct(void **state)
{
	static char u[1000][37];

	(void)state;
	for (int i = 0; i < 1000; i++) {
		assert_int_equal(util_uuid4(u[i]), 0);
		assert_int_equal(strlen(u[i]), 36);
		assert_int_equal(u[i][14], '4');
	}
	qsort(u, 1000, 37, cmp_uuid);
	for (int i = 1; i < 1000; i++)
		assert_int_not_equal(memcmp(u[i - 1], u[i], 37), 0);
}

/* A forked child must not hand out what its parent will: the pool a child
 * inherits is dropped. */
static void test_uuid4_fork(void **state)
{
	char first[37], parent[37], child[37] = { 0 };
	int pfd[2], st;
	pid_t pid;

	(void)state;
	assert_int_equal(util_uuid4(first), 0); /* the pool is full now */
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char v[37];

		close(pfd[0]);
		_exit(util_uuid4(v) == 0 && write(pfd[1], v, 37) == 37 ? 0 : 1);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], child, 37), 37);
	close(pfd[0]);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_equal(util_uuid4(parent), 0);
	assert_string_not_equal(child, parent);
	assert_string_not_equal(child, first);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
}

static void test_read_secret_file_modes(void **state)
{
	char path[] = "/tmp/p11j-test-XXXXXX";
	int fd = mkstemp(path);
	char *buf = NULL;
	size_t len = 0;

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	write_file(path, "1234\n", 0600);
	assert_int_equal(util_read_file(path, 64, true, &buf, &len), 0);
	assert_int_equal(len, 5);
	util_chomp(buf);
	assert_string_equal(buf, "1234");
	freezero_str(buf);
	buf = NULL;

	assert_int_equal(chmod(path, 0640), 0);
	assert_int_equal(util_read_file(path, 64, true, &buf, &len), P11J_E_INSECURE);
	assert_null(buf);
	assert_non_null(strstr(err_msg(), "chmod 600"));
	/* Not a secret: mode does not matter, size does. */
	assert_int_equal(util_read_file(path, 64, false, &buf, &len), 0);
	free(buf);
	buf = NULL;
	assert_int_equal(util_read_file(path, 3, false, &buf, &len), P11J_E_REQUEST_TOO_LARGE);
	assert_null(buf);
	unlink(path);
	assert_int_equal(util_read_file(path, 64, true, &buf, &len), P11J_E_NOT_FOUND);
}

static void test_hex(void **state)
{
	const uint8_t in[] = { 0x00, 0xab, 0x10 };
	char *s = NULL;

	(void)state;
	assert_int_equal(util_hex(in, sizeof(in), &s), 0);
	assert_string_equal(s, "00ab10");
	free(s);
}

static int64_t fixed_clock(void)
{
	return 1700000000;
}

static void test_clock_override(void **state)
{
	(void)state;
	util_set_clock(fixed_clock);
	assert_int_equal(util_now(), 1700000000);
	util_set_clock(NULL);
	assert_true(util_now() > 1700000000);
}

static void test_wipe_alloc(void **state)
{
	char *p = malloc(16), *q;

	(void)state;
	assert_non_null(p);
	memcpy(p, "0123456789abcde", 16);
	q = util_wipe_realloc(p, 4096);
	assert_non_null(q);
	assert_memory_equal(q, "0123456789abcde", 16);
	q = util_wipe_realloc(q, 8);
	assert_non_null(q);
	assert_memory_equal(q, "01234567", 8);
	util_wipe_free(q);
	util_wipe_free(NULL);
	assert_null(util_wipe_realloc(malloc(4), 0));
}

static void test_word_in(void **state)
{
	(void)state;
	assert_true(util_word_in("RS256 RS384", "RS384"));
	assert_true(util_word_in("token call", "token"));
	assert_false(util_word_in("RS256 RS384", "RS38"));
	assert_false(util_word_in("RS256 RS384", "S256"));
	assert_false(util_word_in(NULL, "x"));
	assert_false(util_word_in("", "x"));
}

static void test_secret_reserve(void **state)
{
	char *b = NULL;
	size_t cap = 0, used = 0;

	(void)state;
	for (int i = 0; i < 100; i++) {
		assert_int_equal(util_secret_reserve(&b, &cap, used, 10), 0);
		assert_true(cap >= used + 11);
		memcpy(b + used, "abcdefghij", 10);
		used += 10;
	}
	assert_memory_equal(b + 990, "abcdefghij", 10);
	freezero_buf(b, cap);
}

/* ---- the socket directory rule (common/sockdir.h) ----------------------- */

static void expect_dir(const char *sock, const uid_t *trusted, size_t n, int want,
		       const char *msg_part)
{
	int r = sockdir_check(sock, trusted, n);

	if (r != want)
		fail_msg("%s: got %d (%s), want %d", sock, r, err_msg(), want);
	if (msg_part != NULL && strstr(err_msg(), msg_part) == NULL)
		fail_msg("%s: message '%s' lacks '%s'", sock, err_msg(), msg_part);
}

static void test_sockdir_rule(void **state)
{
	char base[] = "/tmp/p11j-sockdir-XXXXXX", p[256], q[256], cmd[300];
	uid_t me = geteuid();

	(void)state;
	assert_non_null(mkdtemp(base)); /* 0700, in /tmp */
	snprintf(p, sizeof(p), "%s/agent.sock", base);
	expect_dir(p, &me, 1, 0, NULL);
	/* in /tmp, anything but 0700 is refused: anyone could have made it */
	assert_int_equal(chmod(base, 0755), 0);
	expect_dir(p, &me, 1, P11J_E_INSECURE, "must be 0700");
	expect_dir(p, &me, 1, P11J_E_INSECURE, base);
	assert_int_equal(chmod(base, 0711), 0);
	expect_dir(p, &me, 1, P11J_E_INSECURE, "mode 0711");
	assert_int_equal(chmod(base, 0700), 0);

	/* below a private directory, group and others may traverse or read,
	 * never write */
	snprintf(p, sizeof(p), "%s/run", base);
	assert_int_equal(mkdir(p, 0711), 0);
	assert_int_equal(chmod(p, 0711), 0);
	snprintf(q, sizeof(q), "%s/run/agent.sock", base);
	expect_dir(q, &me, 1, 0, NULL);
	assert_int_equal(chmod(p, 0750), 0);
	expect_dir(q, &me, 1, 0, NULL);
	assert_int_equal(chmod(p, 0770), 0);
	expect_dir(q, &me, 1, P11J_E_INSECURE, "writable by others (mode 0770)");
	assert_int_equal(chmod(p, 0703), 0);
	expect_dir(q, &me, 1, P11J_E_INSECURE, "writable by others");
	assert_int_equal(chmod(p, 0700), 0);

	/* a symlink to a good directory is still refused */
	snprintf(q, sizeof(q), "%s/link", base);
	assert_int_equal(symlink(p, q), 0);
	snprintf(q, sizeof(q), "%s/link/agent.sock", base);
	expect_dir(q, &me, 1, P11J_E_INSECURE, "symbolic link");

	/* not a directory; not there at all */
	snprintf(q, sizeof(q), "%s/file", base);
	close(open(q, O_CREAT | O_WRONLY, 0600));
	snprintf(q, sizeof(q), "%s/file/agent.sock", base);
	expect_dir(q, &me, 1, P11J_E_INSECURE, "not a directory");
	snprintf(q, sizeof(q), "%s/none/agent.sock", base);
	expect_dir(q, &me, 1, P11J_E_AGENT_UNAVAILABLE, "does not exist");

	/* owned by someone else: refused unless that uid is trusted (the
	 * agent's service user); root-owned is always fine */
	if (me == 0) {
		uid_t other = 65534;

		assert_int_equal(chown(p, other, 0), 0);
		snprintf(q, sizeof(q), "%s/run/agent.sock", base);
		expect_dir(q, &me, 1, P11J_E_INSECURE, "owned by uid 65534 (mode 0700)");
		expect_dir(q, &other, 1, 0, NULL);
		assert_int_equal(chown(p, 0, 0), 0);
		expect_dir(q, &other, 1, 0, NULL);
	}
	/* the socket right in /: the directory is /, owned by root, 0755 */
	expect_dir("/agent.sock", &me, 1, 0, NULL);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
	assert_int_equal(system(cmd), 0);
}

static void test_sockdir_peer(void **state)
{
	char base[] = "/tmp/p11j-sockpeer-XXXXXX", path[128], c;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uid_t me = geteuid(), other = 65534;
	int lfd, cfd, ready[2];
	pid_t pid;

	(void)state;
	assert_non_null(mkdtemp(base));
	snprintf(path, sizeof(path), "%s/agent.sock", base);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	/* our own listener: trusted */
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 1), 0);
	cfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(connect(cfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(sockdir_check_peer(cfd, path, &me, 1), 0);
	close(cfd);
	close(lfd);
	unlink(path);
	if (me != 0) {
		rmdir(base);
		skip(); /* a listener of another uid needs root */
	}
	/* a listener that runs as another uid (the credentials are taken at
	 * listen()): refused, naming that uid; trusted when named */
	assert_int_equal(pipe(ready), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);

		if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
		    setgid(65534) < 0 || setuid(65534) < 0 || listen(fd, 1) < 0)
			_exit(1);
		if (write(ready[1], "r", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	assert_int_equal(read(ready[0], &c, 1), 1);
	cfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(connect(cfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(sockdir_check_peer(cfd, path, &me, 1), P11J_E_INSECURE);
	assert_non_null(strstr(err_msg(), "served by uid 65534"));
	assert_non_null(strstr(err_msg(), path));
	assert_int_equal(sockdir_check_peer(cfd, path, &other, 1), 0);
	close(cfd);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(ready[0]);
	close(ready[1]);
	unlink(path);
	rmdir(base);
}

static void test_sockdir_parse_uid(void **state)
{
	uid_t u = 7;

	(void)state;
	assert_int_equal(sockdir_parse_uid("--agent-uid", "1234", &u), 0);
	assert_int_equal(u, 1234);
	assert_int_equal(sockdir_parse_uid("--agent-uid", "root", &u), 0);
	assert_int_equal(u, 0);
	u = 7;
	assert_int_equal(sockdir_parse_uid("--agent-uid", "no-such-user-p11j", &u),
			 P11J_E_BAD_REQUEST);
	assert_non_null(strstr(err_msg(), "--agent-uid 'no-such-user-p11j' is neither"));
	assert_int_equal(u, 7);
	assert_int_equal(sockdir_parse_uid("P11JWT_AGENT_UID", "", &u), P11J_E_BAD_REQUEST);
	assert_int_equal(sockdir_parse_uid("x", "-1", &u), P11J_E_BAD_REQUEST);
	assert_int_equal(sockdir_parse_uid("x", "4294967295", &u), P11J_E_BAD_REQUEST);
	assert_int_equal(u, 7);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_err_names_roundtrip),
		cmocka_unit_test(test_err_detail_thread_local),
		cmocka_unit_test(test_uuid4_format),
		cmocka_unit_test(test_uuid4_many_distinct),
		cmocka_unit_test(test_uuid4_fork),
		cmocka_unit_test(test_read_secret_file_modes),
		cmocka_unit_test(test_hex),
		cmocka_unit_test(test_clock_override),
		cmocka_unit_test(test_wipe_alloc),
		cmocka_unit_test(test_word_in),
		cmocka_unit_test(test_secret_reserve),
		cmocka_unit_test(test_sockdir_rule),
		cmocka_unit_test(test_sockdir_peer),
		cmocka_unit_test(test_sockdir_parse_uid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
