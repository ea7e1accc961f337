/* SPDX-License-Identifier: MIT */
/* Reading object attributes and searching objects. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"

#include <stdlib.h>

#include <p11-kit/pkcs11.h>

/* Variable-length attribute into a fresh buffer (NUL-terminated for
 * convenience). Absent or unreadable: *ret NULL, *ret_len 0, returns 0. */
int tok_attr_get(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                 size_t max, uint8_t **ret, size_t *ret_len)
{
	CK_ATTRIBUTE a = {t, NULL, 0};
	uint8_t *buf = NULL;
	CK_RV rv;

	*ret = NULL;
	*ret_len = 0;
	rv = ctx->f->C_GetAttributeValue(s, o, &a, 1);
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE ||
	    a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
		return 0;
	if (rv != CKR_OK)
		return tok_ck(ctx, "C_GetAttributeValue", rv);
	if (a.ulValueLen > max)
		return err_set(P11J_E_PKCS11, "attribute 0x%lx on token '%s' is over %zu bytes",
		               (unsigned long)t, ctx->label, max);
	buf = calloc(1, a.ulValueLen + 1);
	if (buf == NULL)
		return err_nomem();
	a.pValue = buf;
	rv = ctx->f->C_GetAttributeValue(s, o, &a, 1);
	if (rv != CKR_OK) {
		free(buf);
		return tok_ck(ctx, "C_GetAttributeValue", rv);
	}
	*ret = buf;
	*ret_len = a.ulValueLen;
	return 0;
}

/* Fixed-size attribute; returns 1 if read, 0 if absent. */
int tok_attr_fixed(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                   void *val, size_t len)
{
	CK_ATTRIBUTE a = {t, val, len};
	CK_RV rv;

	rv = ctx->f->C_GetAttributeValue(s, o, &a, 1);
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE ||
	    a.ulValueLen != len)
		return 0;
	if (rv != CKR_OK)
		return tok_ck(ctx, "C_GetAttributeValue", rv);
	return 1;
}

int tok_objects_find(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                     CK_OBJECT_HANDLE **ret, size_t *ret_n)
{
	CK_OBJECT_HANDLE *v = NULL, *nv;
	size_t cnt = 0, cap = 0;
	CK_ULONG got;
	CK_RV rv;
	int r = 0;

	rv = ctx->f->C_FindObjectsInit(s, tmpl, n);
	if (rv != CKR_OK)
		return tok_ck(ctx, "C_FindObjectsInit", rv);
	for (;;) {
		if (cnt == cap) {
			if (cap >= TOK_FIND_MAX) {
				r = err_set(P11J_E_PKCS11,
				            "more than %d matching objects on token '%s'",
				            TOK_FIND_MAX, ctx->label);
				goto out;
			}
			cap = cap ? cap * 2 : 16;
			nv = realloc(v, cap * sizeof(*v));
			if (nv == NULL) {
				r = err_nomem();
				goto out;
			}
			v = nv;
		}
		got = 0;
		rv = ctx->f->C_FindObjects(s, v + cnt, cap - cnt, &got);
		if (rv != CKR_OK) {
			r = tok_ck(ctx, "C_FindObjects", rv);
			goto out;
		}
		if (got == 0)
			break;
		cnt += got;
	}
out:
	ctx->f->C_FindObjectsFinal(s);
	if (r < 0) {
		free(v);
		return r;
	}
	*ret = v;
	*ret_n = cnt;
	return 0;
}
