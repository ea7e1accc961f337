/* SPDX-License-Identifier: MIT */
/*
 * What p11jwt token, call and the dry runs share (token-opts.c,
 * token-flow.c); the pure exchange is in exchange.h. Exit statuses as in
 * cli.h: functions returning int here return 0 or the exit status, after
 * printing the error once.
 */
#ifndef P11J_TOKEN_H
#define P11J_TOKEN_H

#include "cli/cli.h"
#include "cli/exchange.h"
#include "cli/http.h"
#include "jose/jws.h"

#include <stdbool.h>

typedef struct {
	json_t *cli;      /* options given, as profile members */
	json_t *profile;  /* loaded profile, or NULL */
	bool json, no_cache, dry_run;
	/* call */
	const char *method, *data, *url;
	const char **api_headers;
	size_t n_api_headers;
	const char *agent_uid; /* --agent-uid (a profile cannot set it) */
} topts;

/* token-opts.c: the options of cmd (token or call) into o, by the option
 * parser convention of cli.h. tkn_opts_clear() frees them. */
bool tkn_parse(cli_ctx *ctx, const char *cmd, int argc, char **argv, topts *o, int *ret_exit);
void tkn_opts_clear(topts *o);

typedef struct {
	char *access_token;
	json_t *response; /* what --json prints */
	json_t *alg;      /* {"alg", "alg_reason"} of the assertion behind it */
	bool from_cache;
	bool dpop;        /* a DPoP-bound token (to req->dpop_jkt) */
} got_token;

/* token-flow.c */
/* "p11jwt: ..." on stderr: notes and warnings. */
void tkn_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Options to a resolved request (the client secret read and wiped). */
int tkn_prepare(const topts *o, xch_req *req);
/* The assertion, signed by the agent (the alg chosen for the key first);
 * *ret_p, when not NULL, its decoded parts. */
int tkn_sign_assertion(xch_req *req, char **ret_jwt, jws_parsed *ret_p);
/* The token for req: from the cache, by refresh, or by a new exchange
 * (force: drop the cached one first). */
int tkn_get_token(xch_req *req, bool use_cache, bool force, got_token *g);
void tkn_got_clear(got_token *g);
/* --json: the token endpoint's answer, with the alg p11jwt signed with. */
int tkn_print_token_json(const got_token *g);
/* --dry-run: the assertion and the form, secrets redacted. */
int tkn_dry_run(xch_req *req);
void tkn_sleep_ms(long ms);

/* The agent's key list (op "keys"), asked once per run and kept in
 * req->agent_keys; a new reference, or NULL with *ret_st (an exit status,
 * printed) when it cannot be had; quiet: print nothing and leave *ret_st 0
 * (the cache check does without). */
json_t *tkn_agent_keys(xch_req *req, bool quiet, int *ret_st);
/* The thumbprint ("jkt") of key name in keys; "" when the key is listed
 * without one (an older agent); NULL when it is not listed. */
const char *tkn_listed_jkt(const json_t *keys, const char *name);

/* tkn-dpop.c: DPoP (RFC 9449). Functions returning int return 0 or an
 * exit status, as above. */
/* req->dpop_jkt: the thumbprint of req->dpop_key, from the agent's key
 * list (a no-op without req->dpop or when it is set). */
int tkn_dpop_bind(xch_req *req);
/* A proof from the agent for htm and htu, with nonce and the ath of
 * access_token when not NULL; *ret_alg (when not NULL) the alg it was
 * signed with. Fails when the agent's jkt is not req->dpop_jkt. */
int tkn_dpop_proof(const xch_req *req, const char *htm, const char *htu, const char *nonce,
		   const char *access_token, char **ret_jwt, char **ret_alg);
/* Whose nonce: a token endpoint's or an API's (the two keep their own,
 * even on one origin). */
typedef enum { TKN_TOKEN_ENDPOINT, TKN_API } tkn_server;
/* The last DPoP-Nonce kept for the role at url's origin, or NULL. */
char *tkn_dpop_nonce_get(tkn_server role, const char *url);
/* Keep a server's DPoP-Nonce (NULL: nothing); failures are notes. */
void tkn_dpop_nonce_put(tkn_server role, const char *url, const char *nonce);
/* A resource's answer asks for a nonce: 401, WWW-Authenticate naming
 * use_dpop_nonce, and a DPoP-Nonce header. */
bool tkn_dpop_nonce_challenge(const http_resp *resp);
/* The dpop_signing_alg_values_supported of the token URL's server, from
 * its metadata (RFC 8414 or OpenID discovery, whichever describes this
 * token endpoint), space-separated; "(not listed)" when the document has
 * none; NULL when no document was found. For hints only. */
char *tkn_dpop_server_algs(const xch_req *req);

#endif
