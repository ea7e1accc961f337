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
	  "thumbprint), key type, size or curve, and whether a certificate is there." },
	{ "jwks", "jwks [--key NAME] [--alg ALG] [--pem]",
	  "print the public keys as a JWKS",
	  "Print the public keys as a JWKS ({\"keys\": [...]}, with kid, alg and use),\n"
	  "ready to upload to a provider or to give to `p11jwt verify --jwks`." },
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
};

/* cmd NULL: global, given before the command (--socket also after it). */
static const struct cli_opt_doc {
	const char *cmd;
	const char *opt; /* long name without "--" */
	const char *arg; /* NULL for a flag */
	const char *help;
} opt_docs[] = {
	{ NULL, "socket", "PATH", "agent socket (default: $P11JWT_AGENT_SOCK, else\n"
				  "$XDG_RUNTIME_DIR/p11jwt/agent.sock, else\n"
				  "/tmp/p11jwt-UID/agent.sock)" },
	{ NULL, "help", NULL, "print help; `p11jwt COMMAND --help` for one command (also -h)" },
	{ NULL, "help-all", NULL, "print every option of every command" },
	{ NULL, "version", NULL, "print the version" },
	{ "keys", "json", NULL, "print the agent's key list as a JSON array" },
	{ "jwks", "key", "NAME", "only this key" },
	{ "jwks", "alg", "ALG", "set each JWK's alg to the algorithm you will sign\n"
				"with: verifiers hold the key to it (default: the\n"
				"key's default alg, see `p11jwt keys`)" },
	{ "jwks", "pem", NULL, "print the public keys as PEM (SubjectPublicKeyInfo)\n"
			       "instead of a JWKS" },
	{ "sign", "key", "NAME", "key to sign with (required; see `p11jwt keys`)" },
	{ "sign", "alg", "ALG", "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,\n"
				"ES512 or EdDSA (default: the key's, see `p11jwt keys`)" },
	{ "sign", "header-file", "FILE", "JSON object of header members (at most 1 MiB)" },
	{ "sign", "claims-file", "FILE", "JSON object of claims (at most 1 MiB)" },
	{ "sign", "header", "NAME=VALUE|NAME:=JSON", "set a header member (repeatable)" },
	{ "sign", "claim", "NAME=VALUE|NAME:=JSON", "set a claim (repeatable), e.g.\n"
						    "--claim iss=me --claim 'scope=a b'" },
	{ "sign", "lifetime", "SEC", "exp = iat + SEC unless exp is given (positive;\n"
				     "default: the agent's, 300)" },
	{ "sign", "x5t", NULL, "add the certificate's SHA-1 thumbprint (x5t) to the header" },
	{ "sign", "x5t-s256", NULL, "add the certificate's SHA-256 thumbprint (x5t#S256)" },
	{ "sign", "x5c", NULL, "add the certificate itself (x5c)" },
	{ "verify", "jwks", "FILE", "JWKS (or one JWK) to verify with (required)" },
	{ "verify", "leeway", "SEC", "accept exp and nbf off by up to SEC seconds\n"
				     "(0 to 86400, default 0)" },
};

static const char exit_doc[] =
	"Errors are printed once, as 'p11jwt: CODE: message'.\n"
	"Exit status:\n"
	"  0  success\n"
	"  1  verify: the signature, exp or nbf do not hold\n"
	"  2  usage error: bad option, NAME=VALUE pair, file or JWT input\n"
	"  3  the agent cannot be reached (or does not answer in time)\n"
	"  4  the agent refused the request (its error code is shown)\n"
	"  5  any other failure\n";

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

static void print_opts(FILE *f, const char *cmd)
{
	for (size_t i = 0; i < ARRAY_SIZE(opt_docs); i++) {
		const struct cli_opt_doc *o = &opt_docs[i];
		char left[64];

		if ((cmd == NULL) != (o->cmd == NULL) || (cmd && strcmp(cmd, o->cmd) != 0))
			continue;
		snprintf(left, sizeof(left), "--%s%s%s", o->opt, o->arg ? " " : "",
			 o->arg ? o->arg : "");
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
	size_t n = 0;
	int c;

	for (size_t i = 0; i < ARRAY_SIZE(opt_docs); i++) {
		const struct cli_opt_doc *o = &opt_docs[i];

		if (o->cmd ? strcmp(o->cmd, cmd) != 0
			   : strcmp(o->opt, "socket") != 0 && strcmp(o->opt, "help") != 0)
			continue;
		lo[n++] = (struct option){ o->opt, o->arg ? required_argument : no_argument, NULL,
					   OPT_BASE + (int)i };
	}
	lo[n] = (struct option){ 0 };

	opterr = 0; /* our own messages */
	for (;;) {
		const struct cli_opt_doc *o;

		c = getopt_long(argc, argv, ":h", lo, NULL);
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
