/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
