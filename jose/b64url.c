/* SPDX-License-Identifier: MIT */
#include "jose/b64url.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

static const char b64u_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t b64u_enc_len(size_t len)
{
	return (len / 3) * 4 + (len % 3 == 0 ? 0 : len % 3 + 1);
}

size_t b64u_encode_to(const uint8_t *in, size_t len, char *out)
{
	size_t o = 0, i = 0;

	for (; i + 3 <= len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

		out[o++] = b64u_alphabet[(v >> 18) & 63];
		out[o++] = b64u_alphabet[(v >> 12) & 63];
		out[o++] = b64u_alphabet[(v >> 6) & 63];
		out[o++] = b64u_alphabet[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;

		out[o++] = b64u_alphabet[(v >> 18) & 63];
		out[o++] = b64u_alphabet[(v >> 12) & 63];
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;

		out[o++] = b64u_alphabet[(v >> 18) & 63];
		out[o++] = b64u_alphabet[(v >> 12) & 63];
		out[o++] = b64u_alphabet[(v >> 6) & 63];
	}
	out[o] = '\0';
	return o;
}

int b64u_encode(const uint8_t *in, size_t len, char **ret)
{
	char *s;

	if (len > (SIZE_MAX - 4) / 4 * 3)
		return err_set(P11J_E_REQUEST_TOO_LARGE, "input too large to encode");
	s = malloc(b64u_enc_len(len) + 1);
	if (s == NULL)
		return err_nomem();
	b64u_encode_to(in, len, s);
	*ret = s;
	return 0;
}

static int b64u_val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

int b64u_decode(const char *in, size_t len, uint8_t **ret_buf, size_t *ret_len)
{
	uint8_t *out;
	size_t o = 0, i;
	uint32_t acc = 0;
	int bits = 0;

	out = malloc(len / 4 * 3 + 3);
	if (out == NULL)
		return err_nomem();
	for (i = 0; i < len; i++) {
		int v = b64u_val((unsigned char)in[i]);

		if (v < 0) {
			free(out);
			if (in[i] == '=')
				return err_set(P11J_E_BAD_JWT, "base64url text must not be padded");
			return err_set(P11J_E_BAD_JWT,
				       "invalid character 0x%02x in base64url text at offset %zu",
				       (unsigned char)in[i], i);
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (uint8_t)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	if (len % 4 == 1) {
		free(out);
		return err_set(P11J_E_BAD_JWT, "base64url text has an impossible length (%zu)", len);
	}
	/* Leftover bits must be zero, so each byte string has one encoding. */
	if (acc != 0) {
		free(out);
		return err_set(P11J_E_BAD_JWT, "base64url text has non-zero trailing bits");
	}
	*ret_buf = out;
	*ret_len = o;
	return 0;
}

int b64_std_encode(const uint8_t *in, size_t len, char **ret)
{
	char *s;

	if (len > (SIZE_MAX - 8) / 4 * 3 || len > INT32_MAX)
		return err_set(P11J_E_REQUEST_TOO_LARGE, "input too large to encode");
	s = malloc((len + 2) / 3 * 4 + 1);
	if (s == NULL)
		return err_nomem();
	EVP_EncodeBlock((unsigned char *)s, in, (int)len);
	*ret = s;
	return 0;
}
