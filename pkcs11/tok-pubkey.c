/* SPDX-License-Identifier: MIT */
/* Public keys from their PKCS#11 attributes (RSA, P-256/384/521, Ed25519)
 * and from certificates; never a private component. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"
#include "jose/jwk.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11-kit/pkcs11.h>

static int pub_rsa(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, EVP_PKEY **ret)
{
	uint8_t *mod = NULL, *exp = NULL;
	size_t mod_len = 0, exp_len = 0;
	int r;

	r = tok_attr_get(ctx, s, o, CKA_MODULUS, TOK_SIG_MAX, &mod, &mod_len);
	if (r == 0)
		r = tok_attr_get(ctx, s, o, CKA_PUBLIC_EXPONENT, 16, &exp, &exp_len);
	if (r < 0)
		goto out;
	if (mod == NULL || exp == NULL) {
		r = P11J_E_NOT_FOUND;
		goto out;
	}
	r = jwk_pkey_rsa(mod, mod_len, exp, exp_len, ret);
out:
	free(mod);
	free(exp);
	return r;
}

/* CKA_EC_POINT: DER OCTET STRING around the point (the standard) or the
 * bare point (some modules, and SoftHSM for imported Ed25519 keys). */
static const uint8_t *point_unwrap(const uint8_t *p, size_t len, size_t want)
{
	size_t hl, cl;

	if (len == want)
		return p;
	if (len < 2 || p[0] != 0x04)
		return NULL;
	if (p[1] < 0x80) {
		hl = 2;
		cl = p[1];
	} else if (p[1] == 0x81 && len >= 3) {
		hl = 3;
		cl = p[2];
	} else {
		return NULL;
	}
	if (hl + cl != len || cl != want)
		return NULL;
	return p + hl;
}

const uint8_t tok_oid_p256[10] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
const uint8_t tok_oid_p384[7] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
const uint8_t tok_oid_p521[7] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23};
static const uint8_t oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
const uint8_t tok_str_ed25519[14] = {0x13, 0x0c, 'e', 'd', 'w', 'a', 'r',
                                     'd',  's',  '2', '5', '5', '1', '9'};

#define BYTES_EQ(p, n, lit) ((n) == sizeof(lit) && memcmp((p), (lit), sizeof(lit)) == 0)

static int pub_ec(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, bool edwards,
                  const char *name, EVP_PKEY **ret)
{
	uint8_t *par = NULL, *pt = NULL;
	size_t par_len = 0, pt_len = 0, field = 0;
	const char *group = NULL;
	const uint8_t *q;
	int r;

	r = tok_attr_get(ctx, s, o, CKA_EC_PARAMS, 64, &par, &par_len);
	if (r == 0)
		r = tok_attr_get(ctx, s, o, CKA_EC_POINT, 256, &pt, &pt_len);
	if (r < 0)
		goto out;
	if (par == NULL || pt == NULL) {
		r = P11J_E_NOT_FOUND;
		goto out;
	}
	if (edwards) {
		if (!BYTES_EQ(par, par_len, oid_ed25519) &&
		    !BYTES_EQ(par, par_len, tok_str_ed25519)) {
			r = err_set(P11J_E_UNSUPPORTED_ALG,
			            "key '%s' is an Edwards curve other than "
			            "Ed25519",
			            name);
			goto out;
		}
		q = point_unwrap(pt, pt_len, 32);
		if (q == NULL) {
			r = err_set(P11J_E_PKCS11, "key '%s' has a malformed CKA_EC_POINT", name);
			goto out;
		}
		*ret = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, q, 32);
		if (*ret == NULL)
			r = err_set_ossl(P11J_E_CRYPTO, "Ed25519 public key");
		goto out;
	}
	if (BYTES_EQ(par, par_len, tok_oid_p256)) {
		group = "P-256";
		field = 32;
	} else if (BYTES_EQ(par, par_len, tok_oid_p384)) {
		group = "P-384";
		field = 48;
	} else if (BYTES_EQ(par, par_len, tok_oid_p521)) {
		group = "P-521";
		field = 66;
	} else {
		r = err_set(P11J_E_UNSUPPORTED_ALG,
		            "key '%s' is on a curve other than P-256, "
		            "P-384, P-521",
		            name);
		goto out;
	}
	q = point_unwrap(pt, pt_len, 1 + 2 * field);
	if (q == NULL || q[0] != 0x04) {
		r = err_set(P11J_E_PKCS11, "key '%s' has a malformed or compressed CKA_EC_POINT",
		            name);
		goto out;
	}
	r = jwk_pkey_ec(group, q, 1 + 2 * field, ret);
out:
	free(par);
	free(pt);
	return r;
}

int tok_pub_from_object(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_KEY_TYPE kt,
                        const char *name, EVP_PKEY **ret)
{
	switch (kt) {
	case CKK_RSA:
		return pub_rsa(ctx, s, o, ret);
	case CKK_EC:
		return pub_ec(ctx, s, o, false, name, ret);
	case CKK_EC_EDWARDS:
		return pub_ec(ctx, s, o, true, name, ret);
	default:
		return err_set(P11J_E_UNSUPPORTED_ALG,
		               "key '%s' has unsupported CKA_KEY_TYPE 0x%lx", name,
		               (unsigned long)kt);
	}
}

int tok_cert_read(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, uint8_t **ret_der,
                  size_t *ret_len, EVP_PKEY **ret_pub)
{
	uint8_t *der = NULL;
	size_t len = 0;
	const unsigned char *p;
	X509 *x = NULL;
	EVP_PKEY *pk;
	int r;

	r = tok_attr_get(ctx, s, o, CKA_VALUE, TOK_CERT_MAX, &der, &len);
	if (r < 0)
		return r;
	if (der == NULL)
		return P11J_E_NOT_FOUND;
	p = der;
	x = d2i_X509(NULL, &p, (long)len);
	if (x == NULL || p != der + len || (pk = X509_get0_pubkey(x)) == NULL) {
		r = err_set_ossl(P11J_E_CRYPTO, "parsing a certificate on the token");
		goto out;
	}
	EVP_PKEY_up_ref(pk);
	*ret_pub = pk;
	*ret_der = der;
	*ret_len = len;
	der = NULL;
out:
	X509_free(x);
	free(der);
	return r;
}
