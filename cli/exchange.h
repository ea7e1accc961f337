/* SPDX-License-Identifier: MIT */
/*
 * The token exchange without I/O: options (preset < profile < command
 * line) resolved into the assertion to ask the agent for and the form to
 * post; the cache key; the token endpoint's answer parsed; hints for
 * well-known errors. cmd_token.c does the talking.
 */
#ifndef P11J_EXCHANGE_H
#define P11J_EXCHANGE_H

#include "cli/form.h"
#include "cli/preset.h"

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

#define XCH_DEFAULT_MARGIN 60 /* seconds before expiry a cached token is dropped */
#define XCH_DEFAULT_TIMEOUT 30

/* Options, as one JSON object whose members are the profile members
 * (docs/providers/README.md, p11jwt-profile(5)): strings preset, key, alg,
 * client_id, token_url, aud, iss, sub, scope, header_file, claims_file,
 * assertion_field, grant, client_secret_file, cacert, socket; integers
 * lifetime, timeout; objects header, claims, form (a null form value removes
 * that field); arrays include and algs (JWS alg names, at least one);
 * boolean dpop and string dpop_key (DPoP, RFC 9449: docs/dpop.md).
 * Returns P11J_E_BAD_REQUEST naming `where` and the member for anything
 * unknown or of the wrong type. */
int xch_check_options(const json_t *o, const char *where);

/* A profile: NAME (from $XDG_CONFIG_HOME/p11jwt/profiles/NAME.json, else
 * ~/.config/...) or a path (anything with a '/' or ending in ".json").
 * Relative *_file members are made relative to the profile's directory and
 * ${client_id}, ${token_url}, ${env:NAME} are expanded in string values. */
int xch_load_profile(const char *name_or_path, json_t **ret);

typedef struct {
	const preset *preset;
	bool exchange; /* false: the JWT itself is the token (no HTTP) */
	char *key;
	/* The alg to sign with. xch_resolve() sets the one given (--alg, the
	 * profile's alg), else the first of algs, else NULL (the key's default);
	 * xch_choose_alg() then replaces the first of algs with the first the
	 * key signs. */
	char *alg;
	char *algs;       /* accepted algs, space-separated (the profile's, else
			   * the preset's), or NULL for any */
	bool algs_profile; /* algs came from the profile */
	bool alg_given;    /* alg came from --alg or the profile's alg */
	bool alg_checked;  /* xch_choose_alg() has run */
	char *alg_reason;  /* why alg is what it is, e.g. "ES384: first of smart's
			    * RS384, ES384 that key 'ec-p384' signs" */
	char *client_id, *token_url, *iss, *sub, *aud, *scope;
	char *cacert, *socket;
	const char *agent_uid; /* --agent-uid, not owned; never from a profile */
	json_t *agent_keys;    /* the agent's "keys" list, asked once per run
				* (tkn_agent_keys()); freed by xch_req_clear */
	long long lifetime;
	long timeout;
	json_t *header, *claims, *include; /* for the agent's sign request */
	form form;             /* the form; the assertion field is empty */
	char *assertion_field; /* name of the form field taking the JWT */
	char *secret_field;    /* name of the field holding the secret, or NULL */
	char *client_secret;   /* wiped by xch_req_clear */
	json_t *warnings;      /* array of strings: what the provider will reject */
	/* DPoP (RFC 9449): proofs on every token request and API call, made by
	 * dpop_key (the --dpop-key, else key). dpop is the option's value
	 * (command line, then profile), else true when a dpop_key is given,
	 * else the preset's. */
	bool dpop;
	bool dpop_preset; /* dpop is the preset's default, not asked for */
	char *dpop_key;
	/* The proof key's RFC 7638 thumbprint, from the agent's key list
	 * (tkn_dpop_bind()): the token's binding, part of the cache key. */
	char *dpop_jkt;
} xch_req;

/* Resolve profile (may be NULL) and cli (options given on the command line,
 * same members) into req. client_secret is the secret read by the caller
 * (from --client-secret-file, the profile's file or P11JWT_CLIENT_SECRET),
 * or NULL; it is copied. now is the clock for nbf. */
int xch_resolve(const json_t *profile, const json_t *cli, const char *client_secret,
		int64_t now, xch_req *req);
void xch_req_clear(xch_req *req);

/* A key named by its role in a rotation: "@active" or "@next" (--key,
 * profiles, presets). The one key of the agent's "keys" answer in that
 * state (keys without a state, from an older agent, count as active) into
 * *ret_name (malloc'd). P11J_E_NOT_FOUND when no key is, P11J_E_BAD_REQUEST
 * when several are (naming them) or for another role. */
static inline bool xch_is_role(const char *name)
{
	return name != NULL && name[0] == '@';
}
int xch_key_role(const json_t *keys, const char *role, char **ret_name);

/* True when the alg depends on the key and is not chosen yet: none was
 * given, there is a list of accepted algs, and xch_choose_alg() has not
 * run. Then ask the agent for its keys (op "keys") and call
 * xch_choose_alg() before signing. */
bool xch_alg_needs_key(const xch_req *req);

/* The first of algs (space-separated, in preference order) that key signs,
 * by the agent's "keys" answer (its "algs", already limited by the key's
 * policy). who names the list in messages ("preset 'smart'", "the
 * profile"); owner says whose list it is in the reason ("smart's", "the
 * profile's"). 0 with *ret_alg and *ret_reason (both malloc'd); 0 with both
 * NULL when keys does not list the key or its algs (the agent's own answer
 * to the sign request will say why); P11J_E_UNSUPPORTED_ALG when the key
 * signs none of them: "preset 'nhs' accepts RS512 only; key 'ec-p256' is
 * P-256 (it signs ES256) ...". */
int xch_pick_alg(const char *algs, const char *who, const char *owner, const char *key,
		 const json_t *keys, char **ret_alg, char **ret_reason);

/* xch_pick_alg() for req (its algs, preset or profile): sets req->alg and
 * req->alg_reason, and req->alg_checked. keys is the agent's "keys" array.
 * A no-op when !xch_alg_needs_key(req). */
int xch_choose_alg(xch_req *req, const json_t *keys);

/* The token URL is https, or http to a loopback host (see http_check_url).
 * Not done by xch_resolve(), so that a cache hit needs no URL parser: call
 * it before any request and in dry runs. */
int xch_check_url(const xch_req *req);

/* The agent request for the assertion ({"op":"sign",...}). */
int xch_sign_request(const xch_req *req, json_t **ret);

/* The refresh form: grant_type=refresh_token, refresh_token, and the
 * client authentication fields of req->form (client_id, client_secret,
 * client_assertion_type and the assertion field for client assertions),
 * or client_id when there are none. needs_assertion says whether a fresh
 * assertion goes into *assertion_field. */
int xch_refresh_form(const xch_req *req, const char *refresh_token, form *ret,
		     bool *needs_assertion);

/* Cache key: lowercase hex SHA-256 over the token URL, client id, key, alg,
 * iss, sub, aud, scope and the form without the assertion and the secret,
 * and for DPoP the proof key's thumbprint (req->dpop_jkt, which must be
 * set: P11J_E_INTERNAL otherwise), so that two configurations never share
 * a token and Bearer and DPoP tokens never mix. ret holds 65 bytes.
 * The alg is the one asked for: given, else the first of the accepted list
 * (what xch_resolve() sets, the RSA default), else none; not the one
 * xch_choose_alg() picks, which depends on the key (already in the hash),
 * so that a cache hit needs no agent. */
int xch_cache_key(const xch_req *req, char ret[65]);

typedef struct {
	char *access_token;
	char *token_type;
	char *refresh_token;
	int64_t expires_in; /* -1 when the server did not say */
	json_t *json;       /* the whole answer */
} xch_token;

/* Parse the token endpoint's answer. 0 with *tok for a 2xx JSON object
 * holding a string access_token; P11J_E_OAUTH ("token endpoint said CODE:
 * DESCRIPTION") for an OAuth error object (*ret_error gets the code when
 * ret_error is not NULL); P11J_E_BAD_RESPONSE for anything else (not JSON,
 * not an object, no access_token, bad expires_in, another status). */
int xch_parse_token(long status, const char *body, size_t len, xch_token *tok,
		    char **ret_error);
void xch_token_clear(xch_token *tok);

/* The token type against what was asked for: with req->dpop the answer
 * must say token_type DPoP (RFC 9449 5: a server that ignored the proof
 * issued a bearer token; P11J_E_BAD_RESPONSE saying so); without it, a DPoP
 * token (which could not be used without proofs) is P11J_E_BAD_RESPONSE
 * too. A missing token_type is Bearer. */
int xch_check_token_type(const xch_req *req, const xch_token *tok);

/* A hint for an API's 400/401 answer about DPoP, by its WWW-Authenticate
 * (NULL when none): with a DPoP token, a nonce asked for again after the
 * retry or a refused proof; with a bearer token, a DPoP challenge. */
const char *xch_api_dpop_hint(const xch_req *req, bool dpop, long status,
			      const char *www_authenticate, char *buf, size_t len);

/* Whether an OAuth error is about DPoP: invalid_dpop_proof,
 * use_dpop_nonce, or a description naming DPoP. Then xch_dpop_hint()
 * alone is shown (xch_hint()'s key and replay hints would mislead). */
bool xch_dpop_related(const char *error, const char *description);

/* A hint for an error of the token endpoint (or of a resource, with
 * WWW-Authenticate's error) that is about DPoP, or NULL: invalid_dpop_proof
 * (check the proof's alg against server_algs, the server's
 * dpop_signing_alg_values_supported as a space-separated list, NULL when
 * unknown; the clock), use_dpop_nonce after the retry, and without
 * req->dpop an invalid_grant, invalid_request or invalid_client that may
 * mean the client requires DPoP. proof_alg is the alg the proofs were
 * signed with (NULL when none was made). The string is static or in buf. */
const char *xch_dpop_hint(const xch_req *req, const char *error, const char *description,
			  const char *proof_alg, const char *server_algs, char *buf, size_t len);

/* A hint for an OAuth error from the token endpoint (NULL when none is
 * known), naming what the assertion carried: kid, alg, aud, iat/exp, jti
 * (from the signed JWT's header and claims). The string is static or in
 * buf. */
const char *xch_hint(const xch_req *req, const char *error, const char *description,
		     const json_t *header, const json_t *claims, int64_t now, char *buf,
		     size_t len);

#endif
