/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the JWT parser and verifier (the CLI's `verify` feeds it
 * untrusted text). Built with -fsanitize=fuzzer when the 'fuzzing' option
 * is on; otherwise fuzz_replay.c's main() replays a corpus through it.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "jose/jwk.h"
#include "jose/jws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_t *fuzz_jwks;

static void fuzz_jws_init(void)
{
	EVP_PKEY *pk;
	json_t *jwk = NULL;

	if (fuzz_jwks != NULL)
		return;
	pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (pk == NULL || jwk_from_pkey(pk, &jwk) < 0)
		abort();
	json_object_set_new(jwk, "kid", json_string("fuzz"));
	fuzz_jwks = json_pack("{s:[o]}", "keys", jwk);
	EVP_PKEY_free(pk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s;
	jws_parsed p = { 0 };

	fuzz_jws_init();
	s = malloc(size + 1);
	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	if (jws_parse(s, &p) == 0)
		jws_parsed_clear(&p);
	(void)jws_verify_jwks(s, fuzz_jwks, 1700000000, 0, NULL);
	free(s);
	return 0;
}
