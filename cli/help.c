/* SPDX-License-Identifier: MIT */
/*
 * Every command and option of p11jwt is described once, here. The same
 * tables print --help, --help-all (which a later tool turns into the man
 * page) and build the getopt_long() tables, so an option cannot be parsed
 * without being documented or documented without being parsed.
 */
#include "cli/cli.h"
#include "common/util.h"

#include <getopt.h>
#include <stdarg.h>
#include <string.h>

static const struct cli_cmd_doc {
	const char *name;
	const char *synopsis;
	const char *summary;
	const char *what;
} cmd_docs[] = {
	{ "keys", "keys [--json]",
	  "list the agent's keys",
	  "List the keys the agent serves: name, default alg, kid (RFC 7638\n"
	  "thumbprint), key type, size or curve, whether a certificate is there,\n"
	  "and the key's state in a rotation (active, next, or retiring and until\n"
	  "when; p11jwt-agent.conf(5))." },
	{ "jwks", "jwks [--key NAME] [--alg ALG|--preset NAME] [--kid thumbprint|id|label] [--pem] [--out FILE]",
	  "print the public keys as a JWKS",
	  "Print the public keys as a JWKS ({\"keys\": [...]}, with kid, alg and use),\n"
	  "ready to upload to a provider or to give to `p11jwt verify --jwks`.\n"
	  "It holds the active, next and retiring keys alike, so that a provider\n"
	  "reading it (a jwks_uri: --out FILE) knows a new key before it signs.\n"
	  "With --preset NAME --key KEY the JWK's alg is the one that `p11jwt\n"
	  "token` signs with for that preset and key (said on standard error).\n"
	  "The kid is the RFC 7638 thumbprint, which the agent puts in JWT headers;\n"
	  "with --kid id or --kid label it is the key's CKA_ID (lowercase hex) or\n"
	  "label instead, and then every JWT must carry that kid too:\n"
	  "`p11jwt sign --header kid=...` (or `token --header kid=...`)." },
	{ "sign", "sign --key NAME [options]",
	  "print a JWT signed inside the token",
	  "Ask the agent for a JWT signed inside the token and print it. The agent\n"
	  "adds alg, typ and kid to the header and iat, exp and jti to the claims\n"
	  "unless given. Values: NAME=VALUE sets a string, NAME:=JSON any JSON value\n"
	  "(--claim exp:=1700000000, --claim aud:='[\"a\",\"b\"]'). Files are read\n"
	  "first, then pairs in command-line order; later ones win." },
	{ "decode", "decode JWT|-",
	  "show header, claims and times (no verification)",
	  "Print the header and claims of a JWT (read from standard input with -)\n"
	  "as JSON, then iat, nbf and exp in UTC and relative to now.\n"
	  "It does NOT verify the signature: use `p11jwt verify`." },
	{ "verify", "verify JWT|- --jwks FILE [--leeway SEC]",
	  "check signature, exp and nbf",
	  "Check the signature with the key of the JWKS whose kid matches the\n"
	  "header (or its only key), then exp and nbf. Exit status 1 when they\n"
	  "do not hold. FILE may also hold a single JWK." },
	{ "token", "token [--profile NAME|FILE] [--preset NAME] --key NAME [options]",
	  "get an OAuth access token with a signed assertion",
	  "Get an access token from an OAuth token endpoint, authenticating with a JWT\n"
	  "the agent signs (client assertion, private_key_jwt) or presenting one as\n"
	  "a JWT-bearer grant, and print it. Tokens are cached under\n"
	  "$XDG_RUNTIME_DIR/p11jwt/cache and reused until 60 s before expires_in,\n"
	  "then refreshed with the refresh token if one was given, else obtained\n"
	  "anew. Values come from the preset, then the profile, then the options\n"
	  "(later wins). Presets: nhs, smart, entra, okta, docusign, adobe, google,\n"
	  "salesforce, oracle (prints the signed JWT itself), client-assertion\n"
	  "(the default) and jwt-bearer; see docs/providers/. The client secret is\n"
	  "read from --client-secret-file or $P11JWT_CLIENT_SECRET, never from\n"
	  "the command line. With --dpop (on by default for okta) the token is\n"
	  "bound to a key of the agent (DPoP, RFC 9449): each token request carries\n"
	  "a proof, a use_dpop_nonce answer is retried once with the server's nonce,\n"
	  "the last nonce per server is kept in the cache directory, and the token\n"
	  "is cached with the key's thumbprint; see docs/dpop.md." },
	{ "call", "call [token options] [-X METHOD] [-H 'Name: value']... [-d DATA|@FILE] URL",
	  "call a REST API with a (cached) access token",
	  "Get a token as `p11jwt token` does, send the request with\n"
	  "'Authorization: Bearer TOKEN' and print the response body. Exit 0 for a\n"
	  "2xx status; otherwise the status and body go to standard error (exit 11).\n"
	  "On a 401 with a cached token, the token is dropped, a new one obtained\n"
	  "and the request sent once more. -d sends DATA (or the contents of FILE)\n"
	  "with POST unless -X says otherwise, as application/json when it parses\n"
	  "as JSON, else as a form, unless -H sets Content-Type. Plain http:// is\n"
	  "allowed only to loopback hosts. With --dpop the request carries\n"
	  "'Authorization: DPoP TOKEN' and a fresh proof (with ath); a 401 asking\n"
	  "for a DPoP nonce is answered once with it." },
	{ "keygen", "keygen --module PATH --token URI --type TYPE --label NAME [--id HEX] [--pin-file FILE]",
	  "generate a key pair on the token (not through the agent)",
	  "Generate a key pair inside the token (C_GenerateKeyPair) and print its\n"
	  "PKCS#11 URI, CKA_ID, kid (RFC 7638 thumbprint) and public JWK as JSON.\n"
	  "The private key is sensitive, never extractable and may only sign; the\n"
	  "public key may only verify. Refused (exit 2) when an object with that\n"
	  "label or CKA_ID is on the token already. Talks to the token directly:\n"
	  "`p11jwt reload` makes a running agent serve the new key. The PIN comes\n"
	  "from --pin-file, the URI's pin-source, or $P11JWT_PIN." },
	{ "rotate", "rotate --key NAME [--type TYPE] [--label NEW] --module PATH --token URI [--pin-file FILE]",
	  "make the next key of a rotation on the token",
	  "Generate the key that replaces key NAME (its label on the token) as\n"
	  "keygen does, print its URI, CKA_ID, kid and public JWK as JSON, and on\n"
	  "standard error the steps of the rotation: serve it as state = next,\n"
	  "publish it beside the old key, switch (next -> active, the old one\n"
	  "retiring with a retire_after date), remove the old key. --type defaults\n"
	  "to NAME's type; the label to NAME-YYYYMMDD. See docs/rotation.md." },
	{ "reload", "reload [--json]",
	  "make the agent list its tokens' keys again",
	  "Ask the agent to list its tokens' keys again and to re-read its\n"
	  "configuration file, as SIGHUP does, and print the keys added and\n"
	  "removed. Requests in flight keep the keys they started with; a key gone\n"
	  "from the token answers unknown_key. Only the agent's own user and root\n"
	  "may do this." },
	{ "csr", "csr --module PATH --token URI --key LABEL --subject /CN=NAME [--out FILE] [--pin-file FILE]",
	  "print a PKCS#10 request signed by a token key",
	  "Build a certificate signing request (PKCS#10, PEM) for a key on the token\n"
	  "and sign it there with C_Sign: sha256WithRSAEncryption for RSA,\n"
	  "ecdsa-with-SHA256/384/512 for P-256/384/521, Ed25519. Talks to the token\n"
	  "directly, not through the agent." },
	{ "cert", "cert --module PATH --token URI --key LABEL --subject /CN=NAME --days N [--store] [--out FILE]",
	  "make a self-signed certificate for a token key",
	  "Make a self-signed X.509 v3 certificate (PEM) for a key on the token,\n"
	  "signed there as `csr` does: random 128-bit serial, valid from now for N\n"
	  "days, basicConstraints CA:FALSE and keyUsage digitalSignature (both\n"
	  "critical), subjectKeyIdentifier. For providers that take a certificate\n"
	  "rather than a JWKS (Microsoft Entra, Salesforce). With --store it is also\n"
	  "written to the token next to the key; after `p11jwt reload` `p11jwt keys`\n"
	  "shows it and `sign --x5t/--x5t-s256/--x5c` can use it." },
	{ "login", "login [--token URI]",
	  "give the agent the token's PIN",
	  "Ask for the token's PIN (without echo on a terminal; otherwise one line\n"
	  "of standard input) and send it to the agent, which logs in and keeps it\n"
	  "in locked memory to log in again after the token comes back. An empty\n"
	  "PIN uses the reader's PIN pad. A PIN the token rejected once is never\n"
	  "sent to the token again (pin_incorrect). Only the agent's own user and\n"
	  "root may do this." },
	{ "lock", "lock [--token URI]",
	  "log the agent out and wipe its PIN",
	  "Log the agent out of the token (C_Logout) and wipe the PIN it keeps.\n"
	  "Keys are still listed; signing answers pin_required until\n"
	  "`p11jwt login`." },
	{ "status", "status [--json]",
	  "show the agent's state and counters",
	  "Show the agent's version and uptime, each token's state (ready, locked\n"
	  "or unavailable), the number of keys, the requests answered since it\n"
	  "started, its error answers by code, and its connections (open now,\n"
	  "accepted, refused). Only the agent's own user and root may ask." },
	{ "dpop", "dpop --key NAME --htm METHOD --htu URL [--token-file FILE|-] [--nonce N] [--json]",
	  "print a DPoP proof (RFC 9449) for one HTTP request",
	  "Ask the agent for a DPoP proof JWT for one request and print it, for\n"
	  "curl -H \"DPoP: $(p11jwt dpop ...)\". The header carries typ dpop+jwt,\n"
	  "the key's alg and its public JWK; the claims a fresh jti, htm, htu (the\n"
	  "URL without query and fragment, normalised by the agent), iat, and the\n"
	  "server's nonce and ath when given. The access token, for requests that\n"
	  "carry one, is read from --token-file (- for standard input), never from\n"
	  "the command line; only its SHA-256 (ath) is sent to the agent. The key\n"
	  "must be allowed to make proofs (dpop = yes in p11jwt-agent.conf(5), or\n"
	  "p11jwt-agent --allow-dpop). See docs/dpop.md." },
	{ "cache", "cache list|clear [--json]",
	  "list or clear cached access tokens",
	  "list: one line per cached token (token URL, client id, key, subject,\n"
	  "scope, time left, whether a refresh token is kept); no token is shown.\n"
	  "clear: remove every cached token." },
};

/* cmd NULL: global, given before the command (--socket also after it). */
static const struct cli_opt_doc {
	const char *cmd; /* one command, or several separated by spaces */
	const char *opt; /* long name without "--" */
	char shrt;       /* short option letter, or 0 */
	const char *arg; /* NULL for a flag */
	const char *help;
} opt_docs[] = {
	{ NULL, "socket", 0, "PATH", "agent socket (default: $P11JWT_AGENT_SOCK, else\n"
				  "$XDG_RUNTIME_DIR/p11jwt/agent.sock, else\n"
				  "/tmp/p11jwt-UID/agent.sock)" },
	{ NULL, "agent-uid", 0, "USER", "the agent runs as this user (name or uid), not as\n"
				     "you or root: trust a socket it serves (default:\n"
				     "$P11JWT_AGENT_UID)" },
	{ NULL, "help", 0, NULL, "print help; `p11jwt COMMAND --help` for one command (also -h)" },
	{ NULL, "help-all", 0, NULL, "print every option of every command" },
	{ NULL, "version", 0, NULL, "print the version" },
	{ "keys", "json", 0, NULL, "print the agent's key list as a JSON array" },
	{ "jwks", "key", 0, "NAME", "only this key; repeatable (the old and the new key\n"
				 "of a rotation); @active, @next: the one key in\n"
				 "that state, see `p11jwt keys`" },
	{ "jwks", "alg", 0, "ALG", "set each JWK's alg to the algorithm you will sign\n"
				"with: verifiers hold the key to it (default: the\n"
				"key's default alg, see `p11jwt keys`)" },
	{ "jwks", "kid", 0, "thumbprint|id|label", "how kid is formed: RFC 7638 thumbprint (default,\n"
						  "what the agent puts in JWT headers), the\n"
						  "CKA_ID in lowercase hex, or the key's label;\n"
						  "other than thumbprint, send the same kid in\n"
						  "every JWT header (--header kid=...)" },
	{ "jwks", "preset", 0, "NAME", "set the JWK's alg to the one `p11jwt token --preset\n"
				    "NAME` signs with for this key: the first of the\n"
				    "preset's algs the key signs (needs --key; --alg wins)" },
	{ "jwks", "out", 0, "FILE", "write to FILE instead of standard output: a\n"
				 "temporary file in its directory, mode 0644,\n"
				 "fsync'ed and renamed over FILE (for a jwks_uri)" },
	{ "jwks", "pem", 0, NULL, "print the public keys as PEM (SubjectPublicKeyInfo)\n"
			       "instead of a JWKS" },
	{ "sign", "key", 0, "NAME", "key to sign with (required; see `p11jwt keys`)" },
	{ "sign", "alg", 0, "ALG", "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,\n"
				"ES512 or EdDSA (default: the key's, see `p11jwt keys`)" },
	{ "sign", "header-file", 0, "FILE", "JSON object of header members (at most 1 MiB)" },
	{ "sign", "claims-file", 0, "FILE", "JSON object of claims (at most 1 MiB)" },
	{ "sign", "header", 0, "NAME=VALUE|NAME:=JSON", "set a header member (repeatable)" },
	{ "sign", "claim", 0, "NAME=VALUE|NAME:=JSON", "set a claim (repeatable), e.g.\n"
						    "--claim iss=me --claim 'scope=a b'" },
	{ "sign", "lifetime", 0, "SEC", "exp = iat + SEC unless exp is given (positive;\n"
				     "default: the agent's, 300)" },
	{ "sign", "x5t", 0, NULL, "add the certificate's SHA-1 thumbprint (x5t) to the header" },
	{ "sign", "x5t-s256", 0, NULL, "add the certificate's SHA-256 thumbprint (x5t#S256)" },
	{ "sign", "x5c", 0, NULL, "add the certificate itself (x5c)" },
	{ "token call", "profile", 0, "NAME|FILE", "profile: $XDG_CONFIG_HOME/p11jwt/profiles/NAME.json,\n"
					      "or a path (docs/providers/README.md)" },
	{ "token call", "preset", 0, "NAME", "provider preset (default: client-assertion)" },
	{ "token call", "key", 0, "NAME", "agent key to sign the assertion with (required);\n"
				      "@active or @next: the one key in that state" },
	{ "token call", "alg", 0, "ALG", "signature algorithm (default: the first of the\n"
				      "preset's or profile's algs that the key signs,\n"
				      "else the key's own; --dry-run says which and why)" },
	{ "token call", "client-id", 0, "ID", "client id; iss and sub of a client assertion" },
	{ "token call", "token-url", 0, "URL", "token endpoint (https, or http to loopback only)" },
	{ "token call", "aud", 0, "AUD", "aud claim (default: the token URL, or what the\n"
				     "preset says)" },
	{ "token call", "iss", 0, "ISS", "iss claim (default: the client id)" },
	{ "token call", "sub", 0, "SUB", "sub claim: the user of a JWT-bearer grant\n"
				     "(default for client assertions: the client id)" },
	{ "token call", "scope", 0, "SCOPE", "scope, space-separated (form field or claim,\n"
					 "as the preset says)" },
	{ "token call", "lifetime", 0, "SEC", "assertion lifetime, 1 to 86400 (default: the\n"
					  "preset's, else 300)" },
	{ "token call", "header", 0, "NAME=VALUE|NAME:=JSON", "set an assertion header member (repeatable)" },
	{ "token call", "claim", 0, "NAME=VALUE|NAME:=JSON", "set an assertion claim (repeatable)" },
	{ "token call", "header-file", 0, "FILE", "JSON object of assertion header members" },
	{ "token call", "claims-file", 0, "FILE", "JSON object of assertion claims" },
	{ "token call", "form", 0, "NAME=VALUE|NAME", "add or replace a form field; NAME alone\n"
						  "removes it (repeatable)" },
	{ "token call", "assertion-field", 0, "NAME", "form field carrying the JWT (default:\n"
						  "client_assertion or assertion)" },
	{ "token call", "grant", 0, "GRANT", "client_credentials (client assertion) or\n"
					"jwt-bearer (the JWT is the grant)" },
	{ "token call", "client-secret-file", 0, "FILE", "file holding a client secret sent with the\n"
						     "assertion (mode 0600; or $P11JWT_CLIENT_SECRET)" },
	{ "token call", "x5t", 0, NULL, "add the certificate's SHA-1 thumbprint (x5t)" },
	{ "token call", "x5t-s256", 0, NULL, "add the certificate's SHA-256 thumbprint (x5t#S256)" },
	{ "token call", "x5c", 0, NULL, "add the certificate itself (x5c)" },
	{ "token call", "dpop", 0, NULL, "sender-constrained token (DPoP, RFC 9449): every\n"
				      "token request (and API call) carries a proof\n"
				      "made by the agent; token_type DPoP is required" },
	{ "token call", "dpop-key", 0, "NAME", "agent key for the DPoP proofs (default: --key;\n"
					   "implies --dpop)" },
	{ "token call", "no-dpop", 0, NULL, "no DPoP, where the preset or profile turns it\n"
					 "on (okta)" },
	{ "token call", "no-cache", 0, NULL, "neither read nor write the token cache" },
	{ "token call", "dry-run", 0, NULL, "print the alg and why, the assertion's header and\n"
					 "claims and the form (secrets redacted); send nothing" },
	{ "token call", "cacert", 0, "FILE", "also trust the CA certificates in FILE (PEM)" },
	{ "token call", "timeout", 0, "SEC", "per HTTP attempt, 1 to 600 (default 30); up to\n"
					 "3 attempts on connection errors, 429 and 5xx" },
	{ "token", "json", 0, NULL, "print the token endpoint's whole JSON answer, with\n"
				 "\"p11jwt\": {\"alg\", \"alg_reason\"} added (and\n"
				 "\"dpop\": {\"key\", \"jkt\"} with --dpop)" },
	{ "call", "request", 'X', "METHOD", "HTTP method (default GET, or POST with -d)" },
	{ "call", "api-header", 'H', "'NAME: VALUE'", "add a request header (repeatable)" },
	{ "call", "data", 'd', "DATA|@FILE", "request body, or @FILE for a file's contents" },
	{ "dpop", "key", 0, "NAME", "key to make the proof with (required)" },
	{ "dpop", "alg", 0, "ALG", "signature algorithm (default: the key's)" },
	{ "dpop", "htm", 0, "METHOD", "the request's HTTP method, e.g. POST (required;\n"
				    "case-sensitive)" },
	{ "dpop", "htu", 0, "URL", "the request's URL (required; query and fragment\n"
				 "are dropped, http or https only)" },
	{ "dpop", "token-file", 0, "FILE|-", "the access token the request carries, read\n"
					  "from FILE or standard input (-); adds ath" },
	{ "dpop", "nonce", 0, "NONCE", "the server's DPoP-Nonce, to put in the proof" },
	{ "dpop", "json", 0, NULL, "print {jwt, jkt, alg, htu, jti, iat} as JSON" },
	{ "cache", "json", 0, NULL, "list as JSON" },
	{ "status", "json", 0, NULL, "print the agent's answer as JSON" },
	{ "reload", "json", 0, NULL, "print the agent's answer as JSON" },
	{ "login lock", "token", 0, "URI", "PKCS#11 URI of the agent's token (default: the\n"
				   "one it serves)" },
	{ "keygen csr cert rotate", "module", 0, "PATH", "PKCS#11 module (default: the URI's module-path,\n"
					      "else p11-kit's registered modules); accepted only\n"
					      "under /usr/lib*/, /usr/local/lib*/ or --module-allow" },
	{ "keygen csr cert rotate", "module-allow", 0, "DIR", "also accept modules under DIR (repeatable)" },
	{ "keygen csr cert rotate", "module-init-args", 0, "STRING", "the module's initialisation parameters\n"
							       "(C_Initialize pReserved, e.g. NSS softoken's\n"
							       "\"configdir='sql:DIR' ...\"); needs --module" },
	{ "keygen csr cert rotate", "token", 0, "URI", "PKCS#11 URI of the token (required), e.g.\n"
					    "'pkcs11:token=My%20Token'" },
	{ "keygen csr cert rotate", "pin-file", 0, "FILE", "user PIN on the first line; the file must not be\n"
						"readable by group or others (else the URI's\n"
						"pin-source, else $P11JWT_PIN)" },
	{ "keygen", "type", 0, "TYPE", "rsa:2048, rsa:3072, rsa:4096, ec:P-256, ec:P-384,\n"
				   "ec:P-521 or ed25519 (required)" },
	{ "keygen", "label", 0, "NAME", "CKA_LABEL of both halves; the key's name in the\n"
				    "agent (required, not yet on the token)" },
	{ "keygen", "id", 0, "HEX", "CKA_ID of both halves, 1 to 64 bytes in hex (not yet\n"
				"on the token; default: 8 random bytes)" },
	{ "csr cert", "key", 0, "LABEL", "the token key to certify (its CKA_LABEL; required)" },
	{ "rotate", "key", 0, "NAME", "the key to replace: its CKA_LABEL (required)" },
	{ "rotate", "type", 0, "TYPE", "the new key's type, as for keygen (default: the\n"
				   "old key's)" },
	{ "rotate", "label", 0, "NEW", "CKA_LABEL of the new key (default: NAME-YYYYMMDD,\n"
				   "a date suffix of NAME replaced)" },
	{ "rotate", "id", 0, "HEX", "CKA_ID of the new key (default: 8 random bytes)" },
	{ "csr cert", "subject", 0, "/CN=NAME/O=ORG", "subject name, OpenSSL -subj style; \\/ is a\n"
						  "literal slash (required)" },
	{ "csr cert", "out", 0, "FILE", "write the PEM to FILE instead of standard output" },
	{ "cert", "days", 0, "N", "validity in days from now, 1 to 36500 (required)" },
	{ "cert", "store", 0, NULL, "also store it on the token with the key's CKA_ID\n"
				"and label (refused if the key has one already)" },
	{ "verify", "jwks", 0, "FILE", "JWKS (or one JWK) to verify with (required)" },
	{ "verify", "leeway", 0, "SEC", "accept exp and nbf off by up to SEC seconds\n"
				     "(0 to 86400, default 0)" },
};

static const char exit_doc[] =
	"Errors are printed once, as 'p11jwt: CODE: message'; an OAuth server's\n"
	"error as 'p11jwt: token endpoint said ERROR: description', then a hint.\n"
	"Exit status:\n"
	"  0  success\n"
	"  1  verify: the signature, exp or nbf do not hold\n"
	"  2  usage error: bad option, NAME=VALUE pair, file or JWT input; keygen,\n"
	"     cert --store: the label, CKA_ID or certificate is on the token already;\n"
	"     token, call, jwks --preset: the key signs none of the preset's algs\n"
	"  3  the agent cannot be reached (or does not answer in time)\n"
	"  4  the agent refused the request (its error code is shown)\n"
	"  5  any other failure\n"
	"  6  the token endpoint answered with an OAuth error (shown with a hint)\n"
	"  7  cannot connect to the server\n"
	"  8  the server did not answer in time\n"
	"  9  TLS failure (certificate not trusted, handshake)\n"
	" 10  the server's answer is unusable (not JSON, incomplete, too large,\n"
	"     unexpected HTTP status)\n"
	" 11  call: the API answered with a status other than 2xx\n";

static const struct cli_cmd_doc *find_cmd(const char *cmd)
{
	for (size_t i = 0; i < ARRAY_SIZE(cmd_docs); i++)
		if (strcmp(cmd_docs[i].name, cmd) == 0)
			return &cmd_docs[i];
	return NULL;
}

bool cli_is_command(const char *cmd)
{
	return find_cmd(cmd) != NULL;
}

/* Multi-line text, later lines indented to col. */
static void put_indented(FILE *f, const char *s, int col)
{
	for (; *s; s++) {
		fputc(*s, f);
		if (*s == '\n')
			fprintf(f, "%*s", col, "");
	}
	fputc('\n', f);
}

/* Whether a row's command list names cmd. */
static bool row_for(const struct cli_opt_doc *o, const char *cmd)
{
	return util_word_in(o->cmd, cmd);
}

static void print_opts(FILE *f, const char *cmd)
{
	for (size_t i = 0; i < ARRAY_SIZE(opt_docs); i++) {
		const struct cli_opt_doc *o = &opt_docs[i];
		char left[64];

		if ((cmd == NULL) != (o->cmd == NULL) || (cmd && !row_for(o, cmd)))
			continue;
		snprintf(left, sizeof(left), "%s%c%s--%s%s%s", o->shrt ? "-" : "",
			 o->shrt ? o->shrt : ' ', o->shrt ? ", " : "", o->opt, o->arg ? " " : "",
			 o->arg ? o->arg : "");
		if (!o->shrt)
			memmove(left, left + 1, strlen(left)); /* drop the ' ' */
		if (strlen(left) > 24) {
			fprintf(f, "  %s\n%29s", left, "");
		} else {
			fprintf(f, "  %-26s ", left);
		}
		put_indented(f, o->help, 29);
	}
}

static void print_cmd(FILE *f, const struct cli_cmd_doc *c)
{
	fprintf(f, "usage: p11jwt [--socket PATH] %s\n\n", c->synopsis);
	put_indented(f, c->what, 0);
	fputs("\nOptions:\n", f);
	print_opts(f, c->name);
	fprintf(f, "  %-26s %s\n", "--socket PATH", "agent socket (see `p11jwt --help`)");
	fprintf(f, "  %-26s %s\n", "-h, --help", "this help");
}

static void print_main(FILE *f)
{
	fputs("usage: p11jwt [--socket PATH] COMMAND [options] [operands]\n"
	      "Sign JWTs with keys that never leave a PKCS#11 token, through p11jwt-agent.\n\n"
	      "Commands:\n", f);
	for (size_t i = 0; i < ARRAY_SIZE(cmd_docs); i++)
		fprintf(f, "  %-8s %s\n", cmd_docs[i].name, cmd_docs[i].summary);
	fputs("\nGlobal options:\n", f);
	print_opts(f, NULL);
	fputc('\n', f);
}

void cli_usage(FILE *f, const char *cmd)
{
	const struct cli_cmd_doc *c = cmd ? find_cmd(cmd) : NULL;

	if (c != NULL) {
		print_cmd(f, c);
		return;
	}
	print_main(f);
	fputs("Run 'p11jwt COMMAND --help' for one command, 'p11jwt --help-all' for all.\n\n", f);
	fputs(exit_doc, f);
}

void cli_usage_all(FILE *f)
{
	print_main(f);
	for (size_t i = 0; i < ARRAY_SIZE(cmd_docs); i++) {
		fprintf(f, "\n%s\n", cmd_docs[i].name);
		fprintf(f, "  usage: p11jwt [--socket PATH] %s\n  ", cmd_docs[i].synopsis);
		put_indented(f, cmd_docs[i].what, 2);
		print_opts(f, cmd_docs[i].name);
	}
	fputc('\n', f);
	fputs(exit_doc, f);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fputs("p11jwt: usage: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see 'p11jwt %s%s--help')\n", cmd ? cmd : "", cmd ? " " : "");
	return CLI_EXIT_USAGE;
}

#define OPT_BASE 256

int cli_next_opt(cli_ctx *ctx, const char *cmd, int argc, char **argv, const char **ret_name,
		 int *ret_exit)
{
	/* this command's rows, --socket, --help and the terminator */
	static struct option lo[ARRAY_SIZE(opt_docs) + 2];
	static char shorts[32];
	static int short_row[256];
	size_t n = 0, ns = 2;
	int c;

	memcpy(shorts, ":h", 3);
	for (size_t i = 0; i < ARRAY_SIZE(short_row); i++)
		short_row[i] = -1;
	n = 0;
	for (size_t i = 0; i < ARRAY_SIZE(opt_docs); i++) {
		const struct cli_opt_doc *o = &opt_docs[i];

		if (o->cmd ? !row_for(o, cmd)
			   : strcmp(o->opt, "socket") != 0 && strcmp(o->opt, "help") != 0)
			continue;
		lo[n++] = (struct option){ o->opt, o->arg ? required_argument : no_argument, NULL,
					   OPT_BASE + (int)i };
		if (o->shrt && ns + 3 < sizeof(shorts)) {
			shorts[ns++] = o->shrt;
			shorts[ns++] = ':';
			shorts[ns] = '\0';
			short_row[(unsigned char)o->shrt] = (int)i;
		}
	}
	lo[n] = (struct option){ 0 };

	opterr = 0; /* our own messages */
	for (;;) {
		const struct cli_opt_doc *o;

		c = getopt_long(argc, argv, shorts, lo, NULL);
		if (c == -1)
			return CLI_OPT_END;
		if (c == 'h') {
			cli_usage(stdout, cmd);
			*ret_exit = 0;
			return CLI_OPT_EXIT;
		}
		if (c == ':') {
			*ret_exit = cli_usage_error(cmd, "option '%s' needs an argument",
						    argv[optind - 1]);
			return CLI_OPT_EXIT;
		}
		if (c > 0 && c < 256 && short_row[c] >= 0)
			c = OPT_BASE + short_row[c];
		if (c < OPT_BASE || c >= OPT_BASE + (int)ARRAY_SIZE(opt_docs)) {
			if (optopt != 0)
				*ret_exit = cli_usage_error(cmd, "unknown option '-%c'", optopt);
			else
				*ret_exit = cli_usage_error(cmd, "unknown or ambiguous option '%s'",
							    argv[optind - 1]);
			return CLI_OPT_EXIT;
		}
		o = &opt_docs[c - OPT_BASE];
		if (o->cmd == NULL && strcmp(o->opt, "help") == 0) {
			cli_usage(stdout, cmd);
			*ret_exit = 0;
			return CLI_OPT_EXIT;
		}
		if (o->cmd == NULL && strcmp(o->opt, "socket") == 0) {
			ctx->socket = optarg;
			continue;
		}
		*ret_name = o->opt;
		return CLI_OPT_NEXT;
	}
}
