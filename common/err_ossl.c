/* SPDX-License-Identifier: MIT */
/* err_set_ossl(): apart from err.c, which needs no libcrypto. */
#include "common/err.h"

#include <openssl/err.h>

int err_set_ossl(int code, const char *what)
{
	unsigned long e = ERR_get_error();
	char reason[256] = "no detail from OpenSSL";

	if (e != 0)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	return err_set(code, "%s failed: %s", what, reason);
}
