/* SPDX-License-Identifier: MIT */
/* base64url without padding (RFC 7515 section 2) and standard base64 (x5c). */
#ifndef P11J_B64URL_H
#define P11J_B64URL_H

#include <stddef.h>
#include <stdint.h>

/* Length of the encoding of len bytes, without NUL. */
size_t b64u_enc_len(size_t len);

/* Encode into out, which must hold b64u_enc_len(len) + 1 bytes; NUL-terminates.
 * Returns the number of characters written. Cannot fail. */
size_t b64u_encode_to(const uint8_t *in, size_t len, char *out);

/* Encode into a fresh NUL-terminated string. */
int b64u_encode(const uint8_t *in, size_t len, char **ret);

/* Strict decode: alphabet A-Z a-z 0-9 - _ only, no padding, no whitespace,
 * length mod 4 != 1, unused trailing bits zero. P11J_E_BAD_JWT otherwise.
 * *ret_buf is malloc'ed (non-NULL even for len 0). */
int b64u_decode(const char *in, size_t len, uint8_t **ret_buf, size_t *ret_len);

/* Standard base64 with padding, no newlines (for x5c). */
int b64_std_encode(const uint8_t *in, size_t len, char **ret);

#endif
