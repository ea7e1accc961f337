/* SPDX-License-Identifier: MIT */
#include "jose/jwk.h"
#include "jose/b64url.h"
#include "jose/jwa.h"
#include "common/err.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

/* A JWK member is never large; bound decoding (RSA 16384-bit n is 2731 chars). */
#define JWK_MEMBER_MAX 4096

static const struct {
	jwa_keykind kind;
	const char *crv;
	const char *group;
	size_t width;
} jwk_curves[] = {
	{ KEYKIND_P256, "P-256", "prime256v1", 32 },
	{ KEYKIND_P384, "P-384", "secp384r1", 48 },
	{ KEYKIND_P521, "P-521", "secp521r1", 66 },
};

static int jwk_set_b64u(json_t *o, const char *name, const uint8_t *buf, size_t len)
{
	char *s = NULL;
	int r;

	r = b64u_encode(buf, len, &s);
	if (r < 0)
		return r;
	if (json_object_set_new(o, name, json_string(s)) != 0) {
		free(s);
		return err_set(P11J_E_NOMEM, "out of memory building JWK");
	}
	free(s);
	return 0;
}

static int jwk_set_bn(json_t *o, const EVP_PKEY *pk, const char *param, const char *name)
{
	BIGNUM *bn = NULL;
	uint8_t *buf = NULL;
	int n, r = P11J_E_CRYPTO;

	if (EVP_PKEY_get_bn_param(pk, param, &bn) != 1)
		return err_set_ossl(P11J_E_CRYPTO, "EVP_PKEY_get_bn_param");
	n = BN_num_bytes(bn);
	buf = malloc(n > 0 ? (size_t)n : 1);
	if (buf == NULL) {
		r = err_nomem();
		goto out;
	}
	/* BN_bn2bin gives minimal big-endian, as RFC 7518 6.3.1 wants. */
	BN_bn2bin(bn, buf);
	r = jwk_set_b64u(o, name, buf, (size_t)n);
out:
	free(buf);
	BN_free(bn);
	return r;
}

int jwk_from_pkey(const EVP_PKEY *pk, json_t **ret_jwk)
{
	json_t *o = NULL;
	jwa_keykind kind;
	uint8_t pt[1 + 2 * 66];
	size_t ptlen = 0;
	int r = P11J_E_INTERNAL;

	kind = jwa_keykind_of(pk);
	if (kind == KEYKIND_UNKNOWN)
		return err_set(P11J_E_UNSUPPORTED_ALG,
			       "key type not supported (need RSA >= 2048, P-256/384/521 or Ed25519)");
	o = json_object();
	if (o == NULL)
		return err_nomem();
	if (kind == KEYKIND_RSA) {
		json_object_set_new(o, "kty", json_string("RSA"));
		r = jwk_set_bn(o, pk, OSSL_PKEY_PARAM_RSA_N, "n");
		if (r == 0)
			r = jwk_set_bn(o, pk, OSSL_PKEY_PARAM_RSA_E, "e");
		if (r < 0)
			goto out;
	} else if (kind == KEYKIND_ED25519) {
		ptlen = 32;
		if (EVP_PKEY_get_raw_public_key(pk, pt, &ptlen) != 1 || ptlen != 32) {
			r = err_set_ossl(P11J_E_CRYPTO, "EVP_PKEY_get_raw_public_key");
			goto out;
		}
		json_object_set_new(o, "kty", json_string("OKP"));
		json_object_set_new(o, "crv", json_string("Ed25519"));
		r = jwk_set_b64u(o, "x", pt, 32);
		if (r < 0)
			goto out;
	} else {
		size_t i, w = 0;
		const char *crv = NULL;

		for (i = 0; i < sizeof(jwk_curves) / sizeof(jwk_curves[0]); i++)
			if (jwk_curves[i].kind == kind) {
				w = jwk_curves[i].width;
				crv = jwk_curves[i].crv;
			}
		/* Ask for the uncompressed form: 04 || X || Y, each fixed width. */
		if (EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt),
						    &ptlen) != 1) {
			r = err_set_ossl(P11J_E_CRYPTO, "EVP_PKEY_get_octet_string_param(pub)");
			goto out;
		}
		if (ptlen != 1 + 2 * w || pt[0] != 0x04) {
			r = err_set(P11J_E_CRYPTO, "EC public key is not an uncompressed point");
			goto out;
		}
		json_object_set_new(o, "kty", json_string("EC"));
		json_object_set_new(o, "crv", json_string(crv));
		r = jwk_set_b64u(o, "x", pt + 1, w);
		if (r == 0)
			r = jwk_set_b64u(o, "y", pt + 1 + w, w);
		if (r < 0)
			goto out;
	}
	*ret_jwk = o;
	o = NULL;
	r = 0;
out:
	json_decref(o);
	return r;
}

/* Decode a base64url string member; want > 0 demands that exact length. */
static int jwk_get_b64u(const json_t *jwk, const char *name, size_t want, uint8_t **ret,
			size_t *ret_len)
{
	const json_t *v = json_object_get(jwk, name);
	uint8_t *buf = NULL;
	size_t len = 0;

	if (v == NULL)
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"%s\" is missing", name);
	if (!json_is_string(v))
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"%s\" is not a string", name);
	if (json_string_length(v) > JWK_MEMBER_MAX)
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"%s\" is too long", name);
	if (b64u_decode(json_string_value(v), json_string_length(v), &buf, &len) < 0) {
		char why[256];

		/* err_msg() is the buffer err_set() writes: copy it first. */
		snprintf(why, sizeof(why), "%s", err_msg());
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"%s\" is not valid base64url: %s",
			       name, why);
	}
	if (len == 0 || (want > 0 && len != want)) {
		free(buf);
		if (want > 0)
			return err_set(P11J_E_BAD_REQUEST,
				       "JWK member \"%s\" must be %zu bytes, got %zu", name, want, len);
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"%s\" is empty", name);
	}
	*ret = buf;
	*ret_len = len;
	return 0;
}

static const char *jwk_str(const json_t *jwk, const char *name)
{
	return json_string_value(json_object_get(jwk, name));
}

static int jwk_fromdata(const char *type, OSSL_PARAM_BLD *bld, EVP_PKEY **ret_pk)
{
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pk = NULL;
	int r = P11J_E_CRYPTO;

	params = OSSL_PARAM_BLD_to_param(bld);
	ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
	if (params == NULL || ctx == NULL) {
		r = err_set_ossl(P11J_E_NOMEM, "OSSL_PARAM_BLD_to_param");
		goto out;
	}
	if (EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1) {
		r = err_set_ossl(P11J_E_BAD_REQUEST, "JWK does not describe a valid public key");
		goto out;
	}
	*ret_pk = pk;
	r = 0;
out:
	OSSL_PARAM_free(params);
	EVP_PKEY_CTX_free(ctx);
	return r;
}

int jwk_pkey_rsa(const uint8_t *n, size_t nlen, const uint8_t *e, size_t elen, EVP_PKEY **ret)
{
	BIGNUM *bn = NULL, *be = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	int r;

	if (nlen == 0 || elen == 0 || nlen > 2048 || elen > 2048)
		return err_set(P11J_E_BAD_REQUEST, "RSA modulus or exponent has a bad length");
	bn = BN_bin2bn(n, (int)nlen, NULL);
	be = BN_bin2bn(e, (int)elen, NULL);
	bld = OSSL_PARAM_BLD_new();
	if (bn == NULL || be == NULL || bld == NULL ||
	    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) != 1 ||
	    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) != 1) {
		r = err_set_ossl(P11J_E_NOMEM, "building RSA parameters");
		goto out;
	}
	r = jwk_fromdata("RSA", bld, ret);
out:
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn);
	BN_free(be);
	return r;
}

int jwk_pkey_ec(const char *crv, const uint8_t *pt, size_t ptlen, EVP_PKEY **ret)
{
	const char *group = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	size_t w = 0;
	int r;

	for (size_t i = 0; i < sizeof(jwk_curves) / sizeof(jwk_curves[0]); i++)
		if (strcmp(jwk_curves[i].crv, crv) == 0) {
			w = jwk_curves[i].width;
			group = jwk_curves[i].group;
		}
	if (group == NULL)
		return err_set(P11J_E_BAD_REQUEST, "curve '%s' is not supported", crv);
	if (ptlen != 1 + 2 * w || pt[0] != 0x04)
		return err_set(P11J_E_BAD_REQUEST, "%s point must be uncompressed, %zu bytes", crv,
			       1 + 2 * w);
	bld = OSSL_PARAM_BLD_new();
	if (bld == NULL ||
	    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
	    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, ptlen) != 1) {
		r = err_set_ossl(P11J_E_NOMEM, "building EC parameters");
		goto out;
	}
	r = jwk_fromdata("EC", bld, ret);
out:
	OSSL_PARAM_BLD_free(bld);
	return r;
}

static int jwk_rsa_to_pkey(const json_t *jwk, EVP_PKEY **ret_pk)
{
	uint8_t *n = NULL, *e = NULL;
	size_t nlen = 0, elen = 0;
	EVP_PKEY *pk = NULL;
	int r;

	r = jwk_get_b64u(jwk, "n", 0, &n, &nlen);
	if (r == 0)
		r = jwk_get_b64u(jwk, "e", 0, &e, &elen);
	if (r < 0)
		goto out;
	if (n[0] == 0 || e[0] == 0) {
		r = err_set(P11J_E_BAD_REQUEST, "JWK member \"%s\" has a leading zero byte",
			    n[0] == 0 ? "n" : "e");
		goto out;
	}
	r = jwk_pkey_rsa(n, nlen, e, elen, &pk);
	if (r < 0)
		goto out;
	if (jwa_keykind_of(pk) != KEYKIND_RSA) {
		r = err_set(P11J_E_BAD_REQUEST, "JWK RSA key is shorter than 2048 bits");
		goto out;
	}
	*ret_pk = pk;
	pk = NULL;
out:
	EVP_PKEY_free(pk);
	free(n);
	free(e);
	return r;
}

static int jwk_ec_to_pkey(const json_t *jwk, EVP_PKEY **ret_pk)
{
	const char *crv = jwk_str(jwk, "crv");
	uint8_t *x = NULL, *y = NULL, pt[1 + 2 * 66];
	size_t xlen = 0, ylen = 0, i, w = 0;
	const char *group = NULL;
	int r;

	if (crv == NULL)
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"crv\" is missing or not a string");
	for (i = 0; i < sizeof(jwk_curves) / sizeof(jwk_curves[0]); i++)
		if (strcmp(jwk_curves[i].crv, crv) == 0) {
			w = jwk_curves[i].width;
			group = jwk_curves[i].group;
		}
	if (group == NULL)
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"crv\" names an unsupported curve");
	r = jwk_get_b64u(jwk, "x", w, &x, &xlen);
	if (r == 0)
		r = jwk_get_b64u(jwk, "y", w, &y, &ylen);
	if (r < 0)
		goto out;
	pt[0] = 0x04;
	memcpy(pt + 1, x, w);
	memcpy(pt + 1 + w, y, w);
	r = jwk_pkey_ec(crv, pt, 1 + 2 * w, ret_pk);
out:
	free(x);
	free(y);
	return r;
}

static int jwk_okp_to_pkey(const json_t *jwk, EVP_PKEY **ret_pk)
{
	const char *crv = jwk_str(jwk, "crv");
	uint8_t *x = NULL;
	size_t xlen = 0;
	EVP_PKEY *pk;
	int r;

	if (crv == NULL)
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"crv\" is missing or not a string");
	if (strcmp(crv, "Ed25519") != 0)
		return err_set(P11J_E_BAD_REQUEST,
			       "JWK member \"crv\" must be \"Ed25519\" for kty OKP");
	r = jwk_get_b64u(jwk, "x", 32, &x, &xlen);
	if (r < 0)
		return r;
	pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xlen);
	free(x);
	if (pk == NULL)
		return err_set_ossl(P11J_E_BAD_REQUEST, "JWK Ed25519 key is invalid");
	*ret_pk = pk;
	return 0;
}

int jwk_to_pkey(const json_t *jwk, EVP_PKEY **ret_pk)
{
	const char *kty;

	if (!json_is_object(jwk))
		return err_set(P11J_E_BAD_REQUEST, "JWK is not a JSON object");
	kty = jwk_str(jwk, "kty");
	if (kty == NULL)
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"kty\" is missing or not a string");
	if (strcmp(kty, "RSA") == 0)
		return jwk_rsa_to_pkey(jwk, ret_pk);
	if (strcmp(kty, "EC") == 0)
		return jwk_ec_to_pkey(jwk, ret_pk);
	if (strcmp(kty, "OKP") == 0)
		return jwk_okp_to_pkey(jwk, ret_pk);
	return err_set(P11J_E_BAD_REQUEST, "JWK member \"kty\" has unsupported value \"%s\"", kty);
}

static int jwk_digest_b64u(const EVP_MD *md, const void *in, size_t len, char **ret)
{
	uint8_t h[EVP_MAX_MD_SIZE];
	unsigned int hlen = 0;

	if (EVP_Digest(in, len, h, &hlen, md, NULL) != 1)
		return err_set_ossl(P11J_E_CRYPTO, "EVP_Digest");
	return b64u_encode(h, hlen, ret);
}

int jwk_thumbprint(const json_t *jwk, char **ret_b64u)
{
	/* Required members per kty, already in lexicographic order (RFC 7638 3.2). */
	static const char *const rsa[] = { "e", "kty", "n", NULL };
	static const char *const ec[] = { "crv", "kty", "x", "y", NULL };
	static const char *const okp[] = { "crv", "kty", "x", NULL };
	const char *const *members;
	const char *kty;
	json_t *canon = NULL;
	char *s = NULL;
	int r = P11J_E_NOMEM;

	if (!json_is_object(jwk))
		return err_set(P11J_E_BAD_REQUEST, "JWK is not a JSON object");
	kty = jwk_str(jwk, "kty");
	if (kty == NULL)
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"kty\" is missing or not a string");
	if (strcmp(kty, "RSA") == 0)
		members = rsa;
	else if (strcmp(kty, "EC") == 0)
		members = ec;
	else if (strcmp(kty, "OKP") == 0)
		members = okp;
	else
		return err_set(P11J_E_BAD_REQUEST, "JWK member \"kty\" has unsupported value \"%s\"",
			       kty);
	canon = json_object();
	if (canon == NULL)
		return err_nomem();
	for (; *members != NULL; members++) {
		json_t *v = json_object_get(jwk, *members);

		if (!json_is_string(v)) {
			r = err_set(P11J_E_BAD_REQUEST,
				    "JWK member \"%s\" is missing or not a string", *members);
			goto out;
		}
		if (json_object_set(canon, *members, v) != 0) {
			r = err_nomem();
			goto out;
		}
	}
	/* Member values are base64url or short names, so Jansson's escaping
	 * cannot differ from the RFC 7638 form; JSON_SORT_KEYS gives the order. */
	s = json_dumps(canon, JSON_COMPACT | JSON_SORT_KEYS);
	if (s == NULL) {
		r = err_nomem();
		goto out;
	}
	r = jwk_digest_b64u(EVP_sha256(), s, strlen(s), ret_b64u);
out:
	free(s);
	json_decref(canon);
	return r;
}

int jwk_x5t(const uint8_t *der, size_t len, char **ret)
{
	return jwk_digest_b64u(EVP_sha1(), der, len, ret);
}

int jwk_x5t_s256(const uint8_t *der, size_t len, char **ret)
{
	return jwk_digest_b64u(EVP_sha256(), der, len, ret);
}

int jwk_x5c_entry(const uint8_t *der, size_t len, char **ret)
{
	return b64_std_encode(der, len, ret);
}

const char *jwk_show(const char *s, char *buf, size_t size)
{
	size_t i, n = strlen(s), max = size - 4;

	for (i = 0; i < n && i < max; i++)
		buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	if (i < n)
		memcpy(buf + i, "...", 4);
	else
		buf[i] = '\0';
	return buf;
}

/* 0 when jwk may verify signatures; P11J_E_NOT_FOUND when its "use" or
 * "key_ops" keep it for something else; P11J_E_BAD_REQUEST when they are
 * malformed (RFC 7517 4.2, 4.3). who names the key in messages. */
static int jwk_may_verify(const json_t *jwk, const char *who)
{
	const json_t *use = json_object_get(jwk, "use"), *ops = json_object_get(jwk, "key_ops");
	const json_t *v;
	json_t *seen = NULL;
	bool verify = false;
	char show[68];
	size_t i;
	int r;

	if (use != NULL && !json_is_string(use))
		return err_set(P11J_E_BAD_REQUEST, "%s has a \"use\" that is not a string", who);
	if (use != NULL && strcmp(json_string_value(use), "sig") != 0)
		return err_set(P11J_E_NOT_FOUND,
			       "%s is not for signatures: its \"use\" is \"%s\", not \"sig\"", who,
			       jwk_show(json_string_value(use), show, sizeof(show)));
	if (ops == NULL)
		return 0;
	if (!json_is_array(ops))
		return err_set(P11J_E_BAD_REQUEST, "%s has a \"key_ops\" that is not an array",
			       who);
	/* A set, not a nested loop: the array may be long. */
	seen = json_object();
	if (seen == NULL)
		return err_nomem();
	json_array_foreach(ops, i, v) {
		const char *op = json_string_value(v);

		if (op == NULL) {
			r = err_set(P11J_E_BAD_REQUEST, "%s: \"key_ops\" entry %zu is not a string",
				    who, i);
			goto out;
		}
		if (json_object_get(seen, op) != NULL) {
			r = err_set(P11J_E_BAD_REQUEST, "%s: \"key_ops\" lists \"%s\" twice", who,
				    jwk_show(op, show, sizeof(show)));
			goto out;
		}
		if (json_object_set_new(seen, op, json_true()) != 0) {
			r = err_nomem();
			goto out;
		}
		if (strcmp(op, "verify") == 0)
			verify = true;
	}
	r = verify ? 0 : err_set(P11J_E_NOT_FOUND,
				 "%s may not verify signatures: its \"key_ops\" lacks \"verify\"",
				 who);
out:
	json_decref(seen);
	return r;
}

int jwk_find_verify(const json_t *jwks, const char *kid, const json_t **ret_jwk)
{
	const json_t *keys, *k = NULL;
	char who[128], show[68], why[512] = "";
	const char *kk;
	size_t i;
	int r;

	if (kid == NULL) {
		if ((r = jwk_find(jwks, NULL, &k)) < 0)
			return r;
		kk = jwk_str(k, "kid");
		if (kk != NULL)
			snprintf(who, sizeof(who), "the JWKS's only key (kid \"%s\")",
				 jwk_show(kk, show, sizeof(show)));
		else
			snprintf(who, sizeof(who), "the JWKS's only key");
		if ((r = jwk_may_verify(k, who)) < 0)
			return r;
		*ret_jwk = k;
		return 0;
	}
	keys = json_object_get(jwks, "keys");
	if (!json_is_array(keys))
		return err_set(P11J_E_BAD_REQUEST, "JWKS has no \"keys\" array");
	snprintf(who, sizeof(who), "the JWKS key with kid \"%s\"",
		 jwk_show(kid, show, sizeof(show)));
	json_array_foreach(keys, i, k) {
		kk = jwk_str(k, "kid");
		if (kk == NULL || strcmp(kk, kid) != 0)
			continue;
		r = jwk_may_verify(k, who);
		if (r == 0) {
			*ret_jwk = k;
			return 0;
		}
		if (r != P11J_E_NOT_FOUND)
			return r;
		/* keep the first refusal; a later key with this kid may be for signing */
		if (why[0] == '\0')
			snprintf(why, sizeof(why), "%s", err_msg());
	}
	if (why[0] != '\0')
		return err_set(P11J_E_NOT_FOUND, "%s", why);
	return err_set(P11J_E_NOT_FOUND, "no key with kid \"%s\" in the JWKS", show);
}

int jwk_find(const json_t *jwks, const char *kid, const json_t **ret_jwk)
{
	const json_t *keys, *k;
	char show[68];
	size_t i;

	keys = json_object_get(jwks, "keys");
	if (!json_is_array(keys))
		return err_set(P11J_E_BAD_REQUEST, "JWKS has no \"keys\" array");
	if (kid == NULL) {
		if (json_array_size(keys) != 1)
			return err_set(P11J_E_NOT_FOUND,
				       "JWT has no kid and the JWKS holds %zu keys, not exactly one",
				       json_array_size(keys));
		k = json_array_get(keys, 0);
		if (!json_is_object(k))
			return err_set(P11J_E_BAD_REQUEST, "JWKS key 0 is not a JSON object");
		*ret_jwk = k;
		return 0;
	}
	json_array_foreach(keys, i, k) {
		const char *kk = jwk_str(k, "kid");

		if (kk != NULL && strcmp(kk, kid) == 0) {
			*ret_jwk = k;
			return 0;
		}
	}
	return err_set(P11J_E_NOT_FOUND, "no key with kid \"%s\" in the JWKS",
		       jwk_show(kid, show, sizeof(show)));
}
