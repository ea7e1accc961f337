/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for JWK and JWKS parsing (the CLI's `verify --jwks FILE` reads
 * it from wherever the user got it). The input is JSON text: a JWKS
 * ({"keys": [...]}) or a single JWK. Every key goes through jwk_to_pkey and
 * jwk_thumbprint; a key that imports must survive jwk_from_pkey and import
 * again as the same key with the same thumbprint (the importer accepts only
 * the one canonical encoding of each member, so the export must give back
 * the same members). The JWKS is then used to verify a few fixed JWTs, so
 * key selection (kid, use, key_ops, alg) runs on fuzzed keys. Built with
 * -fsanitize=fuzzer when the 'fuzzing' option is on; otherwise
 * fuzz_replay.c's main() replays a corpus through it.
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

/* Signed once with the Ed25519 key whose JWK (kid "fuzz") is the corpus file
 * okp-valid-jwks.json, so that corpus reaches a successful verification. */
static const char *const fuzz_jwts[] = {
	/* {"alg":"EdDSA","kid":"fuzz"} */
	"eyJhbGciOiJFZERTQSIsImtpZCI6ImZ1enoifQ.eyJzdWIiOiJmdXp6In0."
	"cV5d4ERmkYtyVe0Hh1tC4UEGV0wwMX-Km8ButG37XDKQb2pNl54cS5zysxtAM8s3pyFSfv8f2b8yO4OfucflAg",
	/* {"alg":"EdDSA"}: no kid, the JWKS must hold exactly one key */
	"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJmdXp6In0."
	"rlGyT30A3GszrXLNM0bKgsfhpHuLrUTBPdT2bfvoR1ULJhNgqmRDcInqShUedtD5I9CssaSyIMDTjs47RKn2BQ",
	/* {"alg":"ES256","kid":"fuzz"} with a signature that never verifies */
	"eyJhbGciOiJFUzI1NiIsImtpZCI6ImZ1enoifQ.e30."
	"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
	/* {"alg":"RS256","kid":"fuzz"} with a one-byte signature */
	"eyJhbGciOiJSUzI1NiIsImtpZCI6ImZ1enoifQ.e30.AA",
};

static void fuzz_one_key(const json_t *jwk)
{
	EVP_PKEY *pk = NULL, *pk2 = NULL;
	json_t *back = NULL;
	char *t1 = NULL, *t2 = NULL;
	int tr;

	tr = jwk_thumbprint(jwk, &t1);
	if (jwk_to_pkey(jwk, &pk) < 0)
		goto out;
	/* An importable key has every member its thumbprint needs. */
	if (tr < 0)
		abort();
	if (jwk_from_pkey(pk, &back) < 0 || jwk_to_pkey(back, &pk2) < 0)
		abort();
	if (EVP_PKEY_eq(pk, pk2) != 1)
		abort();
	if (jwk_thumbprint(back, &t2) < 0 || strcmp(t1, t2) != 0)
		abort();
out:
	free(t1);
	free(t2);
	json_decref(back);
	EVP_PKEY_free(pk);
	EVP_PKEY_free(pk2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *v, *jwks = NULL, *keys;
	const json_t *k, *found;
	json_error_t jerr;
	size_t i;

	v = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (v == NULL)
		return 0;
	keys = json_object_get(v, "keys");
	if (json_is_array(keys)) {
		jwks = json_incref(v);
		json_array_foreach(keys, i, k)
			fuzz_one_key(k);
	} else {
		/* a single JWK, as `p11jwt verify --jwks` also accepts */
		fuzz_one_key(v);
		jwks = json_pack("{s:[O]}", "keys", v);
		if (jwks == NULL)
			goto out;
	}
	keys = json_object_get(jwks, "keys");
	(void)jwk_find(jwks, NULL, &found);
	(void)jwk_find(jwks, "fuzz", &found);
	(void)jwk_find_verify(jwks, NULL, &found);
	(void)jwk_find_verify(jwks, "fuzz", &found);
	json_array_foreach(keys, i, k) {
		const char *kid = json_string_value(json_object_get(k, "kid"));

		if (kid == NULL)
			continue;
		/* both find a key with that kid (jwk_find: the first one) */
		if (jwk_find(jwks, kid, &found) != 0 ||
		    strcmp(json_string_value(json_object_get(found, "kid")), kid) != 0)
			abort();
		if (jwk_find_verify(jwks, kid, &found) == 0 &&
		    strcmp(json_string_value(json_object_get(found, "kid")), kid) != 0)
			abort();
	}
	for (i = 0; i < sizeof(fuzz_jwts) / sizeof(fuzz_jwts[0]); i++)
		(void)jws_verify_jwks(fuzz_jwts[i], jwks, 1700000000, 0, NULL);
out:
	json_decref(jwks);
	json_decref(v);
	return 0;
}
