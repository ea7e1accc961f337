/* SPDX-License-Identifier: MIT */
/*
 * Compact JSON output byte-identical to Jansson 2.14's
 * json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY).
 *
 * What Jansson prints for a string (checked against the library byte by byte
 * in tests/unit/test_jsonfast.c):
 *   - '"' and '\\' become \" and \\;
 *   - 0x08 0x09 0x0A 0x0C 0x0D become \b \t \n \f \r;
 *   - every other byte below 0x20, NUL included, becomes \u00XX with
 *     upper-case hex (\u001F, not \u001f);
 *   - everything else is copied: 0x7F, '/', and all non-ASCII UTF-8;
 *   - a string that is not valid UTF-8 (stray continuation bytes, C0/C1,
 *     F5..FF, overlong forms, surrogates, past U+10FFFF, truncated) is not
 *     printed at all: json_dumps fails. Such strings only exist through the
 *     *_nocheck constructors. For a value we decline, so the caller's
 *     json_dumps fails as before. For an object key Jansson ignores the
 *     failure and prints a broken document ({"ab\xff":1} comes out as {":1});
 *     we decline there too, so the fallback keeps that behaviour unchanged.
 * Object members come out in json_object_iter() order (insertion order in
 * 2.14), integers as plain decimals, reals are left to Jansson's dtostr.
 */
#include "jose/jsonfast.h"
#include "common/err.h"
#include "common/util.h"

#include <stdbool.h>
#include <string.h>

_Static_assert(sizeof(json_int_t) <= sizeof(int64_t), "json_int_t wider than int64_t");

/* Byte classes for the string scanner. For a UTF-8 lead byte the class is the
 * length of its sequence. */
enum {
	J_PLAIN = 0, /* copied as is */
	J_ESC = 1,   /* escaped */
	J_U2 = 2,
	J_U3 = 3,
	J_U4 = 4,
	J_BAD = 5, /* never starts a valid sequence */
};

static const uint8_t jf_class[256] = {
	[0x00 ... 0x1f] = J_ESC,
	['"'] = J_ESC,
	['\\'] = J_ESC,
	[0x80 ... 0xc1] = J_BAD, /* continuation bytes; C0 and C1 only make overlong forms */
	[0xc2 ... 0xdf] = J_U2,
	[0xe0 ... 0xef] = J_U3,
	[0xf0 ... 0xf4] = J_U4,
	[0xf5 ... 0xff] = J_BAD, /* past U+10FFFF */
};

/* Second character of the two-character escapes; the other J_ESC bytes get
 * \u00XX. */
static const char jf_short_esc[0x60] = {
	['\b'] = 'b', ['\t'] = 't', ['\n'] = 'n', ['\f'] = 'f', ['\r'] = 'r',
	['"'] = '"', ['\\'] = '\\',
};

/* Room for need more bytes plus a NUL after len. */
static int jf_reserve(jsonf_buf *b, size_t need)
{
	if (need < b->cap - b->len)
		return 0;
	if (need > SIZE_MAX - 1 - b->len)
		return err_set(P11J_E_NOMEM, "out of memory (JSON text too large)");
	return util_secret_reserve(&b->p, &b->cap, b->len, need);
}

/* Drop (and wipe) whatever was appended after start. */
static void jf_rollback(jsonf_buf *b, size_t start)
{
	if (b->len > start)
		util_wipe(b->p + start, b->len - start);
	b->len = start;
}

static int jf_put(jsonf_buf *b, char c)
{
	int r = jf_reserve(b, 1);

	if (r < 0)
		return r;
	b->p[b->len++] = c;
	return 0;
}

/* Length of the well-formed UTF-8 sequence at s (avail bytes left), 0 if
 * there is none: the same set of strings Jansson's decoder accepts. */
static size_t jf_utf8_len(const uint8_t *s, size_t avail)
{
	size_t len = jf_class[s[0]];
	uint8_t lo = 0x80, hi = 0xbf;

	if (len < J_U2 || len > J_U4 || len > avail)
		return 0;
	/* The second byte carries the range limits of the lead byte. */
	switch (s[0]) {
	case 0xe0:
		lo = 0xa0; /* below: overlong */
		break;
	case 0xed:
		hi = 0x9f; /* above: UTF-16 surrogates */
		break;
	case 0xf0:
		lo = 0x90; /* below: overlong */
		break;
	case 0xf4:
		hi = 0x8f; /* above: past U+10FFFF */
		break;
	}
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t k = 2; k < len; k++)
		if ((s[k] & 0xc0) != 0x80)
			return 0;
	return len;
}

/* Writes the escape of c (a J_ESC byte) at o; returns its length (2 or 6). */
static size_t jf_escape(char *o, uint8_t c)
{
	static const char hex[] = "0123456789ABCDEF";
	char e = jf_short_esc[c];

	o[0] = '\\';
	if (e != 0) {
		o[1] = e;
		return 2;
	}
	o[1] = 'u';
	o[2] = '0';
	o[3] = '0';
	o[4] = hex[c >> 4];
	o[5] = hex[c & 15];
	return 6;
}

/*
 * 0, 1 (not valid UTF-8) or a negative code. The scan copies runs of bytes
 * that need no escaping with one memcpy each. Invariant: the buffer has room
 * for the unflushed input (n - run), the closing quote and the NUL, so only
 * an escape, which can grow 1 byte to 6, needs a new reservation.
 */
static int jf_quote(jsonf_buf *b, const char *str, size_t n)
{
	const uint8_t *s = (const uint8_t *)str;
	size_t i = 0, run = 0;
	int r;

	if (n > SIZE_MAX - 16)
		return err_set(P11J_E_NOMEM, "out of memory (JSON string too large)");
	if ((r = jf_reserve(b, n + 2)) < 0)
		return r;
	b->p[b->len++] = '"';
	while (i < n) {
		uint8_t c = jf_class[s[i]];
		size_t k;

		if (c == J_PLAIN) {
			i++;
			continue;
		}
		if (c != J_ESC) {
			k = jf_utf8_len(s + i, n - i);
			if (k == 0)
				return 1;
			i += k;
			continue;
		}
		memcpy(b->p + b->len, s + run, i - run);
		b->len += i - run;
		if ((r = jf_reserve(b, 6 + (n - i - 1) + 1)) < 0)
			return r;
		b->len += jf_escape(b->p + b->len, s[i]);
		run = ++i;
	}
	memcpy(b->p + b->len, s + run, n - run);
	b->len += n - run;
	b->p[b->len++] = '"';
	return 0;
}

static int jf_value(jsonf_buf *b, const json_t *v, int depth);

static int jf_object(jsonf_buf *b, const json_t *v, int depth)
{
	/* Jansson's iterator API takes a non-const object but does not change it. */
	json_t *o = (json_t *)v;
	void *it = json_object_iter(o);
	int r;

	if ((r = jf_put(b, '{')) != 0)
		return r;
	for (bool first = true; it != NULL; it = json_object_iter_next(o, it), first = false) {
		if (!first && (r = jf_put(b, ',')) != 0)
			return r;
		if ((r = jf_quote(b, json_object_iter_key(it), json_object_iter_key_len(it))) != 0)
			return r;
		if ((r = jf_put(b, ':')) != 0)
			return r;
		if ((r = jf_value(b, json_object_iter_value(it), depth)) != 0)
			return r;
	}
	return jf_put(b, '}');
}

static int jf_array(jsonf_buf *b, const json_t *v, int depth)
{
	size_t n = json_array_size(v);
	int r;

	if ((r = jf_put(b, '[')) != 0)
		return r;
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && (r = jf_put(b, ',')) != 0)
			return r;
		if ((r = jf_value(b, json_array_get(v, i), depth)) != 0)
			return r;
	}
	return jf_put(b, ']');
}

/* depth: containers open around v. A cycle ends here too, as too deep. */
static int jf_value(jsonf_buf *b, const json_t *v, int depth)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		if (depth >= JSONF_MAX_DEPTH)
			return 1;
		return jf_object(b, v, depth + 1);
	case JSON_ARRAY:
		if (depth >= JSONF_MAX_DEPTH)
			return 1;
		return jf_array(b, v, depth + 1);
	case JSON_STRING:
		return jf_quote(b, json_string_value(v), json_string_length(v));
	case JSON_INTEGER:
		return jsonf_int(b, json_integer_value(v));
	case JSON_TRUE:
		return jsonf_raw(b, "true", 4);
	case JSON_FALSE:
		return jsonf_raw(b, "false", 5);
	case JSON_NULL:
		return jsonf_raw(b, "null", 4);
	case JSON_REAL:
	default:
		return 1;
	}
}

int jsonf_append(jsonf_buf *b, const json_t *v)
{
	size_t start = b->len;
	int r;

	if (v == NULL)
		return 1;
	r = jf_value(b, v, 0);
	if (r != 0)
		jf_rollback(b, start);
	return r;
}

int jsonf_append_any(jsonf_buf *b, const json_t *v)
{
	int r = jsonf_append(b, v);
	char *s;

	if (r <= 0 || v == NULL)
		return r;
	/* json_dumps also fails on invalid UTF-8 and on cycles, but only
	 * *_nocheck constructors or a bug make those */
	if ((s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY)) == NULL)
		return 1;
	r = jsonf_str(b, s);
	freezero_str(s);
	return r;
}

int jsonf_raw(jsonf_buf *b, const void *s, size_t n)
{
	int r;

	if (n == 0)
		return 0;
	if ((r = jf_reserve(b, n)) < 0)
		return r;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

int jsonf_str(jsonf_buf *b, const char *s)
{
	return jsonf_raw(b, s, strlen(s));
}

const char *jsonf_itoa(int64_t v, char tmp[JSONF_INT_MAX])
{
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	size_t o = JSONF_INT_MAX;

	do {
		tmp[--o] = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		tmp[--o] = '-';
	return tmp + o;
}

int jsonf_int(jsonf_buf *b, int64_t v)
{
	char tmp[JSONF_INT_MAX];
	const char *p = jsonf_itoa(v, tmp);

	return jsonf_raw(b, p, (size_t)(tmp + JSONF_INT_MAX - p));
}

int jsonf_quote(jsonf_buf *b, const char *s, size_t n)
{
	size_t start = b->len;
	int r = jf_quote(b, s, n);

	if (r == 0)
		return 0;
	jf_rollback(b, start);
	if (r == 1)
		return err_set(P11J_E_BAD_REQUEST, "JSON string is not valid UTF-8");
	return r;
}

bool jsonf_utf8_valid(const char *s, size_t n)
{
	const uint8_t *u = (const uint8_t *)s;

	for (size_t i = 0; i < n;) {
		uint8_t c = jf_class[u[i]];
		size_t k;

		if (c == J_PLAIN || c == J_ESC) {
			i++;
			continue;
		}
		if ((k = jf_utf8_len(u + i, n - i)) == 0)
			return false;
		i += k;
	}
	return true;
}

void jsonf_free(jsonf_buf *b)
{
	freezero_buf(b->p, b->cap);
	memset(b, 0, sizeof(*b));
}

char *jsonf_take(jsonf_buf *b, size_t *ret_len)
{
	char *p;

	if (jf_reserve(b, 0) < 0)
		return NULL;
	b->p[b->len] = '\0';
	p = b->p;
	if (ret_len != NULL)
		*ret_len = b->len;
	memset(b, 0, sizeof(*b));
	return p;
}

int jsonf_reserve(jsonf_buf *b, size_t need)
{
	return jf_reserve(b, need);
}

void jsonf_rollback(jsonf_buf *b, size_t start)
{
	jf_rollback(b, start);
}

int jsonf_dumps(const json_t *v, char **ret, size_t *ret_len)
{
	jsonf_buf b = { 0 };
	char *out;
	int r;

	r = jsonf_append_any(&b, v);
	if (r > 0)
		r = err_set(P11J_E_NOMEM, "json_dumps failed (out of memory?)");
	if (r < 0 || (out = jsonf_take(&b, ret_len)) == NULL) {
		jsonf_free(&b);
		return r < 0 ? r : err_nomem();
	}
	*ret = out;
	return 0;
}
