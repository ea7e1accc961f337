/* SPDX-License-Identifier: MIT */
/*
 * Test support: a software signer matching jws_sign_fn, which signs with an
 * OpenSSL private key and returns signatures in JWS form (raw R||S for
 * ES*), so that the JOSE and protocol tests and the protocol fuzzer run
 * without a token; and a self-signed certificate to attach to such a key.
 */
#ifndef P11J_TEST_SOFTSIGN_H
#define P11J_TEST_SOFTSIGN_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>
#include "jose/jwa.h"

/* jws_sign_fn over an EVP_PKEY (evp_pkey). */
int softsign_fn(void *evp_pkey, jwa_alg alg, const uint8_t *in, size_t inlen, uint8_t *sig,
		size_t *siglen);

/* A self-signed certificate for key (CN=t, one hour) as DER in *ret_der
 * (OPENSSL_free it). 0 or -1. */
int softsign_cert(EVP_PKEY *key, uint8_t **ret_der, int *ret_len);

#endif
