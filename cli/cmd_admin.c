/* SPDX-License-Identifier: MIT */
/*
 * p11jwt keygen, csr, cert: the key lifecycle. These talk to the token
 * directly (pkcs11/admin.h), not through the agent: making keys and
 * certificates is an administrator's act, done once, and the agent only
 * ever signs JWTs. An agent already running sees new keys and certificates
 * after `p11jwt reload` (or SIGHUP). rotate is keygen for the next key of a
 * rotation (docs/rotation.md).
 */
#include "cli/cli.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jwk.h"
#include "pkcs11/admin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>

#define ADM_ALLOW_MAX 8

typedef struct {
	const char *module, *module_init_args, *token, *pin_file;
	const char *allow[ADM_ALLOW_MAX + 1];
	size_t nallow;
	/* keygen */
	const char *type, *label, *id;
	/* csr, cert */
	const char *key, *subject, *out, *days;
	bool store;
	/* warnings of the token layer, shown when the key is not usable */
	char warnings[1024];
} adm_opts;

static void collect_warning(int level, const char *msg, void *ud)
{
	adm_opts *o = ud;
	size_t used = strlen(o->warnings);

	if (level > TOK_LOG_WARNING || used + strlen(msg) + 4 >= sizeof(o->warnings))
		return;
	snprintf(o->warnings + used, sizeof(o->warnings) - used, "%s%s", used ? "; " : "", msg);
}

/* The options every admin command takes; 1 if name was one of them, 0 if
 * not, or an exit status (> 1) for a usage error. */
static int common_opt(const char *cmd, adm_opts *o, const char *name)
{
	if (strcmp(name, "module") == 0)
		o->module = optarg;
	else if (strcmp(name, "module-init-args") == 0)
		o->module_init_args = optarg;
	else if (strcmp(name, "token") == 0)
		o->token = optarg;
	else if (strcmp(name, "pin-file") == 0)
		o->pin_file = optarg;
	else if (strcmp(name, "module-allow") == 0) {
		if (o->nallow == ADM_ALLOW_MAX)
			return cli_usage_error(cmd, "--module-allow is given more than %d times",
			                       ADM_ALLOW_MAX);
		o->allow[o->nallow++] = optarg;
	} else
		return 0;
	return 1;
}

static bool parse_opts(cli_ctx *ctx, const char *cmd, int argc, char **argv, adm_opts *o,
		       int *ret_exit)
{
	const char *name = NULL;
	int r;

	*ret_exit = 0;
	while ((r = cli_next_opt(ctx, cmd, argc, argv, &name, ret_exit)) == CLI_OPT_NEXT) {
		int c = common_opt(cmd, o, name);

		if (c > 1) {
			*ret_exit = c;
			return false;
		}
		if (c == 1)
			continue;
		if (strcmp(name, "type") == 0)
			o->type = optarg;
		else if (strcmp(name, "label") == 0)
			o->label = optarg;
		else if (strcmp(name, "id") == 0)
			o->id = optarg;
		else if (strcmp(name, "key") == 0)
			o->key = optarg;
		else if (strcmp(name, "subject") == 0)
			o->subject = optarg;
		else if (strcmp(name, "out") == 0)
			o->out = optarg;
		else if (strcmp(name, "days") == 0)
			o->days = optarg;
		else if (strcmp(name, "store") == 0)
			o->store = true;
	}
	if (r == CLI_OPT_EXIT)
		return false;
	if (optind != argc)
		*ret_exit = cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	else if (o->token == NULL)
		*ret_exit = cli_usage_error(cmd, "--token URI is required (the token to work on)");
	else if (o->module_init_args != NULL &&
		 (o->module_init_args[0] == '\0' ||
		  (o->module == NULL && strstr(o->token, "module-path=") == NULL)))
		*ret_exit = cli_usage_error(cmd, "--module-init-args needs --module and must not "
					    "be empty");
	return *ret_exit == 0;
}

static int token_open(adm_opts *o, tok_ctx **ret)
{
	tok_config tc = {0};

	tc.module_path = o->module;
	tc.module_init_args = o->module_init_args;
	tc.module_allow = o->nallow ? o->allow : NULL;
	tc.uri = o->token;
	tc.pin_file = o->pin_file;
	tc.log = collect_warning;
	tc.log_ud = o;
	return adm_open(&tc, ret);
}

/* --out FILE (0644: certificates and requests are public), else stdout. */
static int open_out(const char *path, FILE **ret)
{
	int fd;

	if (path == NULL) {
		*ret = stdout;
		return 0;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return err_set(P11J_E_BAD_REQUEST, "cannot write '%s': %s", path, strerror(errno));
	*ret = fdopen(fd, "w");
	if (*ret == NULL) {
		close(fd);
		return err_set(P11J_E_SYSTEM, "fdopen '%s': %s", path, strerror(errno));
	}
	return 0;
}

static int close_out(const char *path, FILE *f, bool ok)
{
	if (f == stdout)
		return fflush(f) == 0 ? 0
		                      : err_set(P11J_E_SYSTEM, "writing standard output failed");
	if (fclose(f) != 0 || !ok) {
		if (ok)
			return err_set(P11J_E_SYSTEM, "writing '%s' failed: %s", path,
			               strerror(errno));
		unlink(path);
	}
	return 0;
}

static int print_key(const char *label, const adm_key *k)
{
	json_t *jwk = NULL, *o = NULL;
	char *kid = NULL, *hex = NULL;
	jwa_keykind kind = jwa_keykind_of(k->pub);
	int r;

	if ((r = jwk_from_pkey(k->pub, &jwk)) < 0 || (r = jwk_thumbprint(jwk, &kid)) < 0 ||
	    (r = util_hex(k->id, k->id_len, &hex)) < 0)
		goto out;
	if (json_object_set_new(jwk, "kid", json_string(kid)) < 0 ||
	    json_object_set_new(jwk, "alg", json_string(jwa_name(jwa_default_for_kind(kind)))) <
	        0 ||
	    json_object_set_new(jwk, "use", json_string("sig")) < 0) {
		r = err_nomem();
		goto out;
	}
	o = json_pack("{s:s,s:s,s:s,s:s,s:O}", "name", label, "uri", k->uri, "id_hex", hex, "kid",
	              kid, "jwk", jwk);
	if (o == NULL) {
		r = err_nomem();
		goto out;
	}
	/* what the token did otherwise than asked (a TPM's public key usage):
	 * on stderr for the operator and in the JSON for scripts */
	if (k->warning != NULL) {
		fprintf(stderr, "p11jwt: warning: %s\n", k->warning);
		if (json_object_set_new(o, "warnings", json_pack("[s]", k->warning)) < 0) {
			r = err_nomem();
			goto out;
		}
	}
	r = cli_print_json(o);
out:
	json_decref(o);
	json_decref(jwk);
	free(kid);
	free(hex);
	return r;
}

int cmd_keygen(cli_ctx *ctx, int argc, char **argv)
{
	adm_opts o = {0};
	adm_keytype type = ADM_KT_NONE;
	uint8_t *id = NULL;
	size_t id_len = 0;
	tok_ctx *tok = NULL;
	adm_key k = {0};
	int r;

	if (!parse_opts(ctx, "keygen", argc, argv, &o, &r))
		return r;
	if (o.type == NULL || o.label == NULL)
		return cli_usage_error("keygen", "--type TYPE and --label NAME are required");
	if ((r = adm_keytype_parse(o.type, &type)) < 0 ||
	    (o.id != NULL && (r = adm_id_parse(o.id, &id, &id_len)) < 0))
		return cli_fail(r);
	if ((r = token_open(&o, &tok)) < 0 ||
	    (r = adm_keygen(tok, type, o.label, id, id_len, &k)) < 0) {
		r = cli_fail(r);
		goto out;
	}
	r = print_key(o.label, &k);
	if (r < 0)
		r = cli_fail(r);
out:
	adm_key_clear(&k);
	tok_close(tok);
	free(id);
	return r;
}

/* Open the token and find the key by label, for csr and cert. */
static int key_open(adm_opts *o, const char *cmd, tok_ctx **ret_tok, const tok_key **ret_key,
                    X509_NAME **ret_subj)
{
	int r;

	if (o->key == NULL || o->subject == NULL)
		return cli_usage_error(cmd, "--key LABEL and --subject /CN=... are required");
	if ((r = adm_subject_parse(o->subject, ret_subj)) < 0)
		return cli_fail(r);
	if ((r = token_open(o, ret_tok)) < 0)
		return cli_fail(r);
	*ret_key = tok_key_find(*ret_tok, o->key);
	if (*ret_key == NULL)
		return cli_fail(err_set(
		    P11J_E_NOT_FOUND, "no usable signing key labelled '%s' on token '%s'%s%s",
		    o->key, tok_label(*ret_tok), o->warnings[0] ? ": " : "", o->warnings));
	return 0;
}

int cmd_csr(cli_ctx *ctx, int argc, char **argv)
{
	adm_opts o = {0};
	tok_ctx *tok = NULL;
	const tok_key *k = NULL;
	X509_NAME *subj = NULL;
	X509_REQ *req = NULL;
	FILE *f = NULL;
	int r;

	if (!parse_opts(ctx, "csr", argc, argv, &o, &r))
		return r;
	if ((r = key_open(&o, "csr", &tok, &k, &subj)) != 0)
		goto out;
	if ((r = adm_csr(tok, k, subj, &req)) < 0 || (r = open_out(o.out, &f)) < 0) {
		r = cli_fail(r);
		goto out;
	}
	if (PEM_write_X509_REQ(f, req) != 1) {
		close_out(o.out, f, false);
		r = cli_fail(err_set_ossl(P11J_E_SYSTEM, "writing the request"));
		goto out;
	}
	r = close_out(o.out, f, true);
	if (r < 0)
		r = cli_fail(r);
out:
	X509_REQ_free(req);
	X509_NAME_free(subj);
	tok_close(tok);
	return r;
}

int cmd_cert(cli_ctx *ctx, int argc, char **argv)
{
	adm_opts o = {0};
	tok_ctx *tok = NULL;
	const tok_key *k = NULL;
	X509_NAME *subj = NULL;
	X509 *x = NULL;
	FILE *f = NULL;
	long long days = 0;
	int r;

	if (!parse_opts(ctx, "cert", argc, argv, &o, &r))
		return r;
	if (o.days == NULL)
		return cli_usage_error("cert", "--days N is required");
	if ((r = cli_parse_int("--days", o.days, 1, 36500, &days)) < 0)
		return cli_fail(r);
	if ((r = key_open(&o, "cert", &tok, &k, &subj)) != 0)
		goto out;
	if ((r = adm_cert(tok, k, subj, (int)days, &x)) < 0 ||
	    (o.store && (r = adm_cert_store(tok, k, x)) < 0) || (r = open_out(o.out, &f)) < 0) {
		r = cli_fail(r);
		goto out;
	}
	if (PEM_write_X509(f, x) != 1) {
		close_out(o.out, f, false);
		r = cli_fail(err_set_ossl(P11J_E_SYSTEM, "writing the certificate"));
		goto out;
	}
	r = close_out(o.out, f, true);
	if (r < 0)
		r = cli_fail(r);
	else if (o.store)
		fprintf(stderr,
		        "p11jwt: certificate stored on token '%s' with key '%s'; `p11jwt "
		        "reload` makes a running agent serve it\n",
		        tok_label(tok), tok_key_name(k));
out:
	X509_free(x);
	X509_NAME_free(subj);
	tok_close(tok);
	return r;
}

/* The admin type of an existing key, for rotate without --type. */
static adm_keytype type_of(const tok_key *k)
{
	switch (tok_key_kind(k)) {
	case KEYKIND_RSA: {
		int bits = EVP_PKEY_get_bits(tok_key_pubkey(k));

		return bits >= 4096 ? ADM_KT_RSA4096 : bits >= 3072 ? ADM_KT_RSA3072 : ADM_KT_RSA2048;
	}
	case KEYKIND_P256:
		return ADM_KT_P256;
	case KEYKIND_P384:
		return ADM_KT_P384;
	case KEYKIND_P521:
		return ADM_KT_P521;
	case KEYKIND_ED25519:
		return ADM_KT_ED25519;
	default:
		return ADM_KT_NONE;
	}
}

/* NAME-YYYYMMDD (a date suffix of NAME replaced), -2 ... -9 when taken. */
static int next_label(tok_ctx *tok, const char *name, char *buf, size_t len)
{
	size_t n = strlen(name), d;
	time_t now = time(NULL);
	struct tm tm;
	char day[16];

	if (n > 9 && name[n - 9] == '-' && strspn(name + n - 8, "0123456789") == 8)
		n -= 9;
	gmtime_r(&now, &tm);
	strftime(day, sizeof(day), "%Y%m%d", &tm);
	for (d = 1; d < 10; d++) {
		if (d == 1)
			snprintf(buf, len, "%.*s-%s", (int)n, name, day);
		else
			snprintf(buf, len, "%.*s-%s-%zu", (int)n, name, day, d);
		if (tok_key_find(tok, buf) == NULL)
			return 0;
	}
	return err_set(P11J_E_BAD_REQUEST, "keys %.*s-%s to -9 exist already; name the new key "
	               "with --label", (int)n, name, day);
}

int cmd_rotate(cli_ctx *ctx, int argc, char **argv)
{
	adm_opts o = {0};
	adm_keytype type = ADM_KT_NONE;
	uint8_t *id = NULL;
	size_t id_len = 0;
	tok_ctx *tok = NULL;
	const tok_key *old;
	adm_key k = {0};
	char label[160];
	int r;

	if (!parse_opts(ctx, "rotate", argc, argv, &o, &r))
		return r;
	if (o.key == NULL)
		return cli_usage_error("rotate", "--key NAME is required (the key to replace: its "
		                                 "label on the token)");
	if ((o.type != NULL && (r = adm_keytype_parse(o.type, &type)) < 0) ||
	    (o.id != NULL && (r = adm_id_parse(o.id, &id, &id_len)) < 0))
		return cli_fail(r);
	if ((r = token_open(&o, &tok)) < 0) {
		r = cli_fail(r);
		goto out;
	}
	old = tok_key_find(tok, o.key);
	if (old == NULL) {
		r = cli_fail(err_set(P11J_E_NOT_FOUND,
		                     "no usable signing key labelled '%s' on token '%s' to rotate%s%s",
		                     o.key, tok_label(tok), o.warnings[0] ? ": " : "", o.warnings));
		goto out;
	}
	if (type == ADM_KT_NONE && (type = type_of(old)) == ADM_KT_NONE) {
		r = cli_fail(err_set(P11J_E_BAD_REQUEST, "give the new key's --type (%s)",
		                     ADM_KEYTYPES));
		goto out;
	}
	if (o.label != NULL)
		snprintf(label, sizeof(label), "%s", o.label);
	else if ((r = next_label(tok, o.key, label, sizeof(label))) < 0) {
		r = cli_fail(r);
		goto out;
	}
	if ((r = adm_keygen(tok, type, label, id, id_len, &k)) < 0) {
		r = cli_fail(r);
		goto out;
	}
	if ((r = print_key(label, &k)) < 0) {
		r = cli_fail(r);
		goto out;
	}
	fprintf(stderr,
	        "p11jwt: made key '%s' (%s) on token '%s' to replace '%s'. The steps "
	        "(docs/rotation.md):\n"
	        "  1. serve it as the next key: in p11jwt-agent.conf add\n"
	        "       [key %s]\n"
	        "       object = %s\n"
	        "       state = next\n"
	        "     with the policy lines of '%s' (an agent without --config serves every key\n"
	        "     of the token), then `p11jwt reload`; `p11jwt keys` shows it as next\n"
	        "  2. publish it beside the old one: register the JWK above at the provider,\n"
	        "     or `p11jwt jwks --out FILE` for the file your jwks_uri serves\n"
	        "  3. switch: state = active for '%s'; state = retiring and retire_after = DATE\n"
	        "     for '%s'; `p11jwt reload` (profiles with --key @active follow)\n"
	        "  4. after DATE: remove '%s' from the provider, the token and the file,\n"
	        "     `p11jwt reload`, and publish the JWKS again\n",
	        label, adm_keytype_name(type), tok_label(tok), o.key, label, label, o.key, label,
	        o.key, o.key);
	r = 0;
out:
	adm_key_clear(&k);
	tok_close(tok);
	free(id);
	return r;
}
