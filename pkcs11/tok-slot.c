/* SPDX-License-Identifier: MIT */
/* Finding the token: by RFC 7512 URI at open, by its identity again after
 * a reconnect, and whether a URI selects it. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

static void trim_padded(char *dst, const unsigned char *src, size_t n)
{
	while (n > 0 && (src[n - 1] == ' ' || src[n - 1] == '\0'))
		n--;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* "'a', 'b'": the first 8 tokens seen, for the message when none matches. */
static void seen_add(char *seen, size_t size, size_t *nseen, const char *lbl)
{
	if (*nseen < 8 && strlen(seen) + strlen(lbl) + 5 < size) {
		if (*nseen > 0)
			strcat(seen, ", ");
		strcat(seen, "'");
		strcat(seen, lbl);
		strcat(seen, "'");
	}
	(*nseen)++;
}

int tok_slot_find(tok_ctx *ctx, P11KitUri *uri, const char *uri_shown)
{
	char seen[256] = "";
	size_t nseen = 0, i;
	CK_SLOT_ID want_slot = (CK_SLOT_ID)p11_kit_uri_get_slot_id(uri);
	CK_SLOT_ID *slots = NULL;
	int r = 0;

	for (i = 0; ctx->mods[i] != NULL; i++) {
		CK_FUNCTION_LIST *m = ctx->mods[i];
		CK_INFO info;
		CK_ULONG ns = 0, j;
		CK_RV rv;

		if (ctx->state[i] == MOD_SKIPPED)
			continue;
		if (m->C_GetInfo(&info) != CKR_OK || !p11_kit_uri_match_module_info(uri, &info))
			continue;
		rv = m->C_GetSlotList(CK_TRUE, NULL, &ns);
		if (rv != CKR_OK || ns == 0)
			continue;
		free(slots);
		slots = calloc(ns, sizeof(*slots));
		if (slots == NULL) {
			r = err_nomem();
			goto out;
		}
		if (m->C_GetSlotList(CK_TRUE, slots, &ns) != CKR_OK)
			continue;
		for (j = 0; j < ns; j++) {
			CK_SLOT_INFO si;
			CK_TOKEN_INFO ti;
			char lbl[sizeof(ti.label) + 1];

			if (want_slot != (CK_SLOT_ID)-1 && slots[j] != want_slot)
				continue;
			if (m->C_GetSlotInfo(slots[j], &si) != CKR_OK ||
			    !p11_kit_uri_match_slot_info(uri, &si))
				continue;
			if (m->C_GetTokenInfo(slots[j], &ti) != CKR_OK)
				continue;
			if (!(ti.flags & CKF_TOKEN_INITIALIZED))
				continue;
			trim_padded(lbl, ti.label, sizeof(ti.label));
			seen_add(seen, sizeof(seen), &nseen, lbl);
			if (!p11_kit_uri_match_token_info(uri, &ti))
				continue;
			ctx->f = m;
			ctx->mod_idx = i;
			ctx->slot = slots[j];
			ctx->ti = ti;
			memcpy(ctx->label, lbl, sizeof(lbl));
			goto out;
		}
	}
	r = err_set(P11J_E_NOT_FOUND, "no initialised token matches '%s' (tokens seen: %s)",
	            uri_shown, nseen ? seen : "none");
out:
	free(slots);
	return r;
}

/* The same token (label, manufacturer, model, serial) again: after a
 * reconnect it may sit in another slot. 1 found, 0 not present. */
int tok_slot_refind(tok_ctx *ctx)
{
	CK_SLOT_ID *slots = NULL;
	CK_ULONG ns = 0, j;
	CK_RV rv;
	int r = 0;

	rv = ctx->f->C_GetSlotList(CK_TRUE, NULL, &ns);
	if (rv == CKR_OK && ns > 0) {
		slots = calloc(ns, sizeof(*slots));
		if (slots == NULL)
			return err_nomem();
		rv = ctx->f->C_GetSlotList(CK_TRUE, slots, &ns);
	}
	if (rv != CKR_OK) {
		r = tok_ck(ctx, "C_GetSlotList", rv);
		goto out;
	}
	for (j = 0; j < ns; j++) {
		CK_TOKEN_INFO ti;

		if (ctx->f->C_GetTokenInfo(slots[j], &ti) != CKR_OK)
			continue;
		if (memcmp(ti.label, ctx->ti.label, sizeof(ti.label)) == 0 &&
		    memcmp(ti.serialNumber, ctx->ti.serialNumber, sizeof(ti.serialNumber)) == 0 &&
		    memcmp(ti.manufacturerID, ctx->ti.manufacturerID, sizeof(ti.manufacturerID)) ==
		        0 &&
		    memcmp(ti.model, ctx->ti.model, sizeof(ti.model)) == 0) {
			ctx->slot = slots[j];
			ctx->ti.flags = ti.flags;
			r = 1;
			goto out;
		}
	}
out:
	free(slots);
	return r;
}

bool tok_matches(const tok_ctx *ctx, const char *uri)
{
	P11KitUri *u;
	bool ok;

	if (uri == NULL || uri[0] == '\0')
		return true;
	u = p11_kit_uri_new();
	if (u == NULL)
		return false;
	ok = p11_kit_uri_parse(uri, P11_KIT_URI_FOR_TOKEN, u) == P11_KIT_URI_OK &&
	     p11_kit_uri_match_token_info(u, &ctx->ti);
	p11_kit_uri_free(u);
	return ok;
}
