/* SPDX-License-Identifier: MIT */
/*
 * Provider presets: one row of data per provider, as ../shared/providers.md
 * (and docs/providers/) describes it. No provider has code of its own; the
 * exchange reads these rows. Every value can be overridden by a profile or
 * an option.
 */
#ifndef P11J_PRESET_H
#define P11J_PRESET_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
	PRESET_CLIENT_ASSERTION, /* client_credentials + client_assertion */
	PRESET_JWT_BEARER,       /* grant_type=...:jwt-bearer + assertion */
	PRESET_CUSTOM,           /* the form rows say it all (Adobe) */
	PRESET_NO_EXCHANGE,      /* the JWT is the bearer token (Oracle) */
} preset_grant;

typedef enum {
	AUD_TOKEN_URL, /* the token URL itself */
	AUD_HOST,      /* bare host of the token URL (DocuSign) */
	AUD_ORIGIN,    /* scheme://host of the token URL (Salesforce) */
	AUD_TEMPLATE,  /* aud_tmpl expanded (Adobe) */
	AUD_NONE,      /* no aud unless given (Oracle) */
} preset_aud;

typedef enum {
	SCOPE_FORM,      /* a "scope" form field (from the form rows) */
	SCOPE_CLAIM,     /* a "scope" claim (Google, DocuSign) */
	SCOPE_METASCOPE, /* one claim PREFIX<scope>: true per word (Adobe) */
} preset_scope;

typedef struct {
	const char *name;
	const char *provider;
	/* The algs the provider accepts, space-separated, in the order p11jwt
	 * prefers them: without --alg a key signs with the first it can (the
	 * first is the RSA default). NULL: any, and the key's own default. */
	const char *algs;
	preset_grant grant;
	const char *token_url; /* default, or NULL */
	preset_aud aud;
	const char *aud_tmpl;
	const char *iss; /* template */
	const char *sub; /* template, or NULL: only --sub */
	bool sub_required;
	preset_scope scope;
	const char *scope_default;
	const char *metascope_prefix;
	int lifetime, max_lifetime;
	bool require_kid;
	bool nbf;             /* send nbf = now */
	bool secret_required; /* the form carries a client secret */
	const char *header;   /* JSON object merged into the header */
	const char *claims;   /* JSON object template merged into the claims */
	const char *include;  /* agent "include": x5t or x5t#S256, or NULL */
	bool dpop;            /* DPoP proofs on by default (--no-dpop turns them off) */
	const char *const *form; /* "name=template" rows, NULL-terminated */
} preset;

/* The rows of a grant (client_credentials / jwt-bearer) used when --grant
 * replaces the preset's own grant. */
extern const char *const preset_form_client_credentials[];
extern const char *const preset_form_jwt_bearer[];

/* The preset called name, or NULL. */
const preset *preset_find(const char *name);
/* All presets, for help and listings. */
const preset *preset_all(size_t *ret_n);

#define ASSERTION_TYPE_JWT "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#define GRANT_TYPE_JWT_BEARER "urn:ietf:params:oauth:grant-type:jwt-bearer"

#endif
