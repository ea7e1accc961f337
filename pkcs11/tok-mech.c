/* SPDX-License-Identifier: MIT */
/* JWS algorithm -> PKCS#11 mechanism: the one table, which of its rows the
 * token can sign, and the mechanism and bytes for one signature. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "pkcs11/tok-test.h"
#include "common/err.h"
#include "common/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include <p11-kit/pkcs11.h>

#define TOK_CKM_NONE ((CK_MECHANISM_TYPE)-1)

/* DER DigestInfo prefixes (RFC 8017, 9.2 note 1) for the CKM_RSA_PKCS
 * fallback. */
static const uint8_t di_sha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
static const uint8_t di_sha384[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
static const uint8_t di_sha512[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};
_Static_assert(sizeof(di_sha256) == TOK_DI_LEN && sizeof(di_sha384) == TOK_DI_LEN &&
                   sizeof(di_sha512) == TOK_DI_LEN,
               "DigestInfo prefix length");

/* How each JWS algorithm is signed on a token: the one table. mech is the
 * mechanism that hashes and signs on the token; raw signs a digest hashed
 * here (after the DigestInfo prefix when there is one). mech is used when
 * the token lists it, else raw. */
typedef struct {
	jwa_alg alg;
	CK_MECHANISM_TYPE mech;     /* TOK_CKM_NONE: we always hash */
	CK_MECHANISM_TYPE raw;      /* TOK_CKM_NONE: the token always hashes */
	const char *raw_what;       /* the error's words when hashing here fails */
	const EVP_MD *(*md)(void);  /* the hash (NULL: EdDSA) */
	CK_MECHANISM_TYPE pss_hash; /* PSS: CK_RSA_PKCS_PSS_PARAMS hashAlg */
	CK_RSA_PKCS_MGF_TYPE pss_mgf;
	CK_ULONG pss_slen;          /* salt length: the hash's */
	const uint8_t *digest_info; /* raw RSA: DER prefix before the digest */
} tok_mech;

/* clang-format off */
static const tok_mech mech_table[] = {
	{JWA_RS256, CKM_SHA256_RSA_PKCS, CKM_RSA_PKCS, "hashing for RSA", EVP_sha256, 0, 0, 0, di_sha256},
	{JWA_RS384, CKM_SHA384_RSA_PKCS, CKM_RSA_PKCS, "hashing for RSA", EVP_sha384, 0, 0, 0, di_sha384},
	{JWA_RS512, CKM_SHA512_RSA_PKCS, CKM_RSA_PKCS, "hashing for RSA", EVP_sha512, 0, 0, 0, di_sha512},
	/* NSS softoken and p11-kit-client 0.24 list only CKM_RSA_PKCS_PSS:
	 * hash here, the token pads (same PSS parameters) and signs. */
	{JWA_PS256, CKM_SHA256_RSA_PKCS_PSS, CKM_RSA_PKCS_PSS, "hashing for RSA-PSS", EVP_sha256,
	 CKM_SHA256, CKG_MGF1_SHA256, 32, NULL},
	{JWA_PS384, CKM_SHA384_RSA_PKCS_PSS, CKM_RSA_PKCS_PSS, "hashing for RSA-PSS", EVP_sha384,
	 CKM_SHA384, CKG_MGF1_SHA384, 48, NULL},
	{JWA_PS512, CKM_SHA512_RSA_PKCS_PSS, CKM_RSA_PKCS_PSS, "hashing for RSA-PSS", EVP_sha512,
	 CKM_SHA512, CKG_MGF1_SHA512, 64, NULL},
	/* No CKM_ECDSA_SHA* on SoftHSM: hash here, sign the digest. */
	{JWA_ES256, TOK_CKM_NONE, CKM_ECDSA, "hashing for ECDSA", EVP_sha256, 0, 0, 0, NULL},
	{JWA_ES384, TOK_CKM_NONE, CKM_ECDSA, "hashing for ECDSA", EVP_sha384, 0, 0, 0, NULL},
	{JWA_ES512, TOK_CKM_NONE, CKM_ECDSA, "hashing for ECDSA", EVP_sha512, 0, 0, 0, NULL},
	{JWA_EDDSA, CKM_EDDSA, TOK_CKM_NONE, NULL, NULL, 0, 0, 0, NULL},
};
/* clang-format on */

/* The hashes, fetched once: EVP_sha256() and the like make EVP_Digest()
 * look the implementation up in the provider store on every call (~0.17 µs
 * of a 0.39 µs SHA-256 of a usual signing input here). A fetched EVP_MD is
 * immutable and shared by all threads; it lives as long as the process. */
static const EVP_MD *md_fetched[ARRAY_SIZE(mech_table)];
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void md_fetch_all(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(mech_table); i++)
		if (mech_table[i].md != NULL)
			md_fetched[i] =
			    EVP_MD_fetch(NULL, EVP_MD_get0_name(mech_table[i].md()), NULL);
}

static const EVP_MD *mech_md(const tok_mech *m)
{
	const EVP_MD *md;

	pthread_once(&md_once, md_fetch_all);
	md = md_fetched[m - mech_table];
	return md != NULL ? md : m->md(); /* not fetched: the implicit way */
}

static const tok_mech *mech_find(jwa_alg alg)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(mech_table); i++)
		if (mech_table[i].alg == alg)
			return &mech_table[i];
	return NULL;
}

/* Which rows the token can sign, from C_GetMechanismList, read once. */
int tok_mech_read(tok_ctx *ctx)
{
	CK_MECHANISM_TYPE *mt = NULL;
	CK_ULONG n = 0, i;
	size_t j;
	CK_RV rv;
	int r = 0;

	rv = ctx->f->C_GetMechanismList(ctx->slot, NULL, &n);
	if (rv != CKR_OK)
		return tok_ck(ctx, "C_GetMechanismList", rv);
	mt = calloc(n + 1, sizeof(*mt));
	if (mt == NULL)
		return err_nomem();
	rv = ctx->f->C_GetMechanismList(ctx->slot, mt, &n);
	if (rv != CKR_OK) {
		r = tok_ck(ctx, "C_GetMechanismList", rv);
		goto out;
	}
	for (i = 0; i < n; i++)
		for (j = 0; j < ARRAY_SIZE(mech_table); j++) {
			if (mt[i] == mech_table[j].mech)
				ctx->algs_mech |= JWA_BIT(mech_table[j].alg);
			if (mt[i] == mech_table[j].raw)
				ctx->algs_raw |= JWA_BIT(mech_table[j].alg);
		}
out:
	free(mt);
	return r;
}

/* Mask of the algs of a key kind this token has a mechanism for. */
unsigned tok_mech_algs(const tok_ctx *ctx, jwa_keykind kind)
{
	return jwa_algs_for_kind(kind) & (ctx->algs_mech | ctx->algs_raw);
}

/* The row's mech when the row has no raw one, or when the token lists it
 * (and tests do not force raw); else the raw mechanism on a digest hashed
 * here. The caller wipes ret->buf. */
int tok_mech_input(const tok_ctx *ctx, jwa_alg alg, const uint8_t *in, size_t inlen,
                   tok_sign_input *ret)
{
	const tok_mech *m = mech_find(alg);
	size_t pre = 0;
	unsigned int mdlen = 0;

	if (m == NULL)
		return err_set(P11J_E_UNSUPPORTED_ALG, "unknown JWS algorithm");
	memset(ret, 0, sizeof(*ret));
	ret->data = in;
	ret->len = (CK_ULONG)inlen;
	/* PSS: the same parameters whether the token hashes or we do (for
	 * CKM_RSA_PKCS_PSS hashAlg names the hash of the digest given). */
	if (m->pss_hash != 0) {
		ret->pss.hashAlg = m->pss_hash;
		ret->pss.mgf = m->pss_mgf;
		ret->pss.sLen = m->pss_slen;
		ret->mech.pParameter = &ret->pss;
		ret->mech.ulParameterLen = sizeof(ret->pss);
	}
	if (m->raw == TOK_CKM_NONE || ((ctx->algs_mech & JWA_BIT(alg)) && !ctx->force_raw)) {
		ret->mech.mechanism = m->mech;
		return 0;
	}
	/* The token only does the signature operation: the DigestInfo (RSA)
	 * and the digest are made here. */
	if (m->digest_info != NULL) {
		pre = TOK_DI_LEN;
		memcpy(ret->buf, m->digest_info, pre);
	}
	if (!EVP_Digest(in, inlen, ret->buf + pre, &mdlen, mech_md(m), NULL))
		return err_set_ossl(P11J_E_CRYPTO, m->raw_what);
	ret->mech.mechanism = m->raw;
	ret->data = ret->buf;
	ret->len = (CK_ULONG)(pre + mdlen);
	return 0;
}

const char *tok_mech_wanted(jwa_alg alg)
{
	switch (alg) {
	case JWA_RS256:
		return "CKM_SHA256_RSA_PKCS or CKM_RSA_PKCS";
	case JWA_RS384:
		return "CKM_SHA384_RSA_PKCS or CKM_RSA_PKCS";
	case JWA_RS512:
		return "CKM_SHA512_RSA_PKCS or CKM_RSA_PKCS";
	case JWA_PS256:
		return "CKM_SHA256_RSA_PKCS_PSS or CKM_RSA_PKCS_PSS";
	case JWA_PS384:
		return "CKM_SHA384_RSA_PKCS_PSS or CKM_RSA_PKCS_PSS";
	case JWA_PS512:
		return "CKM_SHA512_RSA_PKCS_PSS or CKM_RSA_PKCS_PSS";
	case JWA_ES256:
	case JWA_ES384:
	case JWA_ES512:
		return "CKM_ECDSA";
	case JWA_EDDSA:
		return "CKM_EDDSA";
	default:
		return "a mechanism";
	}
}

void tok_test_force_raw_rsa(tok_ctx *ctx, bool on)
{
	ctx->force_raw = on;
}
