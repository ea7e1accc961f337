/* SPDX-License-Identifier: MIT */
/*
 * One error space for the whole project (after OpenSSH's ssherr.h).
 *
 * Every function that can fail returns 0 or a negative P11J_E_* code. The
 * human detail ("token 'nhs' is not present (CKR_TOKEN_NOT_PRESENT)") is kept
 * in a thread-local buffer set by err_set() at the place where the foreign
 * error (CK_RV, errno, OpenSSL, Jansson, libcurl) is converted, once.
 * Libraries never print; programs print err_msg() when they log the failure.
 */
#ifndef P11J_ERR_H
#define P11J_ERR_H

#include <stdarg.h>

enum {
	P11J_OK = 0,
	P11J_E_INTERNAL = -1,          /* a bug or an unexpected library failure */
	P11J_E_NOMEM = -2,             /* allocation failed */
	P11J_E_BAD_REQUEST = -3,       /* malformed input from a caller or client */
	P11J_E_REQUEST_TOO_LARGE = -4, /* input over a documented bound */
	P11J_E_UNKNOWN_OP = -5,        /* protocol op not known */
	P11J_E_UNKNOWN_KEY = -6,       /* no key with that name */
	P11J_E_UNSUPPORTED_ALG = -7,   /* alg unknown, or does not fit the key */
	P11J_E_FORBIDDEN = -8,         /* peer not allowed */
	P11J_E_TOKEN_UNAVAILABLE = -9, /* token absent, removed, device error */
	P11J_E_PIN_INCORRECT = -10,    /* C_Login said CKR_PIN_INCORRECT */
	P11J_E_PIN_REQUIRED = -11,     /* no PIN available / agent locked */
	P11J_E_POLICY = -12,           /* a policy rule refused the request */
	P11J_E_MODULE = -13,           /* PKCS#11 module cannot be loaded or is not allowed */
	P11J_E_NOT_FOUND = -14,        /* token, object or file not found */
	P11J_E_SYSTEM = -15,           /* an OS call failed (errno in the message) */
	P11J_E_CRYPTO = -16,           /* OpenSSL failed */
	P11J_E_INSECURE = -17,         /* file permissions or ownership unsafe */
	P11J_E_BAD_JWT = -18,          /* not a well-formed compact JWS */
	P11J_E_BAD_SIGNATURE = -19,    /* signature does not verify */
	P11J_E_EXPIRED = -20,          /* exp is in the past */
	P11J_E_NOT_YET_VALID = -21,    /* nbf (or iat) is in the future */
	P11J_E_PKCS11 = -22,           /* any other PKCS#11 failure */
	P11J_E_AGENT_UNAVAILABLE = -23,/* cannot connect to the agent */
	P11J_E_PROTOCOL = -24,         /* the peer broke the protocol */
	P11J_E_KEY_UNSAFE = -25,       /* private key extractable or not sensitive */
	P11J_E_BUSY = -26,             /* too many connections or requests */
	P11J_E_OAUTH = -27,            /* an OAuth server answered with an error */
	P11J_E_CONNECT = -28,          /* cannot connect to a server (DNS, refused) */
	P11J_E_TIMEOUT = -29,          /* a server did not answer in time */
	P11J_E_TLS = -30,              /* TLS handshake or certificate check failed */
	P11J_E_BAD_RESPONSE = -31,     /* a server's answer is unusable */
	P11J_E_HTTP_STATUS = -32,      /* an API answered with a non-2xx status */
	P11J_E__LAST = -33
};

/* Stable machine name of a code, as used on the wire ("bad_request").
 * Codes without a wire meaning map to "internal". Never NULL. */
const char *err_code_name(int code);

/* Default English text for a code. Never NULL. */
const char *err_strerror(int code);

/* Parse a wire name back to a code (P11J_E_INTERNAL if unknown). */
int err_code_from_name(const char *name);

/* Record detail for the calling thread and return code, so that
 * `return err_set(P11J_E_NOMEM, "...")` reads naturally. */
int err_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int err_setv(int code, const char *fmt, va_list ap);

/* err_set(P11J_E_NOMEM, "out of memory"): the one message for a failed
 * allocation. */
int err_nomem(void);

/* Detail of the last err_set() on this thread, or err_strerror() of the
 * code given when nothing was recorded. */
const char *err_msg(void);

/* Forget the recorded detail. */
void err_clear(void);

/* Append the current OpenSSL error queue (first reason) to a message and
 * clear it: err_set_ossl(P11J_E_CRYPTO, "EVP_DigestSign"). */
int err_set_ossl(int code, const char *what);

#endif
