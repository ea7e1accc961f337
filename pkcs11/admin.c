/* SPDX-License-Identifier: MIT */
/*
 * Key lifecycle on the token (see admin.h). Sessions here are our own
 * read-write sessions on the token adm_open() logged in to; they are
 * closed before returning, which does not log out: the token layer keeps
 * its login session open. Requests and certificates are signed with
 * tok_sign(), the same C_Sign path the agent uses, so no private key
 * material is ever read.
 */
#include "pkcs11/admin.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jws.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>

/* Older pkcs11.h copies predate PKCS#11 3.0's EdDSA; 0.24's has them. */
#ifndef CKK_EC_EDWARDS
#define CKK_EC_EDWARDS 0x40UL
#endif
#ifndef CKM_EC_EDWARDS_KEY_PAIR_GEN
#define CKM_EC_EDWARDS_KEY_PAIR_GEN 0x1055UL
#endif

#define ADM_SIG_MAX 1024  /* RSA 8192 */
#define ADM_RANDOM_ID_LEN 8
#define ADM_SUBJECT_MAX 4096
#define ADM_LABEL_MAX 128

/* DER of the curve OIDs for CKA_EC_PARAMS, and for Ed25519 the
 * PrintableString "edwards25519" that SoftHSM 2.6.1 and OpenSC use when
 * they generate the key (softhsm-conf/mktoken's ed25519 key has it). */
static const struct {
	adm_keytype type;
	const char *name;
	CK_ULONG bits;      /* RSA */
	const uint8_t *par; /* CKA_EC_PARAMS (EC, Ed25519), from the token layer */
	size_t par_len;
} kt_table[] = {
    {ADM_KT_RSA2048, "rsa:2048", 2048, NULL, 0},
    {ADM_KT_RSA3072, "rsa:3072", 3072, NULL, 0},
    {ADM_KT_RSA4096, "rsa:4096", 4096, NULL, 0},
    {ADM_KT_P256, "ec:P-256", 0, tok_oid_p256, sizeof(tok_oid_p256)},
    {ADM_KT_P384, "ec:P-384", 0, tok_oid_p384, sizeof(tok_oid_p384)},
    {ADM_KT_P521, "ec:P-521", 0, tok_oid_p521, sizeof(tok_oid_p521)},
    {ADM_KT_ED25519, "ed25519", 0, tok_str_ed25519, sizeof(tok_str_ed25519)},
};

/* ---- small helpers --------------------------------------------------- */

static int adm_ck(tok_ctx *ctx, const char *fn, CK_RV rv)
{
	int code = tok_ckr_to_err(rv);

	if (code == 0)
		return 0;
	return err_set(code, "%s on token '%s' failed: %s", fn, tok_label(ctx), tok_ckr_name(rv));
}

static int session_open(tok_ctx *ctx, bool rw, CK_FUNCTION_LIST **ret_f, CK_SESSION_HANDLE *ret_s)
{
	CK_SLOT_ID slot = 0;
	CK_FUNCTION_LIST *f = tok_module(ctx, &slot);
	CK_FLAGS flags = CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0);
	CK_RV rv;

	rv = f->C_OpenSession(slot, flags, NULL, NULL, ret_s);
	if (rv != CKR_OK)
		return adm_ck(ctx, "C_OpenSession", rv);
	*ret_f = f;
	return 0;
}

/* Whether any object matches tmpl; *ret_h gets the first one. */
static int object_find(tok_ctx *ctx, CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl,
                       CK_ULONG n, CK_OBJECT_HANDLE *ret_h, bool *ret_found)
{
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	CK_ULONG got = 0;
	CK_RV rv;

	rv = f->C_FindObjectsInit(s, tmpl, n);
	if (rv != CKR_OK)
		return adm_ck(ctx, "C_FindObjectsInit", rv);
	rv = f->C_FindObjects(s, &h, 1, &got);
	f->C_FindObjectsFinal(s);
	if (rv != CKR_OK)
		return adm_ck(ctx, "C_FindObjects", rv);
	*ret_found = got > 0;
	if (ret_h != NULL)
		*ret_h = got > 0 ? h : CK_INVALID_HANDLE;
	return 0;
}

int adm_open(const tok_config *cfg, tok_ctx **ret)
{
	return tok_open_any(cfg, ret);
}

/* ---- parsing --------------------------------------------------------- */

int adm_keytype_parse(const char *s, adm_keytype *ret)
{
	size_t i;

	for (i = 0; s != NULL && i < ARRAY_SIZE(kt_table); i++)
		if (strcasecmp(s, kt_table[i].name) == 0) {
			*ret = kt_table[i].type;
			return 0;
		}
	return err_set(P11J_E_BAD_REQUEST, "key type '%.64s' is not one of %s", s ? s : "",
	               ADM_KEYTYPES);
}

const char *adm_keytype_name(adm_keytype t)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(kt_table); i++)
		if (kt_table[i].type == t)
			return kt_table[i].name;
	return "none";
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int adm_id_parse(const char *hex, uint8_t **ret_id, size_t *ret_len)
{
	size_t n = hex != NULL ? strlen(hex) : 0, i;
	uint8_t *id;

	if (n == 0 || n % 2 != 0 || n / 2 > ADM_ID_MAX)
		return err_set(
		    P11J_E_BAD_REQUEST,
		    "--id takes an even number of hex digits (1 to %d bytes), not '%.140s'",
		    ADM_ID_MAX, hex ? hex : "");
	id = malloc(n / 2);
	if (id == NULL)
		return err_nomem();
	for (i = 0; i < n / 2; i++) {
		int hi = hexval((unsigned char)hex[2 * i]),
		    lo = hexval((unsigned char)hex[2 * i + 1]);

		if (hi < 0 || lo < 0) {
			free(id);
			return err_set(P11J_E_BAD_REQUEST, "--id '%.140s' is not hexadecimal", hex);
		}
		id[i] = (uint8_t)(hi << 4 | lo);
	}
	*ret_id = id;
	*ret_len = n / 2;
	return 0;
}

int adm_subject_parse(const char *s, X509_NAME **ret)
{
	X509_NAME *name = NULL;
	char *buf = NULL, *p, *w, *type, *eq;
	int r = 0;

	if (s == NULL || s[0] != '/' || strlen(s) > ADM_SUBJECT_MAX)
		return err_set(P11J_E_BAD_REQUEST,
		               "the subject must look like '/CN=name/O=organisation' "
		               "(at most %d characters)",
		               ADM_SUBJECT_MAX);
	buf = strdup(s);
	name = X509_NAME_new();
	if (buf == NULL || name == NULL) {
		r = err_nomem();
		goto out;
	}
	p = buf + 1;
	while (*p != '\0') {
		/* one "type=value" up to an unescaped '/'; "\x" stands for x */
		type = w = p;
		while (*p != '\0' && *p != '/') {
			if (*p == '\\' && p[1] != '\0')
				p++;
			*w++ = *p++;
		}
		if (*p == '/')
			p++;
		*w = '\0';
		eq = strchr(type, '=');
		if (eq == NULL || eq == type || eq[1] == '\0') {
			r = err_set(P11J_E_BAD_REQUEST,
			            "subject part '%.64s' is not TYPE=VALUE with a value", type);
			goto out;
		}
		*eq = '\0';
		if (OBJ_txt2nid(type) == NID_undef) {
			r = err_set(P11J_E_BAD_REQUEST, "unknown subject attribute type '%.64s'",
			            type);
			goto out;
		}
		if (X509_NAME_add_entry_by_txt(name, type, MBSTRING_UTF8,
		                               (const unsigned char *)(eq + 1), -1, -1, 0) != 1) {
			r = err_set_ossl(P11J_E_BAD_REQUEST, "subject attribute");
			goto out;
		}
	}
	if (X509_NAME_entry_count(name) == 0) {
		r = err_set(P11J_E_BAD_REQUEST, "the subject is empty; give at least '/CN=name'");
		goto out;
	}
	*ret = name;
	name = NULL;
out:
	X509_NAME_free(name);
	free(buf);
	return r;
}

/* ---- keygen ---------------------------------------------------------- */

void adm_key_clear(adm_key *k)
{
	if (k == NULL)
		return;
	free(k->uri);
	free(k->id);
	free(k->warning);
	EVP_PKEY_free(k->pub);
	memset(k, 0, sizeof(*k));
}

static int key_uri(tok_ctx *ctx, CK_FUNCTION_LIST *f, const char *label, const uint8_t *id,
                   size_t id_len, char **ret)
{
	P11KitUri *u = p11_kit_uri_new();
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_TOKEN_INFO ti;
	CK_SLOT_ID slot = 0;
	CK_ATTRIBUTE a;
	CK_RV rv;
	int r = 0;

	if (u == NULL)
		return err_nomem();
	tok_module(ctx, &slot);
	rv = f->C_GetTokenInfo(slot, &ti);
	if (rv != CKR_OK) {
		r = adm_ck(ctx, "C_GetTokenInfo", rv);
		goto out;
	}
	memcpy(p11_kit_uri_get_token_info(u)->label, ti.label, sizeof(ti.label));
	a = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
	p11_kit_uri_set_attribute(u, &a);
	a = (CK_ATTRIBUTE){CKA_ID, (void *)id, id_len};
	p11_kit_uri_set_attribute(u, &a);
	a = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
	p11_kit_uri_set_attribute(u, &a);
	if (p11_kit_uri_format(u, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, ret) != P11_KIT_URI_OK)
		r = err_set(P11J_E_NOMEM, "cannot format the key URI");
out:
	p11_kit_uri_free(u);
	return r;
}

static int flags_read(tok_ctx *ctx, CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                      adm_priv_flags *ret)
{
	CK_BBOOL v[10] = {0};
	CK_ATTRIBUTE a[10] = {
	    {CKA_TOKEN, &v[0], 1},
	    {CKA_PRIVATE, &v[1], 1},
	    {CKA_SENSITIVE, &v[2], 1},
	    {CKA_EXTRACTABLE, &v[3], 1},
	    {CKA_ALWAYS_SENSITIVE, &v[4], 1},
	    {CKA_NEVER_EXTRACTABLE, &v[5], 1},
	    {CKA_SIGN, &v[6], 1},
	    {CKA_DECRYPT, &v[7], 1},
	    {CKA_UNWRAP, &v[8], 1},
	    {CKA_DERIVE, &v[9], 1},
	};
	CK_RV rv;
	size_t i;

	rv = f->C_GetAttributeValue(s, o, a, ARRAY_SIZE(a));
	if (rv != CKR_OK)
		return adm_ck(ctx, "C_GetAttributeValue", rv);
	for (i = 0; i < ARRAY_SIZE(a); i++)
		if (a[i].ulValueLen != 1)
			return err_set(
			    P11J_E_PKCS11,
			    "token '%s' does not report attribute 0x%lx of a private key",
			    tok_label(ctx), (unsigned long)a[i].type);
	*ret = (adm_priv_flags){
	    .token = v[0],
	    .private_ = v[1],
	    .sensitive = v[2],
	    .extractable = v[3],
	    .always_sensitive = v[4],
	    .never_extractable = v[5],
	    .sign = v[6],
	    .decrypt = v[7],
	    .unwrap = v[8],
	    .derive = v[9],
	};
	return 0;
}

/* Refuse a label or CKA_ID any object on the token already has: two keys
 * with one label cannot be told apart by name, and a shared CKA_ID would
 * pair the new key with another key's public key or certificate. */
static int check_unused(tok_ctx *ctx, CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, const char *label,
                        const uint8_t *id, size_t id_len)
{
	CK_ATTRIBUTE t;
	bool found = false;
	char *hex = NULL;
	int r;

	t = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
	if ((r = object_find(ctx, f, s, &t, 1, NULL, &found)) < 0)
		return r;
	if (found)
		return err_set(P11J_E_BAD_REQUEST,
		               "token '%s' already holds an object labelled '%s'; choose another "
		               "--label",
		               tok_label(ctx), label);
	t = (CK_ATTRIBUTE){CKA_ID, (void *)id, id_len};
	if ((r = object_find(ctx, f, s, &t, 1, NULL, &found)) < 0)
		return r;
	if (found) {
		if (util_hex(id, id_len, &hex) < 0)
			return err_nomem();
		r = err_set(
		    P11J_E_BAD_REQUEST,
		    "token '%s' already holds an object with CKA_ID %s; choose another --id",
		    tok_label(ctx), hex);
		free(hex);
		return r;
	}
	return 0;
}

/* The label is the key's name in the agent, its URI and `p11jwt keys`. */
static bool label_ok(const char *label, size_t len)
{
	size_t i;

	if (len == 0 || len > ADM_LABEL_MAX)
		return false;
	for (i = 0; i < len; i++)
		if ((unsigned char)label[i] < 0x20 || label[i] == 0x7f)
			return false;
	return true;
}

/* Whether a blank-padded CK_UTF8CHAR field holds "tpm" in any case. */
static bool field_says_tpm(const CK_UTF8CHAR *f, size_t len)
{
	size_t i;

	for (i = 0; i + 3 <= len; i++)
		if (tolower(f[i]) == 't' && tolower(f[i + 1]) == 'p' && tolower(f[i + 2]) == 'm')
			return true;
	return false;
}

bool adm_info_says_tpm(const CK_INFO *mi, const CK_TOKEN_INFO *ti)
{
	return (mi != NULL && (field_says_tpm(mi->manufacturerID, sizeof(mi->manufacturerID)) ||
	                       field_says_tpm(mi->libraryDescription,
	                                      sizeof(mi->libraryDescription)))) ||
	       (ti != NULL && (field_says_tpm(ti->manufacturerID, sizeof(ti->manufacturerID)) ||
	                       field_says_tpm(ti->model, sizeof(ti->model))));
}

static int token_is_tpm(tok_ctx *ctx, CK_FUNCTION_LIST *f, bool *ret)
{
	CK_INFO mi;
	CK_TOKEN_INFO ti;
	CK_SLOT_ID slot = 0;
	CK_RV rv;

	tok_module(ctx, &slot);
	if ((rv = f->C_GetInfo(&mi)) != CKR_OK)
		return adm_ck(ctx, "C_GetInfo", rv);
	if ((rv = f->C_GetTokenInfo(slot, &ti)) != CKR_OK)
		return adm_ck(ctx, "C_GetTokenInfo", rv);
	*ret = adm_info_says_tpm(&mi, &ti);
	return 0;
}

/* CKA_VERIFY and CKA_ENCRYPT of the public key, as the token reports them. */
static void pub_usage_read(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                           CK_BBOOL *ret_verify, CK_BBOOL *ret_encrypt)
{
	CK_ATTRIBUTE a[2] = {{CKA_VERIFY, ret_verify, 1}, {CKA_ENCRYPT, ret_encrypt, 1}};

	if (f->C_GetAttributeValue(s, o, a, ARRAY_SIZE(a)) != CKR_OK || a[0].ulValueLen != 1 ||
	    a[1].ulValueLen != 1)
		*ret_verify = *ret_encrypt = 0xff; /* not reported */
}

int adm_keygen(tok_ctx *ctx, adm_keytype type, const char *label, const uint8_t *id, size_t id_len,
               adm_key *ret)
{
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_OBJECT_CLASS pubc = CKO_PUBLIC_KEY, privc = CKO_PRIVATE_KEY;
	CK_BYTE exp[] = {0x01, 0x00, 0x01};
	CK_KEY_TYPE kt;
	CK_MECHANISM mech = {0, NULL, 0};
	CK_ULONG bits = 0, npub = 0, npriv = 0;
	CK_ATTRIBUTE pub[12], priv[12];
	CK_FUNCTION_LIST *f = NULL;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
	adm_priv_flags fl;
	adm_key k = {0};
	size_t t, label_len = label != NULL ? strlen(label) : 0;
	bool tpm = false;
	CK_BBOOL pverify = 0, pencrypt = 0;
	CK_RV rv;
	int r;

	if (ctx == NULL || ret == NULL)
		return err_set(P11J_E_BAD_REQUEST, "adm_keygen: missing argument");
	for (t = 0; t < ARRAY_SIZE(kt_table) && kt_table[t].type != type; t++)
		;
	if (t == ARRAY_SIZE(kt_table))
		return err_set(P11J_E_BAD_REQUEST, "unknown key type; use one of %s", ADM_KEYTYPES);
	if (!label_ok(label, label_len))
		return err_set(P11J_E_BAD_REQUEST,
		               "the key label must be 1 to %d characters, none of them a control "
		               "character",
		               ADM_LABEL_MAX);
	if (id != NULL && (id_len == 0 || id_len > ADM_ID_MAX))
		return err_set(P11J_E_BAD_REQUEST, "the CKA_ID must be 1 to %d bytes", ADM_ID_MAX);

	k.id_len = id != NULL ? id_len : ADM_RANDOM_ID_LEN;
	k.id = malloc(k.id_len);
	if (k.id == NULL)
		return err_nomem();
	if (id != NULL)
		memcpy(k.id, id, id_len);
	else if (RAND_bytes(k.id, (int)k.id_len) != 1) {
		r = err_set_ossl(P11J_E_CRYPTO, "RAND_bytes");
		goto out;
	}

	if ((r = session_open(ctx, true, &f, &s)) < 0)
		goto out;
	if ((r = check_unused(ctx, f, s, label, k.id, k.id_len)) < 0)
		goto out;
	if ((r = token_is_tpm(ctx, f, &tpm)) < 0)
		goto out;
	/* tpm2-pkcs11 (1.9) writes a P-521 CKA_EC_POINT with a one-byte DER
	 * length (133 bytes do not fit one), which no reader accepts: the key
	 * could not be used, and a pair destroyed after it was made stays loaded
	 * in a TPM without a resource manager. Refused before the TPM is asked. */
	if (tpm && type == ADM_KT_P521) {
		r = err_set(P11J_E_UNSUPPORTED_ALG,
		            "token '%s' is a TPM: tpm2-pkcs11 stores a P-521 public key in a form "
		            "that cannot be read (a malformed CKA_EC_POINT); use ec:P-384 or "
		            "ec:P-256",
		            tok_label(ctx));
		goto out;
	}

	if (kt_table[t].bits != 0) {
		kt = CKK_RSA;
		mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
	} else if (type == ADM_KT_ED25519) {
		kt = CKK_EC_EDWARDS;
		mech.mechanism = CKM_EC_EDWARDS_KEY_PAIR_GEN;
	} else {
		kt = CKK_EC;
		mech.mechanism = CKM_EC_KEY_PAIR_GEN;
	}
	pub[npub++] = (CK_ATTRIBUTE){CKA_CLASS, &pubc, sizeof(pubc)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, &kt, sizeof(kt)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_TOKEN, &yes, 1};
	pub[npub++] = (CK_ATTRIBUTE){CKA_PRIVATE, &no, 1};
	/* tpm2-pkcs11 (1.9) turns a template into TPM object attributes and
	 * reads the public key's CKA_VERIFY as the TPM's "decrypt" and
	 * CKA_ENCRYPT as its "sign": VERIFY true would make a key that
	 * decrypts, ENCRYPT false one that cannot sign, and either then fails
	 * its own consistency check (CKR_GENERAL_ERROR, "attr mismatch"). On a
	 * TPM the two are left out, the private key's CKA_SIGN true and
	 * CKA_DECRYPT false decide, and the TPM makes a sign-only key. The
	 * template is chosen before the first try: a refused template leaves
	 * the objects tpm2-pkcs11 had loaded in the TPM until it disconnects. */
	if (!tpm) {
		pub[npub++] = (CK_ATTRIBUTE){CKA_VERIFY, &yes, 1};
		pub[npub++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &no, 1};
	}
	pub[npub++] = (CK_ATTRIBUTE){CKA_WRAP, &no, 1};
	pub[npub++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, label_len};
	pub[npub++] = (CK_ATTRIBUTE){CKA_ID, k.id, k.id_len};
	if (kt_table[t].bits != 0) {
		bits = kt_table[t].bits;
		pub[npub++] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)};
		pub[npub++] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, exp, sizeof(exp)};
	} else {
		pub[npub++] =
		    (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)kt_table[t].par, kt_table[t].par_len};
	}
	priv[npriv++] = (CK_ATTRIBUTE){CKA_CLASS, &privc, sizeof(privc)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, &kt, sizeof(kt)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_TOKEN, &yes, 1};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_PRIVATE, &yes, 1};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &yes, 1};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &no, 1};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_SIGN, &yes, 1};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_DECRYPT, &no, 1};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_UNWRAP, &no, 1};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_DERIVE, &no, 1};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, label_len};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_ID, k.id, k.id_len};

	rv = f->C_GenerateKeyPair(s, &mech, pub, npub, priv, npriv, &hpub, &hpriv);
	if (rv != CKR_OK) {
		r = adm_ck(ctx, "C_GenerateKeyPair", rv);
		if (rv == CKR_MECHANISM_INVALID || rv == CKR_ATTRIBUTE_VALUE_INVALID ||
		    rv == CKR_CURVE_NOT_SUPPORTED)
			r = err_set(P11J_E_UNSUPPORTED_ALG, "token '%s'%s cannot generate %s keys (%s)",
			            tok_label(ctx), tpm ? " (a TPM)" : "", kt_table[t].name,
			            tok_ckr_name(rv));
		goto out;
	}

	/* Trust what the token did, not what we asked for. */
	if ((r = flags_read(ctx, f, s, hpriv, &fl)) < 0)
		goto out;
	if (!fl.token || !fl.private_ || !fl.sensitive || fl.extractable || !fl.sign ||
	    fl.decrypt || fl.unwrap || fl.derive) {
		r = err_set(P11J_E_KEY_UNSAFE,
		            "token '%s' did not make the private key as asked (token %d, private "
		            "%d, sensitive %d, extractable %d, sign %d, decrypt %d, unwrap %d, "
		            "derive %d); the key pair was removed",
		            tok_label(ctx), fl.token, fl.private_, fl.sensitive, fl.extractable,
		            fl.sign, fl.decrypt, fl.unwrap, fl.derive);
		goto out;
	}
	if (tpm) {
		/* what tpm2-pkcs11 made of the public key's usage, for the operator */
		pub_usage_read(f, s, hpub, &pverify, &pencrypt);
		if (pverify != CK_TRUE || pencrypt != CK_FALSE) {
			char buf[400];

			snprintf(buf, sizeof(buf),
			         "token '%s' is a TPM: the key pair was made sign-only, and the "
			         "token gave its public key object CKA_VERIFY %s and CKA_ENCRYPT %s "
			         "(tpm2-pkcs11 derives them from the TPM key's attributes); p11jwt "
			         "never uses the public key object but to read the public key",
			         tok_label(ctx),
			         pverify == 0xff ? "unknown" : pverify ? "true" : "false",
			         pencrypt == 0xff ? "unknown" : pencrypt ? "true" : "false");
			if ((k.warning = strdup(buf)) == NULL) {
				r = err_nomem();
				goto out;
			}
		}
	}
	if ((r = tok_pub_from_object(ctx, s, hpub, kt, label, &k.pub)) < 0)
		goto out;
	if ((r = key_uri(ctx, f, label, k.id, k.id_len, &k.uri)) < 0)
		goto out;
	*ret = k;
	memset(&k, 0, sizeof(k));
	hpub = hpriv = CK_INVALID_HANDLE;
out:
	/* A pair we could not finish is not left behind. */
	if (hpriv != CK_INVALID_HANDLE)
		f->C_DestroyObject(s, hpriv);
	if (hpub != CK_INVALID_HANDLE)
		f->C_DestroyObject(s, hpub);
	if (s != CK_INVALID_HANDLE)
		f->C_CloseSession(s);
	adm_key_clear(&k);
	return r;
}

int adm_priv_flags_get(tok_ctx *ctx, const char *label, adm_priv_flags *ret)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)},
	                     {CKA_LABEL, (void *)label, strlen(label)}};
	CK_FUNCTION_LIST *f = NULL;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
	bool found = false;
	int r;

	if ((r = session_open(ctx, false, &f, &s)) < 0)
		return r;
	r = object_find(ctx, f, s, t, 2, &o, &found);
	if (r == 0 && !found)
		r = err_set(P11J_E_NOT_FOUND, "no private key labelled '%s' on token '%s'", label,
		            tok_label(ctx));
	if (r == 0)
		r = flags_read(ctx, f, s, o, ret);
	f->C_CloseSession(s);
	return r;
}

/* ---- signing requests and certificates ------------------------------- */

/* The signature algorithm of a key: the JWS alg whose token operation
 * produces exactly the X.509 signature, and its AlgorithmIdentifier. */
static int sig_alg(const tok_key *k, jwa_alg *ret_alg, X509_ALGOR **ret_algor)
{
	X509_ALGOR *a;
	jwa_alg alg;
	int nid, ptype = V_ASN1_UNDEF;

	switch (tok_key_kind(k)) {
	case KEYKIND_RSA:
		alg = JWA_RS256; /* PKCS#1 v1.5 with SHA-256 */
		nid = NID_sha256WithRSAEncryption;
		ptype = V_ASN1_NULL;
		break;
	case KEYKIND_P256:
		alg = JWA_ES256;
		nid = NID_ecdsa_with_SHA256;
		break;
	case KEYKIND_P384:
		alg = JWA_ES384;
		nid = NID_ecdsa_with_SHA384;
		break;
	case KEYKIND_P521:
		alg = JWA_ES512;
		nid = NID_ecdsa_with_SHA512;
		break;
	case KEYKIND_ED25519:
		alg = JWA_EDDSA;
		nid = NID_ED25519;
		break;
	default:
		return err_set(P11J_E_UNSUPPORTED_ALG, "key '%s' is of an unsupported kind",
		               tok_key_name(k));
	}
	a = X509_ALGOR_new();
	if (a == NULL || X509_ALGOR_set0(a, OBJ_nid2obj(nid), ptype, NULL) != 1) {
		X509_ALGOR_free(a);
		return err_set_ossl(P11J_E_CRYPTO, "X509_ALGOR_set0");
	}
	*ret_alg = alg;
	*ret_algor = a;
	return 0;
}

/* Sign the DER to-be-signed bytes on the token; the result as the BIT
 * STRING X.509 wants (ECDSA as a DER Ecdsa-Sig-Value). */
static int sign_tbs(tok_ctx *ctx, const tok_key *k, jwa_alg alg, const uint8_t *tbs, size_t len,
                    ASN1_BIT_STRING **ret)
{
	uint8_t sig[ADM_SIG_MAX];
	size_t siglen = sizeof(sig), outlen;
	uint8_t *der = NULL;
	const uint8_t *out = sig;
	ASN1_BIT_STRING *bs = NULL;
	int r;

	r = tok_sign(ctx, k, alg, tbs, len, sig, &siglen);
	if (r < 0)
		return r;
	outlen = siglen;
	if (jwa_is_ec(alg)) {
		if ((r = jws_ecdsa_raw_to_der(sig, siglen, &der, &outlen)) < 0)
			return r;
		out = der;
	}
	bs = ASN1_BIT_STRING_new();
	if (bs == NULL || ASN1_BIT_STRING_set(bs, (unsigned char *)out, (int)outlen) != 1) {
		ASN1_BIT_STRING_free(bs);
		r = err_set_ossl(P11J_E_CRYPTO, "ASN1_BIT_STRING_set");
		goto out;
	}
	/* whole octets: no unused bits */
	bs->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
	bs->flags |= ASN1_STRING_FLAG_BITS_LEFT;
	*ret = bs;
out:
	OPENSSL_free(der);
	return r;
}

static bool key_usable(const tok_key *k)
{
	return tok_key_pubkey(k) != NULL && tok_key_algs(k) != 0;
}

int adm_csr(tok_ctx *ctx, const tok_key *k, const X509_NAME *subj, X509_REQ **ret)
{
	X509_REQ *req = NULL;
	X509_ALGOR *algor = NULL;
	ASN1_BIT_STRING *sig = NULL;
	unsigned char *tbs = NULL;
	jwa_alg alg = JWA_NONE;
	int len, r;

	if (ctx == NULL || k == NULL || subj == NULL || ret == NULL || !key_usable(k))
		return err_set(P11J_E_BAD_REQUEST, "adm_csr: missing argument");
	if ((r = sig_alg(k, &alg, &algor)) < 0)
		return r;
	req = X509_REQ_new();
	if (req == NULL || X509_REQ_set_version(req, X509_REQ_VERSION_1) != 1 ||
	    X509_REQ_set_subject_name(req, subj) != 1 ||
	    X509_REQ_set_pubkey(req, tok_key_pubkey(k)) != 1) {
		r = err_set_ossl(P11J_E_CRYPTO, "building the certificate request");
		goto out;
	}
	len = i2d_re_X509_REQ_tbs(req, &tbs);
	if (len <= 0) {
		r = err_set_ossl(P11J_E_CRYPTO, "i2d_re_X509_REQ_tbs");
		goto out;
	}
	if ((r = sign_tbs(ctx, k, alg, tbs, (size_t)len, &sig)) < 0)
		goto out;
	if (X509_REQ_set1_signature_algo(req, algor) != 1) {
		r = err_set_ossl(P11J_E_CRYPTO, "X509_REQ_set1_signature_algo");
		goto out;
	}
	X509_REQ_set0_signature(req, sig);
	sig = NULL;
	/* The token's signature must verify with the key we put in. */
	if (X509_REQ_verify(req, tok_key_pubkey(k)) != 1) {
		r = err_set_ossl(P11J_E_CRYPTO, "verifying the signed certificate request");
		goto out;
	}
	*ret = req;
	req = NULL;
out:
	OPENSSL_free(tbs);
	ASN1_BIT_STRING_free(sig);
	X509_ALGOR_free(algor);
	X509_REQ_free(req);
	return r;
}

static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
	X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, v3, nid, value);
	int ok = e != NULL && X509_add_ext(x, e, -1) == 1;

	X509_EXTENSION_free(e);
	return ok ? 0 : err_set_ossl(P11J_E_CRYPTO, "adding a certificate extension");
}

/* DER length octets of n into out (at most 5); returns their count. */
static size_t der_len(size_t n, uint8_t *out)
{
	size_t i, k = 0;

	if (n < 0x80) {
		out[0] = (uint8_t)n;
		return 1;
	}
	for (i = n; i > 0; i >>= 8)
		k++;
	out[0] = (uint8_t)(0x80 | k);
	for (i = 0; i < k; i++)
		out[1 + i] = (uint8_t)(n >> (8 * (k - 1 - i)));
	return 1 + k;
}

/* Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm,
 * signatureValue }, assembled from its DER parts and parsed back, so the
 * X509 object and its cached encoding agree. */
static int cert_assemble(const uint8_t *tbs, size_t tbslen, const X509_ALGOR *algor,
                         const ASN1_BIT_STRING *sig, X509 **ret)
{
	unsigned char *a = NULL, *s = NULL, *der = NULL, *w;
	const unsigned char *p;
	uint8_t hdr[6];
	size_t hl, body;
	int alen, slen, r = 0;
	X509 *x;

	alen = i2d_X509_ALGOR(algor, &a);
	slen = i2d_ASN1_BIT_STRING(sig, &s);
	if (alen <= 0 || slen <= 0) {
		r = err_set_ossl(P11J_E_CRYPTO, "encoding the certificate signature");
		goto out;
	}
	body = tbslen + (size_t)alen + (size_t)slen;
	hdr[0] = 0x30;
	hl = 1 + der_len(body, hdr + 1);
	der = malloc(hl + body);
	if (der == NULL) {
		r = err_nomem();
		goto out;
	}
	w = der;
	memcpy(w, hdr, hl);
	w += hl;
	memcpy(w, tbs, tbslen);
	w += tbslen;
	memcpy(w, a, (size_t)alen);
	w += alen;
	memcpy(w, s, (size_t)slen);
	p = der;
	x = d2i_X509(NULL, &p, (long)(hl + body));
	if (x == NULL || p != der + hl + body) {
		X509_free(x);
		r = err_set_ossl(P11J_E_CRYPTO, "parsing the assembled certificate");
		goto out;
	}
	*ret = x;
out:
	OPENSSL_free(a);
	OPENSSL_free(s);
	free(der);
	return r;
}

int adm_cert(tok_ctx *ctx, const tok_key *k, const X509_NAME *subj, int days, X509 **ret)
{
	X509 *x = NULL, *out = NULL;
	X509_ALGOR *algor = NULL;
	ASN1_BIT_STRING *sig = NULL;
	BIGNUM *bn = NULL;
	X509V3_CTX v3;
	unsigned char *tbs = NULL;
	uint8_t serial[16];
	jwa_alg alg = JWA_NONE;
	int len, r;

	if (ctx == NULL || k == NULL || subj == NULL || ret == NULL || !key_usable(k))
		return err_set(P11J_E_BAD_REQUEST, "adm_cert: missing argument");
	if (days < 1 || days > 36500)
		return err_set(P11J_E_BAD_REQUEST, "the validity must be 1 to 36500 days");
	if ((r = sig_alg(k, &alg, &algor)) < 0)
		return r;
	if (RAND_bytes(serial, sizeof(serial)) != 1) {
		r = err_set_ossl(P11J_E_CRYPTO, "RAND_bytes");
		goto out;
	}
	serial[0] &= 0x7f; /* positive (RFC 5280 4.1.2.2) ... */
	serial[0] |= 0x40; /* ... and 16 octets long */
	x = X509_new();
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	if (x == NULL || bn == NULL || X509_set_version(x, X509_VERSION_3) != 1 ||
	    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL ||
	    X509_set_subject_name(x, subj) != 1 || X509_set_issuer_name(x, subj) != 1 ||
	    X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) == NULL ||
	    X509_set_pubkey(x, tok_key_pubkey(k)) != 1) {
		r = err_set_ossl(P11J_E_CRYPTO, "building the certificate");
		goto out;
	}
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	if ((r = add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE")) < 0 ||
	    (r = add_ext(x, &v3, NID_key_usage, "critical,digitalSignature")) < 0 ||
	    (r = add_ext(x, &v3, NID_subject_key_identifier, "hash")) < 0)
		goto out;
	/* OpenSSL 3.0 has no setter for the signature algorithm inside the
	 * TBSCertificate (X509_sign() fills it in itself); it must be in place
	 * before the TBS is encoded and signed. */
	if (X509_ALGOR_copy((X509_ALGOR *)X509_get0_tbs_sigalg(x), algor) != 1) {
		r = err_set_ossl(P11J_E_CRYPTO, "setting the certificate's signature algorithm");
		goto out;
	}
	len = i2d_re_X509_tbs(x, &tbs);
	if (len <= 0) {
		r = err_set_ossl(P11J_E_CRYPTO, "i2d_re_X509_tbs");
		goto out;
	}
	if ((r = sign_tbs(ctx, k, alg, tbs, (size_t)len, &sig)) < 0 ||
	    (r = cert_assemble(tbs, (size_t)len, algor, sig, &out)) < 0)
		goto out;
	if (X509_verify(out, tok_key_pubkey(k)) != 1) {
		r = err_set_ossl(P11J_E_CRYPTO, "verifying the signed certificate");
		goto out;
	}
	*ret = out;
	out = NULL;
out:
	OPENSSL_cleanse(serial, sizeof(serial));
	OPENSSL_free(tbs);
	BN_free(bn);
	ASN1_BIT_STRING_free(sig);
	X509_ALGOR_free(algor);
	X509_free(x);
	X509_free(out);
	return r;
}

int adm_cert_store(tok_ctx *ctx, const tok_key *k, X509 *cert)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ct = CKC_X_509;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_FUNCTION_LIST *f = NULL;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	unsigned char *der = NULL, *subj = NULL, *iss = NULL, *ser = NULL;
	int dlen, slen, ilen, nlen, r;
	const uint8_t *id;
	size_t id_len = 0;
	const char *label;
	bool found = false;
	CK_ATTRIBUTE find[3], tmpl[10];
	CK_RV rv;

	if (ctx == NULL || k == NULL || cert == NULL)
		return err_set(P11J_E_BAD_REQUEST, "adm_cert_store: missing argument");
	id = tok_key_id(k, &id_len);
	label = tok_key_name(k);
	if (id_len == 0)
		return err_set(P11J_E_BAD_REQUEST, "key '%s' has no CKA_ID to tie a certificate to",
		               label);
	if (X509_get0_pubkey(cert) == NULL ||
	    EVP_PKEY_eq(X509_get0_pubkey(cert), tok_key_pubkey(k)) != 1)
		return err_set(P11J_E_BAD_REQUEST,
		               "the certificate does not hold the public key of key '%s'", label);
	dlen = i2d_X509(cert, &der);
	slen = i2d_X509_NAME(X509_get_subject_name(cert), &subj);
	ilen = i2d_X509_NAME(X509_get_issuer_name(cert), &iss);
	nlen = i2d_ASN1_INTEGER(X509_get0_serialNumber(cert), &ser);
	if (dlen <= 0 || slen <= 0 || ilen <= 0 || nlen <= 0) {
		r = err_set_ossl(P11J_E_CRYPTO, "encoding the certificate");
		goto out;
	}
	find[0] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
	find[1] = (CK_ATTRIBUTE){CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)};
	find[2] = (CK_ATTRIBUTE){CKA_ID, (void *)id, id_len};
	tmpl[0] = find[0];
	tmpl[1] = find[1];
	tmpl[2] = find[2];
	tmpl[3] = (CK_ATTRIBUTE){CKA_TOKEN, &yes, 1};
	tmpl[4] = (CK_ATTRIBUTE){CKA_PRIVATE, &no, 1};
	tmpl[5] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
	tmpl[6] = (CK_ATTRIBUTE){CKA_SUBJECT, subj, (CK_ULONG)slen};
	tmpl[7] = (CK_ATTRIBUTE){CKA_ISSUER, iss, (CK_ULONG)ilen};
	tmpl[8] = (CK_ATTRIBUTE){CKA_SERIAL_NUMBER, ser, (CK_ULONG)nlen};
	tmpl[9] = (CK_ATTRIBUTE){CKA_VALUE, der, (CK_ULONG)dlen};

	if ((r = session_open(ctx, true, &f, &s)) < 0)
		goto out;
	if ((r = object_find(ctx, f, s, find, ARRAY_SIZE(find), NULL, &found)) < 0)
		goto out;
	if (found) {
		r = err_set(P11J_E_BAD_REQUEST,
		            "token '%s' already holds a certificate for key '%s' (same CKA_ID); "
		            "not adding a second one",
		            tok_label(ctx), label);
		goto out;
	}
	rv = f->C_CreateObject(s, tmpl, ARRAY_SIZE(tmpl), &h);
	if (rv != CKR_OK) {
		r = adm_ck(ctx, "C_CreateObject", rv);
		goto out;
	}
	r = 0;
out:
	if (s != CK_INVALID_HANDLE)
		f->C_CloseSession(s);
	OPENSSL_free(der);
	OPENSSL_free(subj);
	OPENSSL_free(iss);
	OPENSSL_free(ser);
	return r;
}
