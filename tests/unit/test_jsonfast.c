/* SPDX-License-Identifier: MIT */
/*
 * jsonf_* against the installed Jansson: every output is compared byte for
 * byte with json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY), and a few are also
 * pinned to literal text so that a wrong rule cannot pass by agreeing with a
 * different Jansson.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "common/err.h"
#include "common/util.h"
#include "jose/jsonfast.h"

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY)

/* v must print, and identically. Appends to a buffer that already holds a
 * prefix, so every comparison also checks that nothing before it moves. */
static void expect_same(const json_t *v)
{
	static const char prefix[] = "<prefix>";
	jsonf_buf b = { 0 };
	char *want = json_dumps(v, DUMP_FLAGS), *got;
	size_t len = 0;

	assert_non_null(want);
	assert_int_equal(jsonf_str(&b, prefix), 0);
	assert_int_equal(jsonf_append(&b, v), 0);
	if (b.len != sizeof(prefix) - 1 + strlen(want) ||
	    memcmp(b.p + sizeof(prefix) - 1, want, strlen(want)) != 0)
		fail_msg("json_dumps: %s\njsonf:      %.*s", want,
			 (int)(b.len - (sizeof(prefix) - 1)), b.p + sizeof(prefix) - 1);
	assert_memory_equal(b.p, prefix, sizeof(prefix) - 1);
	got = jsonf_take(&b, &len);
	assert_non_null(got);
	assert_null(b.p);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
	assert_int_equal(len, strlen(got));
	assert_string_equal(got + sizeof(prefix) - 1, want);
	free(got);
	free(want);
}

/* v must be declined: 1, length and earlier content unchanged, and whatever
 * was written past the old end wiped. The spare room is painted first, so a
 * byte that is neither the paint nor zero is output left behind. */
static void expect_declined(const json_t *v)
{
	jsonf_buf b = { 0 };
	size_t cap;

	assert_int_equal(jsonf_str(&b, "keep"), 0);
	assert_int_equal(jsonf_reserve(&b, 8192), 0);
	cap = b.cap;
	memset(b.p + 4, 0xaa, cap - 4);
	assert_int_equal(jsonf_append(&b, v), 1);
	assert_int_equal(b.len, 4);
	assert_memory_equal(b.p, "keep", 4);
	assert_int_equal(b.cap, cap); /* the declined cases here are small */
	for (size_t i = 4; i < cap; i++)
		if (b.p[i] != 0 && (unsigned char)b.p[i] != 0xaa)
			fail_msg("byte %zu past the end is 0x%02x, not wiped", i,
				 (unsigned char)b.p[i]);
	jsonf_free(&b);
}

static void fail_bytes(const char *what, const char *s, size_t n, const char *want,
		       const char *got, size_t gotlen)
{
	char hex[3 * 16 + 1] = "";

	for (size_t i = 0; i < n && i < 16; i++)
		snprintf(hex + 3 * i, sizeof(hex) - 3 * i, "%02x ", (unsigned char)s[i]);
	fail_msg("%s: input %s(%zu bytes)\njson_dumps: %s\njsonf:      %.*s", what, hex, n,
		 want ? want : "(fails)", (int)gotlen, got ? got : "");
}

/* The fast path and Jansson agree on a string of raw bytes: both print it
 * identically, or Jansson refuses it and jsonf declines. Returns whether it
 * printed. */
static int check_bytes(const char *s, size_t n)
{
	json_t *v = json_stringn_nocheck(s, n);
	jsonf_buf b = { 0 }, q = { 0 };
	char *want;
	int r, rq;

	assert_non_null(v);
	want = json_dumps(v, DUMP_FLAGS);
	assert_int_equal(jsonf_raw(&b, "[", 1), 0);
	r = jsonf_append(&b, v);
	rq = jsonf_quote(&q, s, n);
	if (want != NULL) {
		size_t wl = strlen(want);

		if (r != 0 || b.len != 1 + wl || memcmp(b.p + 1, want, wl) != 0)
			fail_bytes("jsonf_append", s, n, want, b.p + 1, b.len - 1);
		if (rq != 0 || q.len != wl || memcmp(q.p, want, wl) != 0)
			fail_bytes("jsonf_quote", s, n, want, q.p, q.len);
	} else {
		if (r != 1 || b.len != 1)
			fail_bytes("jsonf_append", s, n, NULL, b.p + 1, b.len - 1);
		if (rq != P11J_E_BAD_REQUEST || q.len != 0)
			fail_bytes("jsonf_quote", s, n, NULL, q.p, q.len);
	}
	jsonf_free(&b);
	jsonf_free(&q);
	free(want);
	json_decref(v);
	return want != NULL;
}

/* Literal expectations, independent of the library under comparison. */
static void expect_text(const json_t *v, const char *text)
{
	jsonf_buf b = { 0 };
	char *s;

	assert_int_equal(jsonf_append(&b, v), 0);
	s = jsonf_take(&b, NULL);
	assert_string_equal(s, text);
	free(s);
	expect_same(v);
}

static void test_scalars_and_empties(void **state)
{
	static const int64_t ints[] = { 0,	    1,		-1,	     9,	       10,
					-10,	    99,		100,	     -100,     1234567890,
					INT32_MAX,  INT32_MIN,	(int64_t)INT32_MAX + 1,
					INT64_MAX,  INT64_MIN,	INT64_MAX - 1, INT64_MIN + 1 };
	json_t *v;

	(void)state;
	v = json_null();
	expect_text(v, "null");
	v = json_true();
	expect_text(v, "true");
	v = json_false();
	expect_text(v, "false");
	v = json_string("");
	expect_text(v, "\"\"");
	json_decref(v);
	v = json_object();
	expect_text(v, "{}");
	json_decref(v);
	v = json_array();
	expect_text(v, "[]");
	json_decref(v);
	v = json_pack("{s:{},s:[],s:[{}],s:s}", "o", "a", "ao", "s", "");
	assert_non_null(v);
	expect_text(v, "{\"o\":{},\"a\":[],\"ao\":[{}],\"s\":\"\"}");
	json_decref(v);
	for (size_t i = 0; i < ARRAY_SIZE(ints); i++) {
		char want[32];

		v = json_integer(ints[i]);
		snprintf(want, sizeof(want), "%lld", (long long)ints[i]);
		expect_text(v, want);
		json_decref(v);
	}
	v = json_integer(INT64_MIN);
	expect_text(v, "-9223372036854775808");
	json_decref(v);
	v = json_integer(INT64_MAX);
	expect_text(v, "9223372036854775807");
	json_decref(v);
}

/* Every byte value alone, and inside other text, and the expected rule for
 * each ASCII byte written out. */
static void test_every_byte(void **state)
{
	int printed = 0;

	(void)state;
	for (int c = 0; c < 256; c++) {
		char one = (char)c, mid[5] = { 'a', (char)c, 'b', (char)c, 'z' };

		printed += check_bytes(&one, 1);
		check_bytes(mid, sizeof(mid));
	}
	/* 0x00..0x7F print; every lone byte 0x80..0xFF is invalid UTF-8 */
	assert_int_equal(printed, 128);

	for (int c = 0; c < 128; c++) {
		char one = (char)c, want[16];
		json_t *v = json_stringn(&one, 1);

		switch (c) {
		case '"':
			strcpy(want, "\"\\\"\"");
			break;
		case '\\':
			strcpy(want, "\"\\\\\"");
			break;
		case '\b':
			strcpy(want, "\"\\b\"");
			break;
		case '\f':
			strcpy(want, "\"\\f\"");
			break;
		case '\n':
			strcpy(want, "\"\\n\"");
			break;
		case '\r':
			strcpy(want, "\"\\r\"");
			break;
		case '\t':
			strcpy(want, "\"\\t\"");
			break;
		default:
			if (c < 0x20)
				snprintf(want, sizeof(want), "\"\\u%04X\"", (unsigned)c);
			else /* 0x7F and '/' included */
				snprintf(want, sizeof(want), "\"%c\"", c);
		}
		expect_text(v, want);
		json_decref(v);
	}
}

static void test_control_quote_slash(void **state)
{
	static const char *const cases[] = {
		"\"", "\\", "/", "\\/", "</script>", "http://x/y?z=\"q\"",
		"\"\"\"", "\\\\\\", "a\"b\\c/d", "\x01\x02\x03\x1f\x7f",
		"\b\f\n\r\t", "tab\tnewline\nend", "\x1b[31mred\x1b[0m",
		"\"at start", "at end\"", "\\", "\n", "\x1f",
	};
	json_t *v;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		check_bytes(cases[i], strlen(cases[i]));
	v = json_string("a\"b\\c/d\x01\x7f");
	expect_text(v, "\"a\\\"b\\\\c/d\\u0001\x7f\"");
	json_decref(v);
}

static void test_embedded_nul(void **state)
{
	json_t *v, *o;

	(void)state;
	check_bytes("\0", 1);
	check_bytes("\0\0\0", 3);
	check_bytes("a\0b", 3);
	check_bytes("\0\xc3\xa9\0", 4);
	v = json_stringn("a\0b", 3);
	expect_text(v, "\"a\\u0000b\"");
	/* as a key too */
	o = json_object();
	assert_int_equal(json_object_setn_new(o, "k\0x", 3, v), 0);
	assert_int_equal(json_object_setn_new(o, "\0", 1, json_true()), 0);
	expect_text(o, "{\"k\\u0000x\":\"a\\u0000b\",\"\\u0000\":true}");
	json_decref(o);
}

/* Valid multi-byte UTF-8 passes through raw, at every boundary of the
 * encoding; ill-formed sequences are refused by both. */
static void test_utf8(void **state)
{
	static const char *const good[] = {
		"\xc2\x80", "\xc3\xa9", "\xdf\xbf", "\xe0\xa0\x80", "\xe2\x80\xa8",
		"\xe2\x80\xa9", "\xed\x9f\xbf", "\xee\x80\x80", "\xef\xbf\xbd", "\xef\xbf\xbf",
		"\xf0\x90\x80\x80", "\xf0\x9f\x98\x80", "\xf3\xbf\xbf\xbf", "\xf4\x8f\xbf\xbf",
		"Gr\xc3\xbc\xc3\x9f" "e \xe2\x82\xac \xf0\x9f\x94\x91 \xe4\xb8\xad\xe6\x96\x87",
	};
	static const char *const bad[] = {
		"\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xc2", "\xc2\x7f", "\xc2\xc0",
		"\xe0\x80\x80", "\xe0\x9f\xbf", "\xe2\x82", "\xe2\x28\xa1", "\xed\xa0\x80",
		"\xed\xbf\xbf", "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80",
		"\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80", "\xfe", "\xff", "ok\xc3",
		"\xf0\x9f\x98", "\xf0\x9f\x98\x80\x80",
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
		char want[64];
		json_t *v = json_string(good[i]);

		assert_non_null(v);
		assert_int_equal(check_bytes(good[i], strlen(good[i])), 1);
		snprintf(want, sizeof(want), "\"%s\"", good[i]);
		expect_text(v, want);
		json_decref(v);
	}
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		assert_int_equal(check_bytes(bad[i], strlen(bad[i])), 0);
	/* A sequence cut by the length, with its continuation bytes still in
	 * memory after the end: must not be read past n. */
	for (size_t i = 0; i < ARRAY_SIZE(good) - 1; i++) {
		size_t n = strlen(good[i]);

		for (size_t k = 1; k < n; k++) {
			jsonf_buf b = { 0 };

			assert_int_equal(check_bytes(good[i], k), 0);
			assert_int_equal(jsonf_quote(&b, good[i], k), P11J_E_BAD_REQUEST);
			assert_int_equal(b.len, 0);
			jsonf_free(&b);
		}
	}
}

/* All two-byte strings, and three- and four-byte strings over the byte
 * values where the UTF-8 rules change. */
static void test_utf8_exhaustive(void **state)
{
	static const uint8_t edge[] = { 0x00, 0x22, 0x41, 0x5c, 0x7f, 0x80, 0x81, 0x8f, 0x90,
					0x9f, 0xa0, 0xa1, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xed,
					0xef, 0xf0, 0xf4, 0xf5, 0xff };
	static const uint8_t fourth[] = { 0x41, 0x7f, 0x80, 0xbf, 0xc0 };
	size_t printed = 0, refused = 0;
	uint8_t s[4];

	(void)state;
	for (int x = 0; x < 256; x++)
		for (int y = 0; y < 256; y++) {
			s[0] = (uint8_t)x;
			s[1] = (uint8_t)y;
			if (check_bytes((const char *)s, 2))
				printed++;
			else
				refused++;
		}
	/* Every second byte after the leads whose second-byte range is special
	 * or that start three- and four-byte forms (E0..F4), edge values
	 * elsewhere. */
	for (int x = 0xc0; x < 256; x++)
		for (int y = 0; y < 256; y++) {
			if ((x < 0xe0 || x > 0xf4) && memchr(edge, y, sizeof(edge)) == NULL)
				continue;
			for (size_t z = 0; z < sizeof(edge); z++) {
				s[0] = (uint8_t)x;
				s[1] = (uint8_t)y;
				s[2] = edge[z];
				if (check_bytes((const char *)s, 3))
					printed++;
				else
					refused++;
				if (x < 0xf0)
					continue;
				for (size_t w = 0; w < ARRAY_SIZE(fourth); w++) {
					s[3] = fourth[w];
					if (check_bytes((const char *)s, 4))
						printed++;
					else
						refused++;
				}
			}
		}
	/* both outcomes were exercised many times */
	assert_true(printed > 20000);
	assert_true(refused > 20000);
}

/* Object keys are escaped like strings; an ill-formed key is declined
 * (json_dumps prints a broken document for it, see jsonfast.c). */
static void test_keys(void **state)
{
	json_t *o = json_object();

	(void)state;
	json_object_set_new(o, "plain", json_integer(1));
	json_object_set_new(o, "q\"uote", json_integer(2));
	json_object_set_new(o, "back\\slash/slash", json_integer(3));
	json_object_set_new(o, "ctl\x01\n", json_integer(4));
	json_object_set_new(o, "\xc3\xa9t\xc3\xa9", json_integer(5));
	json_object_set_new(o, "", json_integer(6));
	expect_text(o, "{\"plain\":1,\"q\\\"uote\":2,\"back\\\\slash/slash\":3,"
		       "\"ctl\\u0001\\n\":4,\"\xc3\xa9t\xc3\xa9\":5,\"\":6}");
	assert_int_equal(json_object_setn_nocheck(o, "ab\xff", 3, json_null()), 0);
	expect_declined(o);
	json_decref(o);
}

/* Members come out in Jansson's iteration order (insertion order, with a
 * replaced value keeping its place and a deleted key going to the end when
 * set again). */
static void test_member_order(void **state)
{
	static const char *const keys[] = { "zeta", "alpha", "mid", "b", "a", "exp", "iat",
					    "iss", "aud", "sub", "nbf", "jti", "x5c", "kid" };
	json_t *o = json_object();

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		json_object_set_new(o, keys[i], json_integer((json_int_t)i));
	expect_same(o);
	json_object_del(o, "alpha");
	json_object_set_new(o, "alpha", json_integer(99));
	json_object_set_new(o, "zeta", json_string("replaced"));
	expect_same(o);
	/* enough members to make the hashtable grow */
	for (int i = 0; i < 300; i++) {
		char k[16];

		snprintf(k, sizeof(k), "k%d", (i * 7919) % 1000);
		json_object_set_new(o, k, json_integer(i));
	}
	expect_same(o);
	json_decref(o);
}

static void test_nested(void **state)
{
	json_t *v;

	(void)state;
	v = json_pack("[i,[s,[b,[n,{s:{s:[i,{}]}}]]],{},[[]],s#]", 1, "two", 1, "k", "l", -3,
		      "\0nul", (size_t)4);
	assert_non_null(v);
	expect_text(v, "[1,[\"two\",[true,[null,{\"k\":{\"l\":[-3,{}]}}]]],{},[[]],"
		       "\"\\u0000nul\"]");
	json_decref(v);
	v = json_pack("{s:[s,s,{s:b,s:n}],s:{s:{s:{}}}}", "a", "x\ty", "/", "t", 1, "n", "o",
		      "p", "q");
	assert_non_null(v);
	expect_same(v);
	json_decref(v);
}

static void test_jwt_claims(void **state)
{
	char jwt[401];
	json_t *v;

	(void)state;
	v = json_pack("{s:s,s:s,s:[s,s],s:I,s:I,s:I,s:s,s:s,s:{s:s,s:[s,s]}}", "iss",
		      "https://issuer.example.org/realms/nhs", "sub", "svc-pharmacy-001", "aud",
		      "https://api.service.nhs.uk/oauth2/token", "https://other.example/",
		      "iat", (json_int_t)1717171717, "exp", (json_int_t)1717172017, "nbf",
		      (json_int_t)1717171717, "jti", "5f0c2c6e-3a1b-4c7d-9e2f-0123456789ab",
		      "scope", "openid profile", "ctx", "org", "O\xc3\xa9 \"quoted\"", "roles",
		      "r/1", "r\\2");
	assert_non_null(v);
	expect_same(v);
	json_decref(v);

	v = json_pack("{s:s,s:s,s:s}", "alg", "ES256", "typ", "JWT", "kid",
		      "VnP0B3y1lX6dKq3pX2bD0Wm3e1cT8i7l");
	assert_non_null(v);
	expect_text(v, "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":"
		       "\"VnP0B3y1lX6dKq3pX2bD0Wm3e1cT8i7l\"}");
	json_decref(v);

	/* a sign response carrying a 400-character JWT */
	for (size_t i = 0; i < 400; i++)
		jwt[i] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[i % 64];
	jwt[120] = '.';
	jwt[300] = '.';
	jwt[400] = '\0';
	v = json_pack("{s:s,s:b,s:{s:s,s:s,s:s,s:I,s:I,s:s}}", "id", "req-17", "ok", 1,
		      "result", "jwt", jwt, "alg", "ES256", "kid", "k1", "iat",
		      (json_int_t)1717171717, "exp", (json_int_t)1717172017, "jti",
		      "5f0c2c6e-3a1b-4c7d-9e2f-0123456789ab");
	assert_non_null(v);
	expect_same(v);
	json_decref(v);
}

/* Long strings with escapes: the buffer grows in the middle of a string. */
static void test_growth(void **state)
{
	size_t n = 100000;
	char *s = malloc(n);
	json_t *v;

	(void)state;
	assert_non_null(s);
	for (size_t i = 0; i < n; i++)
		s[i] = (char)(i % 3 == 0 ? 0x01 : i % 3 == 1 ? '"' : 'x');
	check_bytes(s, n);
	memset(s, 0x1f, n);
	check_bytes(s, n); /* every byte six times as long */
	memset(s, 'a', n);
	s[n - 1] = '\n';
	check_bytes(s, n);
	v = json_array();
	for (int i = 0; i < 2000; i++)
		json_array_append_new(v, json_stringn(s, (size_t)i % 97));
	expect_same(v);
	json_decref(v);
	free(s);
}

static void test_real_declines(void **state)
{
	json_t *v;

	(void)state;
	v = json_real(1.5);
	expect_declined(v);
	json_decref(v);
	v = json_real(0.0);
	expect_declined(v);
	json_decref(v);
	/* after output has been written: a long string, then the real */
	v = json_pack("{s:s,s:[i,s,{s:f}]}", "a", "some text that is written first", "b", 1,
		      "more text \"escaped\"", "r", 2.25);
	assert_non_null(v);
	expect_declined(v);
	json_decref(v);
	expect_declined(NULL);
}

/* depth containers around an integer: arrays (mode 0), objects (1), or
 * alternating (2, 3: starting with an object or an array inside). */
static json_t *nest(int depth, int mode)
{
	json_t *v = json_integer(7);

	for (int i = 0; i < depth; i++) {
		int obj = mode == 1 || (mode == 2 && i % 2 == 0) || (mode == 3 && i % 2 == 1);
		json_t *c = obj ? json_object() : json_array();

		if (json_is_object(c))
			json_object_set_new(c, "k", v);
		else
			json_array_append_new(c, v);
		v = c;
	}
	return v;
}

static void test_depth_limit(void **state)
{
	json_t *v, *a, *b;

	(void)state;
	for (int mode = 0; mode <= 3; mode++) {
		v = nest(JSONF_MAX_DEPTH, mode);
		expect_same(v);
		json_decref(v);
		v = nest(JSONF_MAX_DEPTH + 1, mode);
		expect_declined(v);
		json_decref(v);
	}
	/* depth counts containers only: scalars at the bottom add nothing */
	v = nest(1, 0);
	expect_text(v, "[7]");
	json_decref(v);
	/* a cycle: Jansson fails, we decline (by depth) */
	a = json_array();
	b = json_array();
	json_array_append_new(a, json_string("x"));
	json_array_append(a, b);
	assert_int_equal(json_array_append(b, a), 0);
	assert_null(json_dumps(a, DUMP_FLAGS));
	expect_declined(a);
	json_array_clear(b);
	json_decref(a);
	json_decref(b);
}

static void test_buffer_helpers(void **state)
{
	jsonf_buf b = { 0 };
	size_t len = 99;
	char *s;

	(void)state;
	/* take of an empty buffer: "" */
	s = jsonf_take(&b, &len);
	assert_non_null(s);
	assert_string_equal(s, "");
	assert_int_equal(len, 0);
	free(s);

	assert_int_equal(jsonf_raw(&b, NULL, 0), 0);
	assert_int_equal(b.len, 0);
	assert_int_equal(jsonf_raw(&b, "ab\0c", 4), 0);
	assert_int_equal(jsonf_str(&b, "de"), 0);
	assert_int_equal(jsonf_int(&b, INT64_MIN), 0);
	assert_int_equal(jsonf_int(&b, 0), 0);
	assert_int_equal(jsonf_int(&b, INT64_MAX), 0);
	assert_int_equal(jsonf_quote(&b, "q\"\0", 3), 0);
	assert_int_equal(jsonf_quote(&b, "", 0), 0);
	assert_int_equal(b.len, 4 + 2 + 20 + 1 + 19 + 11 + 2);
	assert_memory_equal(b.p, "ab\0cde-92233720368547758080"
				 "9223372036854775807\"q\\\"\\u0000\"\"\"",
			    b.len);
	assert_true(b.cap > b.len);

	/* failures leave the length alone */
	len = b.len;
	err_clear();
	assert_int_equal(jsonf_quote(&b, "ok\xc3(", 4), P11J_E_BAD_REQUEST);
	assert_int_equal(b.len, len);
	assert_int_equal(jsonf_quote(&b, "x", SIZE_MAX), P11J_E_NOMEM);
	assert_int_equal(b.len, len);
	assert_int_equal(jsonf_raw(&b, "x", SIZE_MAX - 1), P11J_E_NOMEM);
	assert_int_equal(b.len, len);
	assert_int_equal(jsonf_reserve(&b, SIZE_MAX), P11J_E_NOMEM);

	assert_int_equal(jsonf_reserve(&b, 5000), 0);
	assert_true(b.cap >= len + 5001);
	assert_int_equal(b.len, len);

	jsonf_free(&b);
	assert_null(b.p);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
	jsonf_free(&b); /* again, on a zeroed buffer */

	/* take hands over a NUL-terminated string */
	assert_int_equal(jsonf_str(&b, "{\"a\":"), 0);
	assert_int_equal(jsonf_int(&b, -5), 0);
	assert_int_equal(jsonf_raw(&b, "}", 1), 0);
	s = jsonf_take(&b, NULL);
	assert_string_equal(s, "{\"a\":-5}");
	assert_null(b.p);
	free(s);
}

static void test_append_nonempty(void **state)
{
	jsonf_buf b = { 0 };
	json_t *x = json_pack("{s:s}", "k", "v\n"), *y = json_pack("[i,b]", 3, 0), *r;
	char *s;
	size_t len;

	(void)state;
	assert_non_null(x);
	assert_non_null(y);
	assert_int_equal(jsonf_str(&b, "{\"x\":"), 0);
	assert_int_equal(jsonf_append(&b, x), 0);
	assert_int_equal(jsonf_str(&b, ",\"y\":"), 0);
	assert_int_equal(jsonf_append(&b, y), 0);
	len = b.len;
	r = json_real(1.0);
	assert_int_equal(jsonf_append(&b, r), 1);
	assert_int_equal(b.len, len);
	assert_int_equal(jsonf_raw(&b, "}", 1), 0);
	s = jsonf_take(&b, &len);
	assert_string_equal(s, "{\"x\":{\"k\":\"v\\n\"},\"y\":[3,false]}");
	assert_int_equal(len, strlen(s));
	free(s);
	json_decref(x);
	json_decref(y);
	json_decref(r);
}

static void test_dumps(void **state)
{
	json_t *v = json_pack("{s:s,s:i}", "a", "b/\x01", "n", 5), *r;
	char *s = NULL, *want;
	size_t len = 0;

	(void)state;
	assert_non_null(v);
	assert_int_equal(jsonf_dumps(v, &s, &len), 0);
	assert_string_equal(s, "{\"a\":\"b/\\u0001\",\"n\":5}");
	assert_int_equal(len, strlen(s));
	free(s);
	/* a real goes through Jansson */
	r = json_pack("{s:f,s:[s]}", "r", 0.1, "s", "t\"");
	assert_non_null(r);
	want = json_dumps(r, DUMP_FLAGS);
	assert_int_equal(jsonf_dumps(r, &s, NULL), 0);
	assert_string_equal(s, want);
	free(s);
	free(want);
	json_decref(r);
	/* Jansson cannot print it either: an error, outputs untouched */
	r = json_stringn_nocheck("\xff", 1);
	s = (char *)0x1;
	len = 77;
	assert_true(jsonf_dumps(r, &s, &len) < 0);
	assert_ptr_equal(s, (char *)0x1);
	assert_int_equal(len, 77);
	json_decref(r);
	json_decref(v);
}

/* Random trees from a fixed seed, compared with json_dumps. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)((rng_state >> 11) % n);
}

static size_t rnd_text(char *out, size_t max)
{
	static const char *const pieces[] = { "a", "Z", "0", " ", "/", "\"", "\\", "\n", "\t",
					      "\b", "\f", "\r", "\x01", "\x1f", "\x7f", "\xc3\xa9",
					      "\xe2\x82\xac", "\xf0\x9f\x94\x91", "\xef\xbf\xbf",
					      "eyJhbGciOiJFUzI1NiJ9", "<>&'", "{}[],:" };
	size_t n = 0, count = rnd(12);

	for (size_t i = 0; i < count; i++) {
		const char *p;
		size_t l;

		if (rnd(16) == 0) { /* an embedded NUL */
			p = "\0";
			l = 1;
		} else {
			p = pieces[rnd(ARRAY_SIZE(pieces))];
			l = strlen(p);
		}
		if (n + l > max)
			break;
		memcpy(out + n, p, l);
		n += l;
	}
	return n;
}

/* Walked after building: a duplicate key may have replaced a real. */
static int tree_has_real(const json_t *v)
{
	const char *k;
	json_t *m;
	size_t i;

	if (json_is_real(v))
		return 1;
	json_object_foreach((json_t *)v, k, m)
		if (tree_has_real(m))
			return 1;
	json_array_foreach(v, i, m)
		if (tree_has_real(m))
			return 1;
	return 0;
}

static json_t *rnd_tree(int depth, int with_reals)
{
	static const json_int_t ints[] = { 0, -1, 1, INT64_MAX, INT64_MIN, 1717171717, -42 };
	uint32_t kind = rnd(depth >= 6 ? 7 : 10);
	char text[128];
	json_t *v;

	switch (kind) {
	case 0:
		return json_null();
	case 1:
		return json_true();
	case 2:
		return json_false();
	case 3:
		if (rnd(2))
			return json_integer(ints[rnd(ARRAY_SIZE(ints))]);
		return json_integer((json_int_t)rnd(2000000000) - 1000000000);
	case 4:
	case 5:
		return json_stringn(text, rnd_text(text, sizeof(text)));
	case 6:
		if (with_reals && rnd(3) == 0)
			return json_real(rnd(1000) / 8.0);
		return json_string("s");
	case 7:
	case 8:
		v = json_object();
		for (uint32_t i = 0, n = rnd(6); i < n; i++) {
			size_t kl = rnd_text(text, 24);

			json_object_setn_new(v, text, kl, rnd_tree(depth + 1, with_reals));
		}
		return v;
	default:
		v = json_array();
		for (uint32_t i = 0, n = rnd(6); i < n; i++)
			json_array_append_new(v, rnd_tree(depth + 1, with_reals));
		return v;
	}
}

static void test_random_trees(void **state)
{
	jsonf_buf all = { 0 };
	size_t total = 0, reals = 0;

	(void)state;
	for (int t = 0; t < 20000; t++) {
		json_t *v = rnd_tree(0, t % 10 == 9);
		size_t before = all.len;
		char *want;
		int r, has_real;

		assert_non_null(v);
		has_real = tree_has_real(v);
		want = json_dumps(v, DUMP_FLAGS);
		assert_non_null(want);
		/* everything goes into one buffer, as a caller reusing it would */
		r = jsonf_append(&all, v);
		if (has_real) {
			assert_int_equal(r, 1);
			assert_int_equal(all.len, before);
			reals++;
		} else {
			assert_int_equal(r, 0);
			if (all.len - before != strlen(want) ||
			    memcmp(all.p + before, want, strlen(want)) != 0)
				fail_msg("tree %d\njson_dumps: %s\njsonf:      %.*s", t, want,
					 (int)(all.len - before), all.p + before);
			total += strlen(want);
		}
		free(want);
		json_decref(v);
		if (all.len > 1 << 20)
			jsonf_free(&all);
	}
	assert_true(reals > 100);
	assert_true(total > 1000000);
	jsonf_free(&all);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scalars_and_empties),
		cmocka_unit_test(test_every_byte),
		cmocka_unit_test(test_control_quote_slash),
		cmocka_unit_test(test_embedded_nul),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_utf8_exhaustive),
		cmocka_unit_test(test_keys),
		cmocka_unit_test(test_member_order),
		cmocka_unit_test(test_nested),
		cmocka_unit_test(test_jwt_claims),
		cmocka_unit_test(test_growth),
		cmocka_unit_test(test_real_declines),
		cmocka_unit_test(test_depth_limit),
		cmocka_unit_test(test_buffer_helpers),
		cmocka_unit_test(test_append_nonempty),
		cmocka_unit_test(test_dumps),
		cmocka_unit_test(test_random_trees),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
