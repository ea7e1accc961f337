/* SPDX-License-Identifier: MIT */
/* The presets. Sources for every value: ../shared/providers.md, checked
 * against each provider's own documentation (each page under docs/providers/ cites it).
 * Lifetimes stay under each provider's limit by a margin for clock skew.
 * The first of .algs is the RSA default; the order after it is the order in
 * which other key types are tried. */
#include "cli/preset.h"
#include "common/util.h"

#include <string.h>

#define ROW_CA_TYPE "client_assertion_type=" ASSERTION_TYPE_JWT
#define ROW_CA "client_assertion=${assertion}"

const char *const preset_form_client_credentials[] = {
	"grant_type=client_credentials", "scope=${scope}", ROW_CA_TYPE, ROW_CA, NULL,
};

const char *const preset_form_jwt_bearer[] = {
	"grant_type=" GRANT_TYPE_JWT_BEARER, "assertion=${assertion}", "scope=${scope}", NULL,
};

static const char *const form_entra[] = {
	"client_id=${client_id}", "scope=${scope}", ROW_CA_TYPE, ROW_CA,
	"grant_type=client_credentials", NULL,
};

static const char *const form_adobe[] = {
	"client_id=${client_id}", "client_secret=${client_secret}", "jwt_token=${assertion}", NULL,
};

/* jwt-bearer grants whose scope travels in the assertion */
static const char *const form_jwt_bearer_noscope[] = {
	"grant_type=" GRANT_TYPE_JWT_BEARER, "assertion=${assertion}", NULL,
};

static const char *const form_none[] = { NULL };

static const preset presets[] = {
	{
		.name = "nhs",
		.provider = "NHS England API platform (signed JWT, application-restricted)",
		.algs = "RS512",
		.grant = PRESET_CLIENT_ASSERTION,
		.aud = AUD_TOKEN_URL,
		.iss = "${client_id}",
		.sub = "${client_id}",
		.scope = SCOPE_FORM,
		.lifetime = 240,
		.max_lifetime = 300,
		.require_kid = true,
		.header = "{\"typ\":\"JWT\"}",
		.form = preset_form_client_credentials,
	},
	{
		.name = "smart",
		.provider = "HL7 FHIR SMART Backend Services",
		.algs = "RS384 ES384",
		.grant = PRESET_CLIENT_ASSERTION,
		.aud = AUD_TOKEN_URL,
		.iss = "${client_id}",
		.sub = "${client_id}",
		.scope = SCOPE_FORM,
		.lifetime = 240,
		.max_lifetime = 300,
		.require_kid = true,
		.header = "{\"typ\":\"JWT\"}",
		.form = preset_form_client_credentials,
	},
	{
		.name = "entra",
		.provider = "Microsoft Entra ID (certificate credential)",
		.algs = "PS256 RS256",
		.grant = PRESET_CLIENT_ASSERTION,
		.aud = AUD_TOKEN_URL,
		.iss = "${client_id}",
		.sub = "${client_id}",
		.scope = SCOPE_FORM,
		.scope_default = "https://graph.microsoft.com/.default",
		.lifetime = 300,
		.max_lifetime = 600,
		.nbf = true,
		.header = "{\"typ\":\"JWT\"}",
		.include = "x5t#S256",
		.form = form_entra,
	},
	{
		.name = "okta",
		.provider = "Okta (private_key_jwt)",
		.algs = "RS256 RS384 RS512 ES256 ES384 ES512",
		.grant = PRESET_CLIENT_ASSERTION,
		.aud = AUD_TOKEN_URL,
		.iss = "${client_id}",
		.sub = "${client_id}",
		.scope = SCOPE_FORM,
		.lifetime = 300,
		.max_lifetime = 3600,
		.require_kid = true,
		/* new API service apps require DPoP, with a nonce (docs/providers/okta.md) */
		.dpop = true,
		.form = preset_form_client_credentials,
	},
	{
		.name = "docusign",
		.provider = "DocuSign JWT Grant (user assertion)",
		.algs = "RS256",
		.grant = PRESET_JWT_BEARER,
		.token_url = "https://account-d.docusign.com/oauth/token",
		.aud = AUD_HOST,
		.iss = "${client_id}",
		.scope = SCOPE_CLAIM,
		.scope_default = "signature impersonation",
		.lifetime = 600,
		.max_lifetime = 3600,
		.form = form_jwt_bearer_noscope,
	},
	{
		.name = "adobe",
		.provider = "Adobe IMS service account JWT",
		.algs = "RS256",
		.grant = PRESET_CUSTOM,
		.token_url = "https://ims-na1.adobelogin.com/ims/exchange/jwt",
		.aud = AUD_TEMPLATE,
		.aud_tmpl = "${origin}/c/${client_id}",
		.sub_required = true, /* {id}@techacct.adobe.com; iss is {org}@AdobeOrg */
		.scope = SCOPE_METASCOPE,
		.metascope_prefix = "https://ims-na1.adobelogin.com/s/",
		.lifetime = 600,
		.max_lifetime = 86400,
		.secret_required = true,
		.form = form_adobe,
	},
	{
		.name = "google",
		.provider = "Google service account",
		.algs = "RS256",
		.grant = PRESET_JWT_BEARER,
		.token_url = "https://oauth2.googleapis.com/token",
		.aud = AUD_TOKEN_URL,
		.iss = "${client_id}",
		.scope = SCOPE_CLAIM,
		.lifetime = 600,
		.max_lifetime = 3600,
		.header = "{\"typ\":\"JWT\"}",
		.form = form_jwt_bearer_noscope,
	},
	{
		.name = "salesforce",
		.provider = "Salesforce JWT bearer flow",
		.algs = "RS256",
		.grant = PRESET_JWT_BEARER,
		.token_url = "https://login.salesforce.com/services/oauth2/token",
		.aud = AUD_ORIGIN,
		.iss = "${client_id}",
		.sub_required = true,
		.scope = SCOPE_FORM,
		.lifetime = 170,
		.max_lifetime = 180,
		.form = preset_form_jwt_bearer,
	},
	{
		.name = "oracle",
		.provider = "Oracle Fusion / Engagement Cloud bearer JWT (no exchange)",
		.algs = "RS256",
		.grant = PRESET_NO_EXCHANGE,
		.aud = AUD_NONE,
		.iss = "www.oracle.com",
		.sub_required = true,
		.scope = SCOPE_CLAIM,
		.lifetime = 300,
		.header = "{\"typ\":\"JWT\"}",
		.claims = "{\"prn\":\"${sub}\"}",
		.include = "x5t",
		.form = form_none,
	},
	{
		.name = "client-assertion",
		.provider = "any OAuth server with private_key_jwt (RFC 7523 client authentication)",
		.grant = PRESET_CLIENT_ASSERTION,
		.aud = AUD_TOKEN_URL,
		.iss = "${client_id}",
		.sub = "${client_id}",
		.scope = SCOPE_FORM,
		.lifetime = 300,
		.form = preset_form_client_credentials,
	},
	{
		.name = "jwt-bearer",
		.provider = "any OAuth server with the JWT bearer grant (RFC 7523 section 2.1)",
		.grant = PRESET_JWT_BEARER,
		.aud = AUD_TOKEN_URL,
		.iss = "${client_id}",
		.sub_required = true,
		.scope = SCOPE_FORM,
		.lifetime = 300,
		.form = preset_form_jwt_bearer,
	},
};

const preset *preset_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(presets); i++)
		if (strcmp(presets[i].name, name) == 0)
			return &presets[i];
	return NULL;
}

const preset *preset_all(size_t *ret_n)
{
	*ret_n = ARRAY_SIZE(presets);
	return presets;
}
