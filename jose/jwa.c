/* SPDX-License-Identifier: MIT */
#include "jose/jwa.h"

#include <pthread.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>

static const struct {
	jwa_alg alg;
	const char *name;
	int md_bits; /* 0: no digest */
	size_t sig_len;
} jwa_table[] = {
	{ JWA_NONE, "none", 0, 0 },
	{ JWA_RS256, "RS256", 256, 0 },
	{ JWA_RS384, "RS384", 384, 0 },
	{ JWA_RS512, "RS512", 512, 0 },
	{ JWA_PS256, "PS256", 256, 0 },
	{ JWA_PS384, "PS384", 384, 0 },
	{ JWA_PS512, "PS512", 512, 0 },
	{ JWA_ES256, "ES256", 256, 64 },
	{ JWA_ES384, "ES384", 384, 96 },
	{ JWA_ES512, "ES512", 512, 132 },
	{ JWA_EDDSA, "EdDSA", 0, 64 },
};

static int jwa_valid(jwa_alg alg)
{
	return alg > JWA_NONE && alg < JWA__COUNT;
}

const char *jwa_name(jwa_alg alg)
{
	if (!jwa_valid(alg))
		return "none";
	return jwa_table[alg].name;
}

jwa_alg jwa_from_name(const char *name)
{
	if (name == NULL)
		return JWA_NONE;
	for (int a = JWA_NONE + 1; a < JWA__COUNT; a++)
		if (strcmp(jwa_table[a].name, name) == 0)
			return (jwa_alg)a;
	return JWA_NONE;
}

/* The digests, fetched from the default library context once: EVP_sha256()
 * and friends make OpenSSL 3 fetch the implementation again on every
 * EVP_DigestInit (a lock and a property lookup per signature). */
static const EVP_MD *md_fetched[3];
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void md_fetch(void)
{
	static const char *const names[3] = { "SHA256", "SHA384", "SHA512" };

	for (int i = 0; i < 3; i++)
		md_fetched[i] = EVP_MD_fetch(NULL, names[i], NULL);
}

const EVP_MD *jwa_md(jwa_alg alg)
{
	int i;

	if (!jwa_valid(alg))
		return NULL;
	switch (jwa_table[alg].md_bits) {
	case 256:
		i = 0;
		break;
	case 384:
		i = 1;
		break;
	case 512:
		i = 2;
		break;
	default:
		return NULL;
	}
	pthread_once(&md_once, md_fetch);
	if (md_fetched[i] != NULL)
		return md_fetched[i];
	return i == 0 ? EVP_sha256() : i == 1 ? EVP_sha384() : EVP_sha512();
}

bool jwa_is_rsa(jwa_alg alg)
{
	return alg >= JWA_RS256 && alg <= JWA_PS512;
}

bool jwa_is_pss(jwa_alg alg)
{
	return alg >= JWA_PS256 && alg <= JWA_PS512;
}

bool jwa_is_ec(jwa_alg alg)
{
	return alg >= JWA_ES256 && alg <= JWA_ES512;
}

size_t jwa_sig_len(jwa_alg alg)
{
	return jwa_valid(alg) ? jwa_table[alg].sig_len : 0;
}

jwa_keykind jwa_keykind_of(const EVP_PKEY *pk)
{
	char group[64];
	size_t glen = 0;

	if (pk == NULL)
		return KEYKIND_UNKNOWN;
	if (EVP_PKEY_is_a(pk, "RSA"))
		return EVP_PKEY_get_bits(pk) >= 2048 ? KEYKIND_RSA : KEYKIND_UNKNOWN;
	if (EVP_PKEY_is_a(pk, "ED25519"))
		return KEYKIND_ED25519;
	if (!EVP_PKEY_is_a(pk, "EC"))
		return KEYKIND_UNKNOWN;
	if (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
					   &glen) != 1)
		return KEYKIND_UNKNOWN;
	if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
		return KEYKIND_P256;
	if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
		return KEYKIND_P384;
	if (strcmp(group, "secp521r1") == 0 || strcmp(group, "P-521") == 0)
		return KEYKIND_P521;
	return KEYKIND_UNKNOWN;
}

unsigned jwa_algs_for_kind(jwa_keykind kind)
{
	switch (kind) {
	case KEYKIND_RSA:
		return JWA_BIT(JWA_RS256) | JWA_BIT(JWA_RS384) | JWA_BIT(JWA_RS512) |
		       JWA_BIT(JWA_PS256) | JWA_BIT(JWA_PS384) | JWA_BIT(JWA_PS512);
	case KEYKIND_P256:
		return JWA_BIT(JWA_ES256);
	case KEYKIND_P384:
		return JWA_BIT(JWA_ES384);
	case KEYKIND_P521:
		return JWA_BIT(JWA_ES512);
	case KEYKIND_ED25519:
		return JWA_BIT(JWA_EDDSA);
	default:
		return 0;
	}
}

jwa_alg jwa_default_for_kind(jwa_keykind kind)
{
	switch (kind) {
	case KEYKIND_RSA:
		return JWA_RS256;
	case KEYKIND_P256:
		return JWA_ES256;
	case KEYKIND_P384:
		return JWA_ES384;
	case KEYKIND_P521:
		return JWA_ES512;
	case KEYKIND_ED25519:
		return JWA_EDDSA;
	default:
		return JWA_NONE;
	}
}

size_t jwa_max_sig_len(const EVP_PKEY *pk)
{
	switch (jwa_keykind_of(pk)) {
	case KEYKIND_RSA:
		return (size_t)EVP_PKEY_get_size(pk);
	case KEYKIND_P256:
		return 64;
	case KEYKIND_P384:
		return 96;
	case KEYKIND_P521:
		return 132;
	case KEYKIND_ED25519:
		return 64;
	default:
		return 0;
	}
}
