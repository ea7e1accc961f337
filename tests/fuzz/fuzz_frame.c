/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the server's request framing (srv_frame_next,
 * srv_frame_has_line, srv_frame_compact in agent/server.c): a byte stream
 * arrives in reads of fuzzed sizes into a buffer of SRV_FRAME_CAP bytes,
 * as conn_read() fills it, and is cut into lines as conn_serve_lines()
 * does. The lines must be the stream's lines, in order, each within
 * PROTO_MAX_LINE; the first line over the limit must be reported as such,
 * and only once it is buffered in full; partial lines must be kept whole
 * across reads; compaction must leave nothing of the served lines behind.
 *
 * Input: two bytes that choose the read sizes (0: every read fills the
 * buffer, so several requests and a partial line come in one read), then
 * the stream.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) \
	do { \
		if (!(x)) \
			abort(); \
	} while (0)

static uint32_t next_rand(uint32_t *st)
{
	*st ^= *st << 13;
	*st ^= *st >> 17;
	*st ^= *st << 5;
	return *st;
}

/* How many bytes the next read brings (before the buffer's room). */
static size_t read_size(uint32_t seed, uint32_t *st)
{
	uint32_t r;

	if (seed == 0)
		return SRV_FRAME_CAP;
	r = next_rand(st);
	if (r % 8 == 0)
		return SRV_FRAME_CAP; /* a big read now and then */
	return 1 + (r >> 3) % 512;
}

/* The segment of the stream that starts at start: its length up to the
 * next newline (or the end), and whether a newline ends it. */
static size_t segment(const char *s, size_t n, size_t start, bool *ret_nl)
{
	const char *nl = start < n ? memchr(s + start, '\n', n - start) : NULL;

	*ret_nl = nl != NULL;
	return nl ? (size_t)(nl - (s + start)) : n - start;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *stream;
	size_t n, pos = 0, len = 0, next = 0; /* next: where the stream's next line starts */
	uint32_t seed, st;
	char *buf;
	bool too_long = false;

	if (size < 2)
		return 0;
	seed = (uint32_t)data[0] << 8 | data[1];
	st = seed ? seed * 2654435761u : 1;
	stream = (const char *)data + 2;
	n = size - 2;
	buf = malloc(SRV_FRAME_CAP); /* exactly what a connection holds */
	CHECK(buf != NULL);
	memset(buf, 0, SRV_FRAME_CAP);

	for (;;) {
		size_t room = SRV_FRAME_CAP - len, take = read_size(seed, &st), off = 0, old;

		if (take > room)
			take = room;
		if (take > n - pos)
			take = n - pos;
		memcpy(buf + len, stream + pos, take);
		len += take;
		pos += take;
		for (;;) {
			size_t l = 0, want;
			bool nl;
			srv_frame_result r = srv_frame_next(buf, len, off, &l);

			want = segment(stream, n, next, &nl);
			if (r == SRV_FRAME_LINE) {
				/* the stream's next line, whole, within the limit */
				CHECK(nl && l == want && l <= PROTO_MAX_LINE);
				CHECK(off + l < len && buf[off + l] == '\n');
				CHECK(memcmp(buf + off, stream + next, l) == 0);
				CHECK(srv_frame_has_line(buf, len, off));
				CHECK(srv_frame_has_line(buf, len, off + l + 1) ==
				      (memchr(buf + off + l + 1, '\n', len - off - l - 1) != NULL));
				off += l + 1;
				next += l + 1;
				continue;
			}
			CHECK(!srv_frame_has_line(buf, len, off));
			CHECK(memcmp(buf + off, stream + next, len - off) == 0);
			if (r == SRV_FRAME_TOO_LONG) {
				/* only for a line over the limit, once a buffer of it is in */
				CHECK(want > PROTO_MAX_LINE && len - off == SRV_FRAME_CAP);
				too_long = true;
			} else {
				CHECK(r == SRV_FRAME_PARTIAL && len - off < SRV_FRAME_CAP);
			}
			break;
		}
		old = len;
		len = srv_frame_compact(buf, len, off);
		CHECK(len == old - off);
		for (size_t i = len; i < old; i++)
			CHECK(buf[i] == 0); /* the served requests are wiped */
		if (too_long)
			break;
		if (pos == n) {
			bool nl;

			/* the end: what is left is the stream's unfinished last line */
			CHECK(len == segment(stream, n, next, &nl) && !nl);
			break;
		}
		CHECK(len < SRV_FRAME_CAP); /* room to read more */
	}
	free(buf);
	return 0;
}
