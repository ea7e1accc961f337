/* SPDX-License-Identifier: MIT */
/* The signing keys: enumerated at open from their public attributes,
 * their private key handles found again after login and recovery, and the
 * tok_key accessors. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

void tok_key_free(tok_key *k)
{
	if (k == NULL)
		return;
	free(k->name);
	free(k->uri);
	free(k->id);
	free(k->cert);
	EVP_PKEY_free(k->pub);
	free(k);
}

/* First object of a class with the key's CKA_ID (or label when it has no
 * ID); CK_INVALID_HANDLE if none. */
static int object_peer(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const uint8_t *id,
                       size_t id_len, const char *label, CK_OBJECT_HANDLE *ret)
{
	CK_CERTIFICATE_TYPE x509 = CKC_X_509;
	CK_ATTRIBUTE tmpl[3] = {{CKA_CLASS, &cls, sizeof(cls)}};
	CK_ULONG n = 1;
	CK_OBJECT_HANDLE *v = NULL;
	size_t nv = 0;
	int r;

	*ret = CK_INVALID_HANDLE;
	if (id_len > 0) {
		tmpl[n++] = (CK_ATTRIBUTE){CKA_ID, (void *)id, id_len};
	} else if (label != NULL) {
		tmpl[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
	} else {
		return 0;
	}
	if (cls == CKO_CERTIFICATE)
		tmpl[n++] = (CK_ATTRIBUTE){CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)};
	r = tok_objects_find(ctx, s, tmpl, n, &v, &nv);
	if (r < 0)
		return r;
	if (nv > 0)
		*ret = v[0];
	free(v);
	return 0;
}

static int key_uri(tok_ctx *ctx, tok_key *k, const uint8_t *label, size_t label_len)
{
	P11KitUri *u = p11_kit_uri_new();
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE a;
	CK_TOKEN_INFO *ti;
	int r = 0;

	if (u == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	ti = p11_kit_uri_get_token_info(u);
	memcpy(ti->label, ctx->ti.label, sizeof(ti->label));
	if (label_len > 0) {
		a = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, label_len};
		p11_kit_uri_set_attribute(u, &a);
	}
	if (k->id_len > 0) {
		a = (CK_ATTRIBUTE){CKA_ID, k->id, k->id_len};
		p11_kit_uri_set_attribute(u, &a);
	}
	a = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
	p11_kit_uri_set_attribute(u, &a);
	if (p11_kit_uri_format(u, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &k->uri) != P11_KIT_URI_OK)
		r = err_set(P11J_E_NOMEM, "cannot format the key URI");
	p11_kit_uri_free(u);
	return r;
}

/* One key from its anchor object (the private key, or with no_login the
 * public key or certificate). Returns 0 with *ret NULL when the key is
 * skipped (a warning has been logged). */
static int key_load(tok_ctx *ctx, const tok_config *cfg, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                    CK_OBJECT_CLASS cls, tok_key **ret)
{
	tok_key *k = NULL;
	uint8_t *label = NULL;
	size_t label_len = 0;
	CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
	CK_BBOOL extractable = CK_TRUE, sensitive = CK_FALSE;
	CK_OBJECT_HANDLE pubo = CK_INVALID_HANDLE, certo = CK_INVALID_HANDLE;
	EVP_PKEY *certpub = NULL;
	int r;

	*ret = NULL;
	k = calloc(1, sizeof(*k));
	if (k == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	k->priv = CK_INVALID_HANDLE;
	r = tok_attr_get(ctx, s, o, CKA_LABEL, TOK_ATTR_MAX, &label, &label_len);
	if (r == 0)
		r = tok_attr_get(ctx, s, o, CKA_ID, TOK_ATTR_MAX, &k->id, &k->id_len);
	if (r < 0)
		goto out;
	if (label_len > 0 && memchr(label, '\0', label_len) == NULL)
		k->name = strdup((char *)label);
	else if (k->id_len > 0)
		r = util_hex(k->id, k->id_len, &k->name);
	else if (asprintf(&k->name, "handle-%lu", (unsigned long)o) < 0)
		k->name = NULL;
	if (r < 0)
		goto out;
	if (k->name == NULL) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}

	if (cls != CKO_CERTIFICATE &&
	    (r = tok_attr_fixed(ctx, s, o, CKA_KEY_TYPE, &kt, sizeof(kt))) < 0)
		goto out;

	if (cls == CKO_PRIVATE_KEY) {
		k->priv = o;
		/* Absent flags count against the key: unknown is not safe. */
		if ((r = tok_attr_fixed(ctx, s, o, CKA_EXTRACTABLE, &extractable, 1)) < 0 ||
		    (r = tok_attr_fixed(ctx, s, o, CKA_SENSITIVE, &sensitive, 1)) < 0)
			goto out;
		k->unsafe = extractable != CK_FALSE || sensitive == CK_FALSE;
		if (k->unsafe && !cfg->allow_unsafe_keys) {
			tok_log(ctx, TOK_LOG_WARNING,
			        "skipping key '%s' on token '%s': the private key is %s "
			        "(allow with --allow-unsafe-keys)",
			        k->name, ctx->label,
			        extractable != CK_FALSE ? "extractable" : "not sensitive");
			r = 0;
			goto skip;
		}
		if (k->unsafe)
			tok_log(ctx, TOK_LOG_WARNING,
			        "serving key '%s' although its private key is %s", k->name,
			        extractable != CK_FALSE ? "extractable" : "not sensitive");
		{
			CK_BBOOL always = CK_FALSE;

			if ((r = tok_attr_fixed(ctx, s, o, CKA_ALWAYS_AUTHENTICATE, &always, 1)) <
			    0)
				goto out;
			k->always_auth = always == CK_TRUE;
		}
		r = object_peer(ctx, s, CKO_PUBLIC_KEY, k->id, k->id_len, k->name, &pubo);
	} else if (cls == CKO_PUBLIC_KEY) {
		pubo = o;
	}
	if (r < 0)
		goto out;
	if (cls == CKO_CERTIFICATE)
		certo = o;
	else if ((r = object_peer(ctx, s, CKO_CERTIFICATE, k->id, k->id_len, NULL, &certo)) < 0)
		goto out;

	if (pubo != CK_INVALID_HANDLE) {
		r = tok_pub_from_object(ctx, s, pubo, kt, k->name, &k->pub);
		if (r < 0 && r != P11J_E_NOT_FOUND) {
			tok_log(ctx, TOK_LOG_WARNING, "skipping key '%s': %s", k->name, err_msg());
			r = 0;
			goto skip;
		}
	}
	if (certo != CK_INVALID_HANDLE) {
		r = tok_cert_read(ctx, s, certo, &k->cert, &k->cert_len, &certpub);
		if (r == P11J_E_NOMEM)
			goto out;
		if (r < 0) {
			tok_log(ctx, TOK_LOG_WARNING, "ignoring the certificate of key '%s': %s",
			        k->name, err_msg());
		} else if (k->pub != NULL && EVP_PKEY_eq(k->pub, certpub) != 1) {
			tok_log(ctx, TOK_LOG_WARNING,
			        "ignoring the certificate of key '%s': its "
			        "public key differs from the token's public key",
			        k->name);
			free(k->cert);
			k->cert = NULL;
			k->cert_len = 0;
		} else if (k->pub == NULL) {
			k->pub = certpub;
			certpub = NULL;
		}
	}
	/* RSA private key objects carry the (public) modulus and exponent. */
	if (k->pub == NULL && kt == CKK_RSA && k->priv != CK_INVALID_HANDLE)
		r = tok_pub_from_object(ctx, s, k->priv, CKK_RSA, k->name, &k->pub);
	if (k->pub == NULL) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "skipping key '%s': no public key object or "
		        "certificate with the same CKA_ID",
		        k->name);
		r = 0;
		goto skip;
	}
	k->kind = jwa_keykind_of(k->pub);
	if (k->kind == KEYKIND_UNKNOWN ||
	    (kt != (CK_KEY_TYPE)-1 && (kt == CKK_RSA) != (k->kind == KEYKIND_RSA))) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "skipping key '%s': unsupported kind of key "
		        "(RSA under 2048 bits, or not P-256, P-384, P-521, Ed25519)",
		        k->name);
		r = 0;
		goto skip;
	}
	k->algs = tok_mech_algs(ctx, k->kind);
	if (k->kind == KEYKIND_RSA)
		k->sig_len = (size_t)EVP_PKEY_get_size(k->pub);
	else
		k->sig_len = jwa_sig_len(jwa_default_for_kind(k->kind));
	if (k->sig_len == 0 || k->sig_len > TOK_SIG_MAX) {
		tok_log(ctx, TOK_LOG_WARNING, "skipping key '%s': signatures over %d bytes",
		        k->name, TOK_SIG_MAX);
		r = 0;
		goto skip;
	}
	r = key_uri(ctx, k, label, label_len);
	if (r < 0)
		goto out;
	*ret = k;
	k = NULL;
	goto out;
skip:
	r = 0;
out:
	EVP_PKEY_free(certpub);
	free(label);
	tok_key_free(k);
	return r;
}

static int keys_add(tok_ctx *ctx, tok_key *k)
{
	tok_key **nv = realloc(ctx->keys, (ctx->nkeys + 1) * sizeof(*nv));

	if (nv == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	ctx->keys = nv;
	ctx->keys[ctx->nkeys++] = k;
	return 0;
}

static bool id_known(const tok_ctx *ctx, const uint8_t *id, size_t id_len)
{
	size_t i;

	for (i = 0; i < ctx->nkeys; i++)
		if (ctx->keys[i]->id_len == id_len && id_len > 0 &&
		    memcmp(ctx->keys[i]->id, id, id_len) == 0)
			return true;
	return false;
}

int tok_keys_enumerate(tok_ctx *ctx, const tok_config *cfg, P11KitUri *uri, CK_SESSION_HANDLE s,
                       bool public_only)
{
	/* With no_login the private keys are invisible; the public halves
	 * (then certificates with no public key object) stand in for them. */
	static const CK_OBJECT_CLASS with_login[] = {CKO_PRIVATE_KEY};
	static const CK_OBJECT_CLASS without[] = {CKO_PUBLIC_KEY, CKO_CERTIFICATE};
	const CK_OBJECT_CLASS *classes = public_only ? without : with_login;
	size_t nclasses = public_only ? 2 : 1, c, i;
	CK_ATTRIBUTE tmpl[4];
	CK_ATTRIBUTE *ua;
	CK_BBOOL yes = CK_TRUE;
	CK_OBJECT_CLASS cls;
	CK_OBJECT_HANDLE *v = NULL;
	size_t nv = 0;
	int r = 0;

	for (c = 0; c < nclasses; c++) {
		CK_ULONG n = 0;

		cls = classes[c];
		tmpl[n++] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
		if (cls == CKO_PRIVATE_KEY)
			tmpl[n++] = (CK_ATTRIBUTE){CKA_SIGN, &yes, sizeof(yes)};
		/* The URI's type= is ignored: object=/id= name the key pair. */
		if ((ua = p11_kit_uri_get_attribute(uri, CKA_LABEL)) != NULL)
			tmpl[n++] = *ua;
		if ((ua = p11_kit_uri_get_attribute(uri, CKA_ID)) != NULL)
			tmpl[n++] = *ua;
		free(v);
		v = NULL;
		r = tok_objects_find(ctx, s, tmpl, n, &v, &nv);
		if (r < 0)
			goto out;
		for (i = 0; i < nv; i++) {
			tok_key *k = NULL;

			r = key_load(ctx, cfg, s, v[i], cls, &k);
			if (r < 0)
				goto out;
			if (k == NULL)
				continue;
			if (public_only && id_known(ctx, k->id, k->id_len)) {
				tok_key_free(k);
				continue;
			}
			r = keys_add(ctx, k);
			if (r < 0) {
				tok_key_free(k);
				goto out;
			}
		}
	}
out:
	free(v);
	return r;
}

/* The private key of a key listed while locked, or listed before the token
 * went away: found again by CKA_ID (else label), since object handles are
 * valid for one session and login only. The same safety checks as at open
 * apply: the key stays unusable (priv invalid) if they fail. */
static int key_resolve(tok_ctx *ctx, CK_SESSION_HANDLE s, tok_key *k)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_BBOOL yes = CK_TRUE, extractable = CK_TRUE, sensitive = CK_FALSE, always = CK_FALSE;
	CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
	CK_ATTRIBUTE tmpl[3] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_SIGN, &yes, sizeof(yes)}};
	CK_OBJECT_HANDLE *v = NULL, o;
	size_t nv = 0;
	int r;

	k->priv = CK_INVALID_HANDLE;
	k->always_auth = false;
	if (k->id_len > 0)
		tmpl[2] = (CK_ATTRIBUTE){CKA_ID, k->id, k->id_len};
	else
		tmpl[2] = (CK_ATTRIBUTE){CKA_LABEL, k->name, strlen(k->name)};
	r = tok_objects_find(ctx, s, tmpl, 3, &v, &nv);
	if (r < 0)
		return r;
	if (nv == 0) {
		tok_log(ctx, TOK_LOG_WARNING, "key '%s' has no private key on token '%s'", k->name,
		        ctx->label);
		goto out;
	}
	o = v[0];
	if ((r = tok_attr_fixed(ctx, s, o, CKA_KEY_TYPE, &kt, sizeof(kt))) < 0 ||
	    (r = tok_attr_fixed(ctx, s, o, CKA_EXTRACTABLE, &extractable, 1)) < 0 ||
	    (r = tok_attr_fixed(ctx, s, o, CKA_SENSITIVE, &sensitive, 1)) < 0 ||
	    (r = tok_attr_fixed(ctx, s, o, CKA_ALWAYS_AUTHENTICATE, &always, 1)) < 0)
		goto out;
	if (kt != (CK_KEY_TYPE)-1 && (kt == CKK_RSA) != (k->kind == KEYKIND_RSA)) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "key '%s': the private key's type does not match its public key", k->name);
		goto out;
	}
	k->unsafe = extractable != CK_FALSE || sensitive == CK_FALSE;
	if (k->unsafe && !ctx->allow_unsafe) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "not signing with key '%s' on token '%s': the private key is %s "
		        "(allow with --allow-unsafe-keys)",
		        k->name, ctx->label,
		        extractable != CK_FALSE ? "extractable" : "not sensitive");
		goto out;
	}
	k->always_auth = always == CK_TRUE;
	k->priv = o;
out:
	free(v);
	return r;
}

int tok_keys_resolve(tok_ctx *ctx, CK_SESSION_HANDLE s)
{
	size_t i;
	int r;

	for (i = 0; i < ctx->nkeys; i++)
		if ((r = key_resolve(ctx, s, ctx->keys[i])) < 0)
			return r;
	return 0;
}

void tok_keys_forget(tok_ctx *ctx)
{
	size_t i;

	for (i = 0; i < ctx->nkeys; i++)
		ctx->keys[i]->priv = CK_INVALID_HANDLE;
}

size_t tok_key_count(const tok_ctx *ctx)
{
	return ctx->nkeys;
}

const tok_key *tok_key_at(const tok_ctx *ctx, size_t i)
{
	return i < ctx->nkeys ? ctx->keys[i] : NULL;
}

const tok_key *tok_key_find(const tok_ctx *ctx, const char *name)
{
	size_t i;

	if (name == NULL)
		return NULL;
	for (i = 0; i < ctx->nkeys; i++)
		if (strcmp(ctx->keys[i]->name, name) == 0)
			return ctx->keys[i];
	return NULL;
}

const char *tok_key_name(const tok_key *k)
{
	return k->name;
}
const char *tok_key_uri(const tok_key *k)
{
	return k->uri;
}
EVP_PKEY *tok_key_pubkey(const tok_key *k)
{
	return k->pub;
}
jwa_keykind tok_key_kind(const tok_key *k)
{
	return k->kind;
}
bool tok_key_unsafe(const tok_key *k)
{
	return k->unsafe;
}
unsigned tok_key_algs(const tok_key *k)
{
	return k->algs;
}

const uint8_t *tok_key_id(const tok_key *k, size_t *ret_len)
{
	if (ret_len != NULL)
		*ret_len = k->id_len;
	return k->id;
}

const uint8_t *tok_key_cert(const tok_key *k, size_t *ret_len)
{
	if (ret_len != NULL)
		*ret_len = k->cert_len;
	return k->cert;
}
