/* SPDX-License-Identifier: MIT */
#include "common/err.h"

#include <stdio.h>
#include <string.h>

static const struct {
	int code;
	const char *name;
	const char *text;
} err_table[] = {
	{ P11J_OK, "ok", "success" },
	{ P11J_E_INTERNAL, "internal", "internal error" },
	{ P11J_E_NOMEM, "internal", "out of memory" },
	{ P11J_E_BAD_REQUEST, "bad_request", "malformed request" },
	{ P11J_E_REQUEST_TOO_LARGE, "request_too_large", "request too large" },
	{ P11J_E_UNKNOWN_OP, "unknown_op", "unknown operation" },
	{ P11J_E_UNKNOWN_KEY, "unknown_key", "no such key" },
	{ P11J_E_UNSUPPORTED_ALG, "unsupported_alg", "algorithm not supported for this key" },
	{ P11J_E_FORBIDDEN, "forbidden", "not allowed" },
	{ P11J_E_TOKEN_UNAVAILABLE, "token_unavailable", "token not available" },
	{ P11J_E_PIN_INCORRECT, "pin_incorrect", "PIN incorrect" },
	{ P11J_E_PIN_REQUIRED, "pin_required", "PIN required" },
	{ P11J_E_POLICY, "policy_violation", "refused by policy" },
	{ P11J_E_MODULE, "module_error", "PKCS#11 module cannot be used" },
	{ P11J_E_NOT_FOUND, "not_found", "not found" },
	{ P11J_E_SYSTEM, "internal", "system call failed" },
	{ P11J_E_CRYPTO, "internal", "cryptographic library failure" },
	{ P11J_E_INSECURE, "insecure_file", "file permissions are unsafe" },
	{ P11J_E_BAD_JWT, "bad_jwt", "malformed JWT" },
	{ P11J_E_BAD_SIGNATURE, "bad_signature", "signature does not verify" },
	{ P11J_E_EXPIRED, "expired", "token expired" },
	{ P11J_E_NOT_YET_VALID, "not_yet_valid", "token not yet valid" },
	{ P11J_E_PKCS11, "internal", "PKCS#11 call failed" },
	{ P11J_E_AGENT_UNAVAILABLE, "agent_unavailable", "cannot reach the agent" },
	{ P11J_E_PROTOCOL, "protocol_error", "protocol error" },
	{ P11J_E_KEY_UNSAFE, "key_unsafe", "private key is extractable or not sensitive" },
	{ P11J_E_BUSY, "busy", "too busy, try again later" },
	{ P11J_E_OAUTH, "oauth_error", "the token endpoint returned an error" },
	{ P11J_E_CONNECT, "connect_failed", "cannot connect to the server" },
	{ P11J_E_TIMEOUT, "timeout", "the server did not answer in time" },
	{ P11J_E_TLS, "tls_error", "TLS failure" },
	{ P11J_E_BAD_RESPONSE, "bad_response", "the server's answer is unusable" },
	{ P11J_E_HTTP_STATUS, "http_status", "the server answered with an error status" },
};

static _Thread_local char err_buf[512];
static _Thread_local int err_have;

static int err_index(int code)
{
	for (size_t i = 0; i < sizeof(err_table) / sizeof(err_table[0]); i++)
		if (err_table[i].code == code)
			return (int)i;
	return 1; /* internal */
}

const char *err_code_name(int code)
{
	return err_table[err_index(code)].name;
}

const char *err_strerror(int code)
{
	return err_table[err_index(code)].text;
}

int err_code_from_name(const char *name)
{
	if (name == NULL)
		return P11J_E_INTERNAL;
	for (size_t i = 0; i < sizeof(err_table) / sizeof(err_table[0]); i++)
		if (strcmp(err_table[i].name, name) == 0)
			return err_table[i].code;
	return P11J_E_INTERNAL;
}

int err_setv(int code, const char *fmt, va_list ap)
{
	/* format into a copy first: the arguments may include err_msg() */
	char tmp[sizeof(err_buf)];

	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	memcpy(err_buf, tmp, sizeof(err_buf));
	err_have = 1;
	return code;
}

int err_set(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_setv(code, fmt, ap);
	va_end(ap);
	return code;
}

int err_nomem(void)
{
	return err_set(P11J_E_NOMEM, "out of memory");
}

const char *err_msg(void)
{
	return err_have ? err_buf : "no error detail recorded";
}

void err_clear(void)
{
	err_have = 0;
	err_buf[0] = '\0';
}
