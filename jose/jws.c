/* SPDX-License-Identifier: MIT */
#include "jose/jws.h"
#include "jose/b64url.h"
#include "jose/jwk.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jsonfast.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#define JWS_MAX_LEN (64 * 1024)

int jws_sign_compact_raw(const char *header_json, size_t header_len, const char *claims_json,
			 size_t claims_len, jwa_alg alg, jws_sign_fn sign, void *ctx,
			 size_t sigmax, char **ret_jwt)
{
	size_t hl = b64u_enc_len(header_len), cl = b64u_enc_len(claims_len);
	size_t total, o, siglen = sigmax, fixed = jwa_sig_len(alg);
	uint8_t *sig = NULL;
	char *out = NULL;
	int r;

	if (alg <= JWA_NONE || alg >= JWA__COUNT)
		return err_set(P11J_E_UNSUPPORTED_ALG, "no signing algorithm");
	if (sigmax == 0 || sigmax > 4096)
		return err_set(P11J_E_INTERNAL, "bad signature size bound %zu", sigmax);
	total = hl + 1 + cl + 1 + b64u_enc_len(sigmax) + 1;
	out = malloc(total);
	sig = malloc(sigmax);
	if (out == NULL || sig == NULL) {
		r = err_nomem();
		goto out;
	}
	o = b64u_encode_to((const uint8_t *)header_json, header_len, out);
	out[o++] = '.';
	o += b64u_encode_to((const uint8_t *)claims_json, claims_len, out + o);
	r = sign(ctx, alg, (const uint8_t *)out, o, sig, &siglen);
	if (r < 0)
		goto out;
	if (siglen == 0 || siglen > sigmax || (fixed != 0 && siglen != fixed)) {
		r = err_set(P11J_E_INTERNAL, "signer returned %zu bytes for %s", siglen,
			    jwa_name(alg));
		goto out;
	}
	out[o++] = '.';
	b64u_encode_to(sig, siglen, out + o);
	*ret_jwt = out;
	out = NULL;
	r = 0;
out:
	free(out);
	free(sig);
	return r;
}

int jws_sign_compact(const json_t *header, const json_t *claims, jwa_alg alg, jws_sign_fn sign,
		     void *ctx, size_t sigmax, char **ret_jwt)
{
	char *h = NULL, *c = NULL;
	size_t hl = 0, cl = 0;
	int r;

	if (!json_is_object(header) || !json_is_object(claims))
		return err_set(P11J_E_BAD_REQUEST, "JWS header and claims must be JSON objects");
	if ((r = jsonf_dumps(header, &h, &hl)) == 0 && (r = jsonf_dumps(claims, &c, &cl)) == 0)
		r = jws_sign_compact_raw(h, hl, c, cl, alg, sign, ctx, sigmax, ret_jwt);
	free(h);
	freezero_buf(c, cl);
	return r;
}

void jws_parsed_clear(jws_parsed *p)
{
	if (p == NULL)
		return;
	json_decref(p->header);
	json_decref(p->claims);
	free(p->sig);
	memset(p, 0, sizeof(*p));
}

static int jws_part_json(const char *what, const char *s, size_t len, json_t **ret)
{
	uint8_t *raw = NULL;
	size_t rawlen = 0;
	json_error_t jerr;
	json_t *v;
	int r;

	if (len == 0)
		return err_set(P11J_E_BAD_JWT, "JWT %s is empty", what);
	if (b64u_decode(s, len, &raw, &rawlen) < 0) {
		char why[256];

		/* err_msg() is the buffer err_set() writes: copy it first. */
		snprintf(why, sizeof(why), "%s", err_msg());
		return err_set(P11J_E_BAD_JWT, "JWT %s: %s", what, why);
	}
	v = json_loadb((const char *)raw, rawlen, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	free(raw);
	if (v == NULL)
		return err_set(P11J_E_BAD_JWT, "JWT %s is not valid JSON: %s", what, jerr.text);
	if (!json_is_object(v)) {
		json_decref(v);
		return err_set(P11J_E_BAD_JWT, "JWT %s is not a JSON object", what);
	}
	*ret = v;
	r = 0;
	return r;
}

int jws_parse(const char *jwt, jws_parsed *ret)
{
	jws_parsed p = { 0 };
	const char *d1, *d2;
	size_t len;
	int r;

	if (jwt == NULL)
		return err_set(P11J_E_BAD_JWT, "no JWT");
	len = strnlen(jwt, JWS_MAX_LEN + 1);
	if (len > JWS_MAX_LEN)
		return err_set(P11J_E_REQUEST_TOO_LARGE, "JWT longer than %d bytes", JWS_MAX_LEN);
	d1 = memchr(jwt, '.', len);
	d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - jwt)) : NULL;
	if (d1 == NULL || d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - jwt)))
		return err_set(P11J_E_BAD_JWT,
			       "a compact JWT has exactly three parts separated by '.'");
	if ((r = jws_part_json("header", jwt, (size_t)(d1 - jwt), &p.header)) < 0)
		goto fail;
	if ((r = jws_part_json("payload", d1 + 1, (size_t)(d2 - d1 - 1), &p.claims)) < 0)
		goto fail;
	if ((size_t)(jwt + len - d2 - 1) == 0) {
		r = err_set(P11J_E_BAD_JWT, "JWT signature is empty");
		goto fail;
	}
	if (b64u_decode(d2 + 1, (size_t)(jwt + len - d2 - 1), &p.sig, &p.sig_len) < 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", err_msg());
		r = err_set(P11J_E_BAD_JWT, "JWT signature: %s", why);
		goto fail;
	}
	p.alg = jwa_from_name(json_string_value(json_object_get(p.header, "alg")));
	p.signing_input_len = (size_t)(d2 - jwt);
	*ret = p;
	return 0;
fail:
	jws_parsed_clear(&p);
	return r;
}

int jws_ecdsa_raw_to_der(const uint8_t *raw, size_t rawlen, uint8_t **ret_der, size_t *ret_len)
{
	ECDSA_SIG *es = NULL;
	BIGNUM *r = NULL, *s = NULL;
	unsigned char *der = NULL;
	int dlen, rc;

	if (rawlen == 0 || rawlen % 2 != 0)
		return err_set(P11J_E_BAD_SIGNATURE, "ECDSA signature has odd length %zu", rawlen);
	r = BN_bin2bn(raw, (int)(rawlen / 2), NULL);
	s = BN_bin2bn(raw + rawlen / 2, (int)(rawlen / 2), NULL);
	es = ECDSA_SIG_new();
	if (r == NULL || s == NULL || es == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
		rc = err_nomem();
		goto out;
	}
	r = s = NULL; /* owned by es */
	dlen = i2d_ECDSA_SIG(es, &der);
	if (dlen <= 0) {
		rc = err_set_ossl(P11J_E_CRYPTO, "i2d_ECDSA_SIG");
		goto out;
	}
	*ret_der = der;
	*ret_len = (size_t)dlen;
	rc = 0;
out:
	BN_free(r);
	BN_free(s);
	ECDSA_SIG_free(es);
	return rc;
}

int jws_ecdsa_der_to_raw(const uint8_t *der, size_t derlen, size_t half, uint8_t *raw)
{
	const unsigned char *p = der;
	ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
	const BIGNUM *r, *s;
	int rc = 0;

	if (es == NULL || p != der + derlen) {
		ECDSA_SIG_free(es);
		return err_set(P11J_E_BAD_SIGNATURE, "ECDSA signature is not valid DER");
	}
	ECDSA_SIG_get0(es, &r, &s);
	if (BN_bn2binpad(r, raw, (int)half) < 0 || BN_bn2binpad(s, raw + half, (int)half) < 0)
		rc = err_set(P11J_E_BAD_SIGNATURE, "ECDSA signature value wider than %zu bytes",
			     half);
	ECDSA_SIG_free(es);
	return rc;
}

int jws_verify_sig(jwa_alg alg, EVP_PKEY *pub, const uint8_t *in, size_t inlen,
		   const uint8_t *sig, size_t siglen)
{
	jwa_keykind kind = jwa_keykind_of(pub);
	EVP_MD_CTX *mctx = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	uint8_t *der = NULL;
	size_t derlen = 0;
	int r, v;

	if (alg <= JWA_NONE || alg >= JWA__COUNT)
		return err_set(P11J_E_UNSUPPORTED_ALG, "JWT alg is missing, unknown or 'none'");
	if (!(jwa_algs_for_kind(kind) & JWA_BIT(alg)))
		return err_set(P11J_E_UNSUPPORTED_ALG, "%s does not fit this key", jwa_name(alg));
	if (jwa_is_ec(alg)) {
		if (siglen != jwa_sig_len(alg))
			return err_set(P11J_E_BAD_SIGNATURE,
				       "%s signature must be %zu bytes (raw R||S), got %zu",
				       jwa_name(alg), jwa_sig_len(alg), siglen);
		if ((r = jws_ecdsa_raw_to_der(sig, siglen, &der, &derlen)) < 0)
			return r;
		sig = der;
		siglen = derlen;
	}
	mctx = EVP_MD_CTX_new();
	if (mctx == NULL) {
		r = err_nomem();
		goto out;
	}
	if (EVP_DigestVerifyInit(mctx, &pctx, jwa_md(alg), NULL, pub) != 1) {
		r = err_set_ossl(P11J_E_CRYPTO, "EVP_DigestVerifyInit");
		goto out;
	}
	if (jwa_is_pss(alg) &&
	    (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
	     EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
	     EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, jwa_md(alg)) != 1)) {
		r = err_set_ossl(P11J_E_CRYPTO, "setting RSA-PSS parameters");
		goto out;
	}
	v = EVP_DigestVerify(mctx, sig, siglen, in, inlen);
	ERR_clear_error();
	r = v == 1 ? 0 : err_set(P11J_E_BAD_SIGNATURE, "%s signature does not verify",
				 jwa_name(alg));
out:
	EVP_MD_CTX_free(mctx);
	OPENSSL_free(der);
	return r;
}

static int claim_time(const json_t *claims, const char *name, bool *ret_have, int64_t *ret)
{
	const json_t *v = json_object_get(claims, name);

	*ret_have = false;
	if (v == NULL)
		return 0;
	if (json_is_integer(v))
		*ret = (int64_t)json_integer_value(v);
	else if (json_is_real(v)) {
		double d = json_real_value(v);

		/* Clamp before the cast: an out-of-range conversion is undefined. */
		*ret = d >= 9.2e18 ? INT64_MAX : d <= -9.2e18 ? INT64_MIN : (int64_t)d;
	} else
		return err_set(P11J_E_BAD_JWT, "claim '%s' is not a number", name);
	*ret_have = true;
	return 0;
}

/* Header Parameters that RFC 7515 4.1, RFC 7516 4.1 and RFC 7518 4 define
 * themselves: RFC 7515 4.1.11 says crit must not list them. */
static const char *const jws_registered[] = {
	"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit",
	"enc", "zip", "epk", "apu", "apv", "iv", "tag", "p2s", "p2c",
};

int jws_check_crit(const json_t *header, const char *const *understood)
{
	const json_t *crit = json_object_get(header, "crit"), *v;
	json_t *seen = NULL;
	char show[68];
	size_t i, j;
	int r;

	if (crit == NULL)
		return 0;
	if (!json_is_array(crit))
		return err_set(P11J_E_BAD_JWT, "JWT header \"crit\" is not an array of header "
			       "parameter names (RFC 7515 4.1.11)");
	if (json_array_size(crit) == 0)
		return err_set(P11J_E_BAD_JWT, "JWT header \"crit\" is an empty array, which RFC "
			       "7515 4.1.11 forbids");
	/* A set, not a nested loop: crit may hold thousands of names. */
	seen = json_object();
	if (seen == NULL)
		return err_nomem();
	json_array_foreach(crit, i, v) {
		const char *name = json_string_value(v);

		if (name == NULL) {
			r = err_set(P11J_E_BAD_JWT, "JWT header \"crit\" entry %zu is not a string",
				    i);
			goto out;
		}
		for (j = 0; j < ARRAY_SIZE(jws_registered); j++)
			if (strcmp(name, jws_registered[j]) == 0) {
				r = err_set(P11J_E_BAD_JWT,
					    "JWT header \"crit\" lists \"%s\", which RFC 7515/7518 "
					    "define: crit may name extensions only", name);
				goto out;
			}
		if (json_object_get(seen, name) != NULL) {
			r = err_set(P11J_E_BAD_JWT, "JWT header \"crit\" lists \"%s\" twice",
				    jwk_show(name, show, sizeof(show)));
			goto out;
		}
		if (json_object_set_new(seen, name, json_true()) != 0) {
			r = err_nomem();
			goto out;
		}
		if (json_object_get(header, name) == NULL) {
			r = err_set(P11J_E_BAD_JWT,
				    "JWT header \"crit\" lists \"%s\", which is not in the header",
				    jwk_show(name, show, sizeof(show)));
			goto out;
		}
	}
	/* Well formed: now every name must be an extension the caller implements. */
	json_array_foreach(crit, i, v) {
		const char *name = json_string_value(v);
		const char *const *u;

		for (u = understood; u != NULL && *u != NULL; u++)
			if (strcmp(name, *u) == 0)
				break;
		if (u == NULL || *u == NULL) {
			r = err_set(P11J_E_BAD_JWT,
				    "JWT header \"crit\" requires the extension \"%s\", which this "
				    "verifier does not understand",
				    jwk_show(name, show, sizeof(show)));
			goto out;
		}
	}
	r = 0;
out:
	json_decref(seen);
	return r;
}

int jws_verify_jwks(const char *jwt, const json_t *jwks, int64_t now, int64_t leeway,
		    jws_parsed *ret)
{
	jws_parsed p = { 0 };
	const json_t *jwk = NULL, *v;
	const char *kid, *jalg;
	EVP_PKEY *pub = NULL;
	int64_t t = 0;
	bool have;
	int r;

	if ((r = jws_parse(jwt, &p)) < 0)
		return r;
	if (p.alg == JWA_NONE) {
		r = err_set(P11J_E_UNSUPPORTED_ALG, "JWT alg '%s' is not accepted",
			    json_string_value(json_object_get(p.header, "alg"))
				    ?: "(missing)");
		goto out;
	}
	/* Before any key is looked at: an extension we do not implement may
	 * change what the signature means (RFC 7515 4.1.11). */
	if ((r = jws_check_crit(p.header, NULL)) < 0)
		goto out;
	v = json_object_get(p.header, "kid");
	if (v != NULL && !json_is_string(v)) {
		/* not "no kid": that would pick the JWKS's only key */
		r = err_set(P11J_E_BAD_JWT, "JWT header \"kid\" is not a string");
		goto out;
	}
	kid = json_string_value(v);
	if ((r = jwk_find_verify(jwks, kid, &jwk)) < 0)
		goto out;
	jalg = json_string_value(json_object_get(jwk, "alg"));
	if (jalg != NULL && strcmp(jalg, jwa_name(p.alg)) != 0) {
		r = err_set(P11J_E_UNSUPPORTED_ALG, "JWT alg %s but the JWK is for %s",
			    jwa_name(p.alg), jalg);
		goto out;
	}
	if ((r = jwk_to_pkey(jwk, &pub)) < 0)
		goto out;
	if ((r = jws_verify_sig(p.alg, pub, (const uint8_t *)jwt, p.signing_input_len, p.sig,
				p.sig_len)) < 0)
		goto out;
	if ((r = claim_time(p.claims, "exp", &have, &t)) < 0)
		goto out;
	if (have && now - leeway >= t) {
		int64_t ago;

		/* exp may be any int64: do not let the message overflow */
		if (__builtin_sub_overflow(now, t, &ago))
			ago = INT64_MAX;
		r = err_set(P11J_E_EXPIRED, "JWT expired %lld seconds ago", (long long)ago);
		goto out;
	}
	if ((r = claim_time(p.claims, "nbf", &have, &t)) < 0)
		goto out;
	if (have && now + leeway < t) { /* now, leeway are ours: no overflow */
		r = err_set(P11J_E_NOT_YET_VALID, "JWT not valid for another %lld seconds",
			    (long long)(t - now));
		goto out;
	}
	if (ret != NULL) {
		*ret = p;
		memset(&p, 0, sizeof(p));
	}
	r = 0;
out:
	EVP_PKEY_free(pub);
	jws_parsed_clear(&p);
	return r;
}
