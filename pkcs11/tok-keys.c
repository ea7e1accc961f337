/* SPDX-License-Identifier: MIT */
/* The signing keys: enumerated at open from their public attributes,
 * their private key handles found again after login and recovery, and the
 * tok_key accessors. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"
#include "common/util.h"

#include <pthread.h>
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
		return err_nomem();
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

#define KEY_SKIP 1 /* a step of key_load() skipped the key, with a warning */

/* CKA_EXTRACTABLE and CKA_SENSITIVE of private key o. *ret_why says what
 * makes the key unsafe ("extractable", "not sensitive"), NULL if nothing
 * does. Absent flags count against the key: unknown is not safe. */
static int priv_unsafe(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, const char **ret_why)
{
	CK_BBOOL extractable = CK_TRUE, sensitive = CK_FALSE;
	int r;

	*ret_why = NULL;
	if ((r = tok_attr_fixed(ctx, s, o, CKA_EXTRACTABLE, &extractable, 1)) < 0 ||
	    (r = tok_attr_fixed(ctx, s, o, CKA_SENSITIVE, &sensitive, 1)) < 0)
		return r;
	if (extractable != CK_FALSE)
		*ret_why = "extractable";
	else if (sensitive == CK_FALSE)
		*ret_why = "not sensitive";
	return 0;
}

/* An unsafe private key (why: priv_unsafe()) that allow_unsafe_keys does
 * not let through: logged as "<verb> '<key>' on token ...". */
static bool unsafe_refused(const tok_ctx *ctx, const tok_key *k, const char *why, const char *verb)
{
	if (why == NULL || ctx->allow_unsafe)
		return false;
	tok_log(ctx, TOK_LOG_WARNING,
	        "%s '%s' on token '%s': the private key is %s (allow with --allow-unsafe-keys)",
	        verb, k->name, ctx->label, why);
	return true;
}

/* A CKA_KEY_TYPE (when known) that is not the kind of the public key. */
static bool type_mismatch(CK_KEY_TYPE kt, jwa_keykind kind)
{
	return kt != (CK_KEY_TYPE)-1 && (kt == CKK_RSA) != (kind == KEYKIND_RSA);
}

/* CKA_LABEL (*ret_label, for the URI) and CKA_ID of o, and the key's name:
 * the label, else the hex ID, else the handle. */
static int key_names(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, tok_key *k,
                     uint8_t **ret_label, size_t *ret_label_len)
{
	int r;

	r = tok_attr_get(ctx, s, o, CKA_LABEL, TOK_ATTR_MAX, ret_label, ret_label_len);
	if (r == 0)
		r = tok_attr_get(ctx, s, o, CKA_ID, TOK_ATTR_MAX, &k->id, &k->id_len);
	if (r < 0)
		return r;
	if (*ret_label_len > 0 && memchr(*ret_label, '\0', *ret_label_len) == NULL)
		k->name = strdup((char *)*ret_label);
	else if (k->id_len > 0)
		r = util_hex(k->id, k->id_len, &k->name);
	else if (asprintf(&k->name, "handle-%lu", (unsigned long)o) < 0)
		k->name = NULL;
	if (r < 0)
		return r;
	if (k->name == NULL)
		return err_nomem();
	return 0;
}

/* The private key o itself: an unsafe one is skipped unless allowed (and
 * then served with a warning); CKA_ALWAYS_AUTHENTICATE. */
static int key_private(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, tok_key *k)
{
	CK_BBOOL always = CK_FALSE;
	const char *why;
	int r;

	k->priv = o;
	if ((r = priv_unsafe(ctx, s, o, &why)) < 0)
		return r;
	k->unsafe = why != NULL;
	if (unsafe_refused(ctx, k, why, "skipping key"))
		return KEY_SKIP;
	if (k->unsafe)
		tok_log(ctx, TOK_LOG_WARNING, "serving key '%s' although its private key is %s",
		        k->name, why);
	if ((r = tok_attr_fixed(ctx, s, o, CKA_ALWAYS_AUTHENTICATE, &always, 1)) < 0)
		return r;
	k->always_auth = always == CK_TRUE;
	return 0;
}

/* The public key object and the certificate of the key whose anchor is o
 * (of class cls); CK_INVALID_HANDLE for what is not there. */
static int key_peers(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_OBJECT_CLASS cls,
                     const tok_key *k, CK_OBJECT_HANDLE *ret_pub, CK_OBJECT_HANDLE *ret_cert)
{
	int r = 0;

	*ret_pub = CK_INVALID_HANDLE;
	*ret_cert = CK_INVALID_HANDLE;
	if (cls == CKO_PRIVATE_KEY)
		r = object_peer(ctx, s, CKO_PUBLIC_KEY, k->id, k->id_len, k->name, ret_pub);
	else if (cls == CKO_PUBLIC_KEY)
		*ret_pub = o;
	if (r < 0)
		return r;
	if (cls == CKO_CERTIFICATE)
		*ret_cert = o;
	else
		r = object_peer(ctx, s, CKO_CERTIFICATE, k->id, k->id_len, NULL, ret_cert);
	return r;
}

/* k->pub from the public key object, else from the certificate, else (RSA)
 * from the private key's public attributes. The certificate is kept only
 * if it holds the same public key. */
static int key_pubkey(tok_ctx *ctx, CK_SESSION_HANDLE s, tok_key *k, CK_KEY_TYPE kt,
                      CK_OBJECT_HANDLE pubo, CK_OBJECT_HANDLE certo)
{
	EVP_PKEY *certpub = NULL;
	int r;

	if (pubo != CK_INVALID_HANDLE) {
		r = tok_pub_from_object(ctx, s, pubo, kt, k->name, &k->pub);
		if (r < 0 && r != P11J_E_NOT_FOUND) {
			tok_log(ctx, TOK_LOG_WARNING, "skipping key '%s': %s", k->name, err_msg());
			return KEY_SKIP;
		}
	}
	if (certo != CK_INVALID_HANDLE) {
		r = tok_cert_read(ctx, s, certo, &k->cert, &k->cert_len, &certpub);
		if (r == P11J_E_NOMEM)
			return r;
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
		EVP_PKEY_free(certpub);
	}
	/* RSA private key objects carry the (public) modulus and exponent. */
	if (k->pub == NULL && kt == CKK_RSA && k->priv != CK_INVALID_HANDLE)
		(void)tok_pub_from_object(ctx, s, k->priv, CKK_RSA, k->name, &k->pub);
	if (k->pub == NULL) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "skipping key '%s': no public key object or "
		        "certificate with the same CKA_ID",
		        k->name);
		return KEY_SKIP;
	}
	return 0;
}

/* The kind of key, the algs the token can sign with it and the length of
 * its signatures; kinds not served are skipped. */
static int key_kind(tok_ctx *ctx, tok_key *k, CK_KEY_TYPE kt)
{
	k->kind = jwa_keykind_of(k->pub);
	if (k->kind == KEYKIND_UNKNOWN || type_mismatch(kt, k->kind)) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "skipping key '%s': unsupported kind of key "
		        "(RSA under 2048 bits, or not P-256, P-384, P-521, Ed25519)",
		        k->name);
		return KEY_SKIP;
	}
	k->algs = tok_mech_algs(ctx, k->kind);
	if (k->kind == KEYKIND_RSA)
		k->sig_len = (size_t)EVP_PKEY_get_size(k->pub);
	else
		k->sig_len = jwa_sig_len(jwa_default_for_kind(k->kind));
	if (k->sig_len == 0 || k->sig_len > TOK_SIG_MAX) {
		tok_log(ctx, TOK_LOG_WARNING, "skipping key '%s': signatures over %d bytes",
		        k->name, TOK_SIG_MAX);
		return KEY_SKIP;
	}
	return 0;
}

/* One key from its anchor object (the private key, or with no_login the
 * public key or certificate). Returns 0 with *ret NULL when the key is
 * skipped (a warning has been logged). */
static int key_load(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_OBJECT_CLASS cls,
                    tok_key **ret)
{
	tok_key *k = NULL;
	uint8_t *label = NULL;
	size_t label_len = 0;
	CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
	CK_OBJECT_HANDLE pubo = CK_INVALID_HANDLE, certo = CK_INVALID_HANDLE;
	int r;

	*ret = NULL;
	k = calloc(1, sizeof(*k));
	if (k == NULL)
		return err_nomem();
	k->priv = CK_INVALID_HANDLE;
	if ((r = key_names(ctx, s, o, k, &label, &label_len)) < 0)
		goto out;
	if (cls != CKO_CERTIFICATE &&
	    (r = tok_attr_fixed(ctx, s, o, CKA_KEY_TYPE, &kt, sizeof(kt))) < 0)
		goto out;
	if (cls == CKO_PRIVATE_KEY && (r = key_private(ctx, s, o, k)) != 0)
		goto out;
	if ((r = key_peers(ctx, s, o, cls, k, &pubo, &certo)) < 0 ||
	    (r = key_pubkey(ctx, s, k, kt, pubo, certo)) != 0 || (r = key_kind(ctx, k, kt)) != 0 ||
	    (r = key_uri(ctx, k, label, label_len)) < 0)
		goto out;
	*ret = k;
	k = NULL;
out:
	free(label);
	tok_key_free(k);
	return r == KEY_SKIP ? 0 : r;
}

/* A growing list of keys (the context's, or a rescan's fresh one). */
static int list_add(tok_key ***keys, size_t *n, tok_key *k)
{
	tok_key **nv = realloc(*keys, (*n + 1) * sizeof(*nv));

	if (nv == NULL)
		return err_nomem();
	*keys = nv;
	(*keys)[(*n)++] = k;
	return 0;
}

static void list_free(tok_key **keys, size_t n)
{
	for (size_t i = 0; i < n; i++)
		tok_key_free(keys[i]);
	free(keys);
}

static bool id_known(tok_key *const *keys, size_t n, const uint8_t *id, size_t id_len)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (keys[i]->id_len == id_len && id_len > 0 && memcmp(keys[i]->id, id, id_len) == 0)
			return true;
	return false;
}

/* The URI's object= and id=, kept for tok_rescan(): it must select the
 * same keys as tok_open() did. */
static int filter_save(tok_ctx *ctx, P11KitUri *uri)
{
	CK_ATTRIBUTE *ua;

	if ((ua = p11_kit_uri_get_attribute(uri, CKA_LABEL)) != NULL) {
		if ((ctx->filt_label = malloc(ua->ulValueLen + 1)) == NULL)
			return err_nomem();
		memcpy(ctx->filt_label, ua->pValue, ua->ulValueLen);
		ctx->filt_label_len = ua->ulValueLen;
		ctx->filt_label_set = true;
	}
	if ((ua = p11_kit_uri_get_attribute(uri, CKA_ID)) != NULL) {
		if ((ctx->filt_id = malloc(ua->ulValueLen + 1)) == NULL)
			return err_nomem();
		memcpy(ctx->filt_id, ua->pValue, ua->ulValueLen);
		ctx->filt_id_len = ua->ulValueLen;
		ctx->filt_id_set = true;
	}
	return 0;
}

/* Every key on the token that the saved filter selects, freshly loaded. */
static int enumerate_into(tok_ctx *ctx, CK_SESSION_HANDLE s, bool public_only, tok_key ***ret,
                          size_t *ret_n)
{
	/* With no_login the private keys are invisible; the public halves
	 * (then certificates with no public key object) stand in for them. */
	static const CK_OBJECT_CLASS with_login[] = {CKO_PRIVATE_KEY};
	static const CK_OBJECT_CLASS without[] = {CKO_PUBLIC_KEY, CKO_CERTIFICATE};
	const CK_OBJECT_CLASS *classes = public_only ? without : with_login;
	size_t nclasses = public_only ? 2 : 1, c, i;
	CK_ATTRIBUTE tmpl[4];
	CK_BBOOL yes = CK_TRUE;
	CK_OBJECT_CLASS cls;
	CK_OBJECT_HANDLE *v = NULL;
	tok_key **keys = NULL;
	size_t nv = 0, n = 0;
	int r = 0;

	for (c = 0; c < nclasses; c++) {
		CK_ULONG nt = 0;

		cls = classes[c];
		tmpl[nt++] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
		if (cls == CKO_PRIVATE_KEY)
			tmpl[nt++] = (CK_ATTRIBUTE){CKA_SIGN, &yes, sizeof(yes)};
		/* The URI's type= is ignored: object=/id= name the key pair. */
		if (ctx->filt_label_set)
			tmpl[nt++] = (CK_ATTRIBUTE){CKA_LABEL, ctx->filt_label, ctx->filt_label_len};
		if (ctx->filt_id_set)
			tmpl[nt++] = (CK_ATTRIBUTE){CKA_ID, ctx->filt_id, ctx->filt_id_len};
		free(v);
		v = NULL;
		r = tok_objects_find(ctx, s, tmpl, nt, &v, &nv);
		if (r < 0)
			goto out;
		for (i = 0; i < nv; i++) {
			tok_key *k = NULL;

			r = key_load(ctx, s, v[i], cls, &k);
			if (r < 0)
				goto out;
			if (k == NULL)
				continue;
			if (public_only && id_known(keys, n, k->id, k->id_len)) {
				tok_key_free(k);
				continue;
			}
			r = list_add(&keys, &n, k);
			if (r < 0) {
				tok_key_free(k);
				goto out;
			}
		}
	}
out:
	free(v);
	if (r < 0) {
		list_free(keys, n);
		return r;
	}
	*ret = keys;
	*ret_n = n;
	return 0;
}

int tok_keys_enumerate(tok_ctx *ctx, P11KitUri *uri, CK_SESSION_HANDLE s, bool public_only)
{
	int r;

	if (!ctx->keys_mu_ok) {
		if (pthread_mutex_init(&ctx->keys_mu, NULL) != 0)
			return err_set(P11J_E_SYSTEM, "cannot create the key list lock");
		ctx->keys_mu_ok = true;
	}
	if ((r = filter_save(ctx, uri)) < 0)
		return r;
	return enumerate_into(ctx, s, public_only, &ctx->keys, &ctx->nkeys);
}

/* The same key pair as before: label, CKA_ID and public key. */
static bool key_same(const tok_key *a, const tok_key *b)
{
	return strcmp(a->name, b->name) == 0 && a->id_len == b->id_len &&
	       (a->id_len == 0 || memcmp(a->id, b->id, a->id_len) == 0) &&
	       EVP_PKEY_eq(a->pub, b->pub) == 1;
}

bool tok_key_gone(const tok_key *k)
{
	return __atomic_load_n(&k->gone, __ATOMIC_ACQUIRE);
}

/* Held shared, op_lock keeps login, lock and recovery (which rewrite the
 * handles) out while signatures go on; keys_mu keeps readers of the list
 * out while it changes. A known key keeps its tok_key, whose address
 * requests hold; only its certificate may be replaced (cert --store),
 * which nothing but a keyring build (the caller's thread) reads. */
int tok_rescan(tok_ctx *ctx, size_t *ret_added, size_t *ret_removed)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	tok_key **fresh = NULL;
	size_t nfresh = 0, added = 0, removed = 0, i, j;
	bool *matched = NULL;
	tok_state st;
	int r;

	if (ret_added)
		*ret_added = 0;
	if (ret_removed)
		*ret_removed = 0;
	pthread_rwlock_rdlock(&ctx->op_lock);
	st = tok_get_state(ctx);
	if (st == TOK_UNAVAILABLE) {
		r = err_set(P11J_E_TOKEN_UNAVAILABLE, "token '%s' is unavailable; its keys were not "
		            "listed again", ctx->label);
		goto out;
	}
	if ((r = tok_pool_get(ctx, &s)) < 0)
		goto out;
	r = enumerate_into(ctx, s, ctx->no_login || st == TOK_LOCKED, &fresh, &nfresh);
	if (r == P11J_E_TOKEN_UNAVAILABLE)
		tok_pool_drop(ctx, s);
	else
		tok_pool_put(ctx, s);
	if (r < 0)
		goto out;
	matched = calloc(nfresh + 1, sizeof(*matched));
	if (matched == NULL) {
		r = err_nomem();
		goto out;
	}
	pthread_mutex_lock(&ctx->keys_mu);
	for (i = 0; i < ctx->nkeys; i++) {
		tok_key *k = ctx->keys[i];
		bool found = false;

		if (k->gone)
			continue;
		for (j = 0; j < nfresh && !found; j++) {
			if (matched[j] || !key_same(k, fresh[j]))
				continue;
			matched[j] = found = true;
			if (fresh[j]->cert_len != k->cert_len ||
			    (k->cert_len && memcmp(fresh[j]->cert, k->cert, k->cert_len) != 0)) {
				uint8_t *old = k->cert;

				k->cert = fresh[j]->cert;
				k->cert_len = fresh[j]->cert_len;
				fresh[j]->cert = old;
			}
		}
		if (!found) {
			__atomic_store_n(&k->gone, true, __ATOMIC_RELEASE);
			removed++;
			tok_log(ctx, TOK_LOG_INFO, "key '%s' is no longer on token '%s'", k->name,
			        ctx->label);
		}
	}
	for (j = 0; j < nfresh; j++) {
		if (matched[j])
			continue;
		if ((r = list_add(&ctx->keys, &ctx->nkeys, fresh[j])) < 0)
			break;
		tok_log(ctx, TOK_LOG_INFO, "key '%s' is new on token '%s'", fresh[j]->name,
		        ctx->label);
		fresh[j] = NULL;
		added++;
	}
	pthread_mutex_unlock(&ctx->keys_mu);
	if (ret_added)
		*ret_added = added;
	if (ret_removed)
		*ret_removed = removed;
out:
	pthread_rwlock_unlock(&ctx->op_lock);
	list_free(fresh, nfresh);
	free(matched);
	return r;
}

/* The private key of a key listed while locked, or listed before the token
 * went away: found again by CKA_ID (else label), since object handles are
 * valid for one session and login only. The same safety checks as at open
 * apply: the key stays unusable (priv invalid) if they fail. */
static int key_resolve(tok_ctx *ctx, CK_SESSION_HANDLE s, tok_key *k)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_BBOOL yes = CK_TRUE, always = CK_FALSE;
	CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
	CK_ATTRIBUTE tmpl[3] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_SIGN, &yes, sizeof(yes)}};
	CK_OBJECT_HANDLE *v = NULL, o;
	const char *why = NULL;
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
	    (r = priv_unsafe(ctx, s, o, &why)) < 0 ||
	    (r = tok_attr_fixed(ctx, s, o, CKA_ALWAYS_AUTHENTICATE, &always, 1)) < 0)
		goto out;
	if (type_mismatch(kt, k->kind)) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "key '%s': the private key's type does not match its public key", k->name);
		goto out;
	}
	k->unsafe = why != NULL;
	if (unsafe_refused(ctx, k, why, "not signing with key"))
		goto out;
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
		if (!ctx->keys[i]->gone && (r = key_resolve(ctx, s, ctx->keys[i])) < 0)
			return r;
	return 0;
}

void tok_keys_forget(tok_ctx *ctx)
{
	size_t i;

	for (i = 0; i < ctx->nkeys; i++)
		ctx->keys[i]->priv = CK_INVALID_HANDLE;
}

void tok_keys_free(tok_ctx *ctx)
{
	list_free(ctx->keys, ctx->nkeys);
	ctx->keys = NULL;
	ctx->nkeys = 0;
	free(ctx->filt_label);
	free(ctx->filt_id);
	ctx->filt_label = ctx->filt_id = NULL;
	if (ctx->keys_mu_ok)
		pthread_mutex_destroy(&ctx->keys_mu);
	ctx->keys_mu_ok = false;
}

/* The list without its gone keys. Indices are stable while no rescan runs
 * (the caller serialises rescans and walks). */
size_t tok_key_count(const tok_ctx *ctx)
{
	tok_ctx *c = (tok_ctx *)ctx;
	size_t i, n = 0;

	if (c->keys_mu_ok)
		pthread_mutex_lock(&c->keys_mu);
	for (i = 0; i < c->nkeys; i++)
		n += !c->keys[i]->gone;
	if (c->keys_mu_ok)
		pthread_mutex_unlock(&c->keys_mu);
	return n;
}

const tok_key *tok_key_at(const tok_ctx *ctx, size_t i)
{
	tok_ctx *c = (tok_ctx *)ctx;
	const tok_key *k = NULL;

	if (c->keys_mu_ok)
		pthread_mutex_lock(&c->keys_mu);
	for (size_t j = 0; j < c->nkeys && k == NULL; j++)
		if (!c->keys[j]->gone && i-- == 0)
			k = c->keys[j];
	if (c->keys_mu_ok)
		pthread_mutex_unlock(&c->keys_mu);
	return k;
}

const tok_key *tok_key_find(const tok_ctx *ctx, const char *name)
{
	tok_ctx *c = (tok_ctx *)ctx;
	const tok_key *k = NULL;

	if (name == NULL)
		return NULL;
	if (c->keys_mu_ok)
		pthread_mutex_lock(&c->keys_mu);
	for (size_t i = 0; i < c->nkeys && k == NULL; i++)
		if (!c->keys[i]->gone && strcmp(c->keys[i]->name, name) == 0)
			k = c->keys[i];
	if (c->keys_mu_ok)
		pthread_mutex_unlock(&c->keys_mu);
	return k;
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
