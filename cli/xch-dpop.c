/* SPDX-License-Identifier: MIT */
/* The DPoP parts of the exchange (RFC 9449) without I/O: the token type
 * checked against the request, and hints for the errors a DPoP server
 * gives. The proofs themselves come from the agent (cli/tkn-dpop.c). */
#include "cli/xch-internal.h"
#include "common/err.h"
#include "common/util.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

int xch_check_token_type(const xch_req *req, const xch_token *tok)
{
	const char *tt = tok->token_type ? tok->token_type : "Bearer";
	bool dpop = strcasecmp(tt, "DPoP") == 0;

	if (req->dpop && !dpop)
		return err_set(P11J_E_BAD_RESPONSE,
			       "the token request carried a DPoP proof but the token endpoint "
			       "issued token_type '%.32s', not DPoP: the token is not bound to "
			       "key '%s' (is DPoP enabled for this client? --no-dpop for a "
			       "bearer token)",
			       tt, req->dpop_key);
	if (!req->dpop && dpop)
		return err_set(P11J_E_BAD_RESPONSE,
			       "the token endpoint issued a DPoP token to a request without a "
			       "proof; it cannot be used without one (add --dpop)");
	return 0;
}

bool xch_dpop_related(const char *error, const char *description)
{
	return (error && (strcmp(error, "invalid_dpop_proof") == 0 ||
			  strcmp(error, "use_dpop_nonce") == 0)) ||
	       (description && strcasestr(description, "dpop") != NULL);
}

const char *xch_dpop_hint(const xch_req *req, const char *error, const char *description,
			  const char *proof_alg, const char *server_algs, char *buf, size_t len)
{
	if (error == NULL)
		return NULL;
	if (strcmp(error, "use_dpop_nonce") == 0)
		return "the server asked for a DPoP nonce again after p11jwt retried once with "
		       "the DPoP-Nonce it sent: its nonces may expire within a round trip, or "
		       "servers behind one name may not share them; try again, and check the "
		       "server's nonce settings";
	if (!req->dpop) {
		/* invalid_client is about the client's authentication; a client
		 * that requires DPoP answers a request without a proof with
		 * invalid_grant or invalid_request (RFC 9449 5), unless it says */
		if (strcmp(error, "invalid_grant") != 0 && strcmp(error, "invalid_request") != 0 &&
		    !xch_dpop_related(error, description))
			return NULL;
		return "the client may require DPoP (sender-constrained tokens, RFC 9449): "
		       "add --dpop (the agent's key must be allowed to make proofs: dpop = yes "
		       "in its [key] section, or p11jwt-agent --allow-dpop)";
	}
	if (strcmp(error, "invalid_dpop_proof") != 0 && !xch_dpop_related(error, description))
		return NULL;
	if (proof_alg && server_algs && !util_word_in(server_algs, proof_alg))
		snprintf(buf, len,
			 "the proofs were signed with %s by key '%s', and the server's metadata "
			 "lists dpop_signing_alg_values_supported: %s; use --dpop-key with a key "
			 "that signs one of those",
			 proof_alg, req->dpop_key, server_algs);
	else if (proof_alg && server_algs)
		snprintf(buf, len,
			 "the server accepts %s for proofs (dpop_signing_alg_values_supported: "
			 "%s); check the clock of this machine (the proof's iat), that the "
			 "token URL is the one the server expects as htu, and that the client "
			 "is set up for DPoP with key '%s'",
			 proof_alg, server_algs, req->dpop_key);
	else
		snprintf(buf, len,
			 "check that the server accepts %s for proofs (its metadata's "
			 "dpop_signing_alg_values_supported; p11jwt could not read it), the "
			 "clock of this machine (the proof's iat), and that the client is set "
			 "up for DPoP with key '%s'",
			 proof_alg ? proof_alg : "the key's alg", req->dpop_key);
	return buf;
}

const char *xch_api_dpop_hint(const xch_req *req, bool dpop, long status,
			      const char *www_authenticate, char *buf, size_t len)
{
	const char *w = www_authenticate;

	if (status != 401 && status != 400)
		return NULL;
	if (!dpop)
		return w && strncasecmp(w, "DPoP", 4) == 0 && (w[4] == ' ' || w[4] == '\0')
			       ? "the API asks for a DPoP-bound token (WWW-Authenticate: DPoP): "
				 "add --dpop"
			       : NULL;
	if (w == NULL)
		return NULL;
	if (strcasestr(w, "use_dpop_nonce"))
		return xch_dpop_hint(req, "use_dpop_nonce", NULL, NULL, NULL, buf, len);
	if (strcasestr(w, "invalid_dpop_proof")) {
		snprintf(buf, len,
			 "the API refused the DPoP proof of key '%s': check that it accepts the "
			 "key's alg for proofs, the clock of this machine (iat), and that the URL "
			 "called is the one it expects as htu (the proof names the URL without "
			 "its query)",
			 req->dpop_key);
		return buf;
	}
	return NULL;
}
