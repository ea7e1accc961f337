/* SPDX-License-Identifier: MIT */
#include "support/softsign.h"
#include "common/err.h"
#include "jose/jws.h"

#include <openssl/rsa.h>
#include <openssl/x509.h>

int softsign_fn(void *evp_pkey, jwa_alg alg, const uint8_t *in, size_t inlen,
			      uint8_t *sig, size_t *siglen)
{
	EVP_PKEY *pk = evp_pkey;
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	uint8_t der[256];
	size_t dlen = sizeof(der);
	int r = P11J_E_CRYPTO;

	if (m == NULL)
		return P11J_E_NOMEM;
	if (!(jwa_algs_for_kind(jwa_keykind_of(pk)) & JWA_BIT(alg))) {
		r = err_set(P11J_E_UNSUPPORTED_ALG, "%s does not fit the key", jwa_name(alg));
		goto out;
	}
	if (EVP_DigestSignInit(m, &pctx, jwa_md(alg), NULL, pk) != 1)
		goto out;
	if (jwa_is_pss(alg) &&
	    (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
	     EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1))
		goto out;
	if (jwa_is_ec(alg)) {
		if (EVP_DigestSign(m, der, &dlen, in, inlen) != 1)
			goto out;
		if (*siglen < jwa_sig_len(alg))
			goto out;
		r = jws_ecdsa_der_to_raw(der, dlen, jwa_sig_len(alg) / 2, sig);
		if (r == 0)
			*siglen = jwa_sig_len(alg);
		goto out;
	}
	if (EVP_DigestSign(m, sig, siglen, in, inlen) != 1)
		goto out;
	r = 0;
out:
	EVP_MD_CTX_free(m);
	return r;
}

int softsign_cert(EVP_PKEY *key, uint8_t **ret_der, int *ret_len)
{
	X509 *x = X509_new();
	X509_NAME *n;

	if (x == NULL)
		return -1;
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	n = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"t", -1, -1, 0);
	X509_set_issuer_name(x, n);
	if (X509_sign(x, key, EVP_sha256()) <= 0) {
		X509_free(x);
		return -1;
	}
	*ret_len = i2d_X509(x, ret_der);
	X509_free(x);
	return *ret_len > 0 ? 0 : -1;
}
