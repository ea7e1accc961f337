/* SPDX-License-Identifier: MIT */
/* Loading PKCS#11 modules: allowlisted by realpath() (ssh-agent -P), from a
 * path or p11-kit's registry, initialised with CKF_OS_LOCKING_OK. */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

static bool path_under(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	while (n > 1 && dir[n - 1] == '/')
		n--;
	if (n == 1 && dir[0] == '/')
		return path[0] == '/';
	return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/* Under /usr/lib<anything>/ or /usr/local/lib<anything>/, e.g. /usr/lib64/. */
static bool system_libdir(const char *real)
{
	const char *p;

	if (strncmp(real, "/usr/lib", 8) == 0)
		p = real + 8;
	else if (strncmp(real, "/usr/local/lib", 14) == 0)
		p = real + 14;
	else
		return false;
	p += strcspn(p, "/");
	return *p == '/';
}

/* realpath() the module and accept it only from an allowed directory, the
 * way ssh-agent -P does: a module is code run with access to the PIN. */
static int module_check(const tok_config *cfg, const char *path, char **ret_real)
{
	char *real = NULL, *dirreal = NULL, *slash;
	size_t i;
	int r;

	real = realpath(path, NULL);
	if (real == NULL)
		return err_set(P11J_E_MODULE, "cannot use PKCS#11 module '%s': %s", path,
		               strerror(errno));
	if (system_libdir(real))
		goto ok;
	for (i = 0; cfg->module_allow != NULL && cfg->module_allow[i] != NULL; i++) {
		dirreal = realpath(cfg->module_allow[i], NULL);
		if (dirreal != NULL && path_under(real, dirreal))
			goto ok;
		free(dirreal);
		dirreal = NULL;
	}
	slash = strrchr(real, '/');
	if (slash != NULL && slash != real)
		*slash = '\0';
	r = err_set(P11J_E_MODULE,
	            "PKCS#11 module '%s' resolves to '%s/%s', outside the allowed directories "
	            "(/usr/lib*/, /usr/local/lib*/); allow it with --module-allow %s",
	            path, real, slash ? slash + 1 : "", real);
	free(real);
	return r;
ok:
	free(dirreal);
	*ret_real = real;
	return 0;
}

const char *tok_module_file(const tok_ctx *ctx, size_t i)
{
	if (ctx->files != NULL && ctx->files[i] != NULL)
		return ctx->files[i];
	return "(unknown file)";
}

/* A failed C_Initialize: lead, the module's file and, for the answer
 * modules give when they miss their parameters, how to pass them. */
static int init_error(const tok_ctx *ctx, size_t i, CK_RV rv, const char *lead)
{
	const char *hint = "";
	char *res = NULL;
	int r;

	if (ctx->mods_from_registry)
		res = p11_kit_config_option(ctx->mods[i], "x-init-reserved");
	if (res != NULL)
		hint = " (p11-kit gave it the x-init-reserved line of its registration: check it)";
	else if (rv == CKR_ARGUMENTS_BAD && ctx->mods_from_registry)
		hint = " (its p11-kit registration has no x-init-reserved line: does it need one?)";
	else if (rv == CKR_ARGUMENTS_BAD && ctx->init_args == NULL)
		hint = " (a module that needs initialisation parameters, such as NSS softoken, "
		       "gets them with --module-init-args or module_init_args)";
	else if (rv == CKR_ARGUMENTS_BAD)
		hint = " (check its initialisation parameters)";
	r = err_set(P11J_E_MODULE, "%s %s: C_Initialize failed: %s%s", lead,
	            tok_module_file(ctx, i), tok_ckr_name(rv), hint);
	free(res);
	return r;
}

/* Without CKF_OS_LOCKING_OK SoftHSM turns its own locking off, so a module
 * loaded by path gets it, with the configured parameters as pReserved.
 * p11-kit initialises a managed registered module itself (C_Initialize
 * with NULL), with OS locking and the registration's x-init-reserved: our
 * own arguments would replace those. An unmanaged one ("managed: no") is
 * called directly, so it gets the same two here. */
static CK_RV module_init(const tok_ctx *ctx, size_t i)
{
	CK_FUNCTION_LIST *m = ctx->mods[i];
	CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
	char *reserved = NULL;
	CK_RV rv;

	if (ctx->mods_from_registry && !(p11_kit_module_get_flags(m) & P11_KIT_MODULE_UNMANAGED))
		return m->C_Initialize(NULL);
	if (ctx->mods_from_registry)
		reserved = p11_kit_config_option(m, "x-init-reserved");
	args.pReserved = reserved != NULL ? reserved : ctx->init_args;
	rv = m->C_Initialize(&args);
	free(reserved);
	return rv;
}

int tok_module_init(const tok_ctx *ctx, size_t i)
{
	CK_RV rv = module_init(ctx, i);

	if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
		return init_error(ctx, i, rv, "PKCS#11 module");
	return 0;
}

/* Each module's file, for messages. */
static int files_note(tok_ctx *ctx, size_t n)
{
	size_t i;

	ctx->files = calloc(n + 1, sizeof(*ctx->files));
	if (ctx->files == NULL)
		return err_nomem();
	for (i = 0; i < n; i++)
		ctx->files[i] = p11_kit_module_get_filename(ctx->mods[i]);
	return 0;
}

/* NSS softoken (3.87) dereferences NULL in C_Initialize when its parameters
 * name neither a database directory nor "no database": refuse those here
 * rather than crash. */
static int nss_args_check(const char *real, const char *args)
{
	const char *base = strrchr(real, '/');

	base = base != NULL ? base + 1 : real;
	if (args == NULL || strncmp(base, "libsoftokn3.", 12) != 0 ||
	    strstr(args, "configdir=") != NULL || strstr(args, "noCertDB") != NULL)
		return 0;
	return err_set(P11J_E_MODULE,
	               "PKCS#11 module %s (NSS softoken): its initialisation parameters need "
	               "configdir='sql:DIR' (or flags=noCertDB); NSS crashes without",
	               real);
}

/* The one module at path, allowlisted. */
static int module_from_path(tok_ctx *ctx, const tok_config *cfg, const char *path)
{
	char *real = NULL;
	const char *m;
	int r;

	r = module_check(cfg, path, &real);
	if (r < 0)
		return r;
	if ((r = nss_args_check(real, cfg->module_init_args)) < 0) {
		free(real);
		return r;
	}
	ctx->mods = calloc(2, sizeof(*ctx->mods));
	ctx->state = calloc(1, sizeof(*ctx->state));
	ctx->files = calloc(2, sizeof(*ctx->files));
	if (ctx->mods == NULL || ctx->state == NULL || ctx->files == NULL) {
		r = err_nomem();
		goto out;
	}
	if (cfg->module_init_args != NULL &&
	    (ctx->init_args = strdup(cfg->module_init_args)) == NULL) {
		r = err_nomem();
		goto out;
	}
	ctx->mods[0] = p11_kit_module_load(real, 0);
	if (ctx->mods[0] == NULL) {
		m = p11_kit_message();
		r = err_set(P11J_E_MODULE, "cannot load PKCS#11 module '%s': %s", real,
		            m ? m : "unknown reason");
		goto out;
	}
	ctx->files[0] = real;
	real = NULL;
out:
	free(real);
	return r;
}

/* p11-kit's registered modules (each checked before it is initialised). */
static int modules_from_registry(tok_ctx *ctx)
{
	const char *m;
	size_t n = 0;

	ctx->mods = p11_kit_modules_load(NULL, 0);
	ctx->mods_from_registry = true;
	if (ctx->mods == NULL) {
		m = p11_kit_message();
		return err_set(P11J_E_MODULE, "cannot load the p11-kit registered modules: %s",
		               m ? m : "unknown reason");
	}
	while (ctx->mods[n] != NULL)
		n++;
	ctx->state = calloc(n + 1, sizeof(*ctx->state));
	if (ctx->state == NULL)
		return err_nomem();
	return files_note(ctx, n);
}

/* A registered module that is not the URI's module-name, or that lies
 * outside the allowed directories (user configuration can register
 * modules too): passed over, the latter with a warning. */
static bool module_passed_over(tok_ctx *ctx, const tok_config *cfg, CK_FUNCTION_LIST *m,
                               const char *want_name)
{
	char *fn = p11_kit_module_get_filename(m);
	char *nm = p11_kit_module_get_name(m);
	char *rp = NULL;
	bool skip = false;

	if (want_name != NULL && (nm == NULL || strcmp(nm, want_name) != 0))
		skip = true;
	if (!skip && fn != NULL && module_check(cfg, fn, &rp) < 0) {
		tok_log(ctx, TOK_LOG_WARNING, "skipping module %s: %s", fn, err_msg());
		skip = true;
	}
	free(rp);
	free(fn);
	free(nm);
	return skip;
}

/* The registration's x-init-reserved, checked as ours are (NSS). */
static bool registered_args_bad(tok_ctx *ctx, size_t i)
{
	char *res = p11_kit_config_option(ctx->mods[i], "x-init-reserved");
	bool bad = false;

	if (res != NULL && ctx->files[i] != NULL && nss_args_check(ctx->files[i], res) < 0) {
		tok_log(ctx, TOK_LOG_WARNING, "skipping module %s: %s", ctx->files[i], err_msg());
		bad = true;
	}
	free(res);
	return bad;
}

int tok_module_load(tok_ctx *ctx, const tok_config *cfg, P11KitUri *uri)
{
	const char *path = cfg->module_path;
	const char *want_name = p11_kit_uri_get_module_name(uri);
	size_t i, usable = 0;
	int r;

	if (path == NULL)
		path = p11_kit_uri_get_module_path(uri);
	if (path == NULL && cfg->module_init_args != NULL)
		return err_set(P11J_E_BAD_REQUEST,
		               "module initialisation parameters need a module path "
		               "(--module or module); modules registered with p11-kit take "
		               "theirs from the registration's x-init-reserved");
	r = path != NULL ? module_from_path(ctx, cfg, path) : modules_from_registry(ctx);
	if (r < 0)
		return r;
	for (i = 0; ctx->mods[i] != NULL; i++) {
		CK_FUNCTION_LIST *m = ctx->mods[i];
		CK_RV rv;

		if (ctx->mods_from_registry && module_passed_over(ctx, cfg, m, want_name))
			continue;
		if (ctx->mods_from_registry && registered_args_bad(ctx, i))
			continue;
		rv = module_init(ctx, i);
		if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			if (!ctx->mods_from_registry)
				return init_error(ctx, i, rv, "PKCS#11 module");
			(void)init_error(ctx, i, rv, "skipping module");
			tok_log(ctx, TOK_LOG_WARNING, "%s", err_msg());
			continue;
		}
		/* ALREADY_INITIALIZED: someone else in the process owns it and
		 * will finalize it. */
		ctx->state[i] = rv == CKR_OK ? MOD_OURS : MOD_SHARED;
		usable++;
	}
	if (usable == 0 && want_name != NULL)
		return err_set(P11J_E_MODULE,
		               "no usable PKCS#11 module named '%s' is registered "
		               "with p11-kit",
		               want_name);
	if (usable == 0)
		return err_set(P11J_E_MODULE,
		               "no usable PKCS#11 module is registered with p11-kit; "
		               "give a module path");
	return 0;
}

void tok_module_unload(tok_ctx *ctx)
{
	size_t i, n = 0;

	if (ctx->mods != NULL) {
		while (ctx->mods[n] != NULL)
			n++;
		n = n > 0 ? n : 1; /* a path whose load failed: its file may be noted */
		for (i = 0; ctx->mods[i] != NULL; i++)
			if (ctx->state != NULL && ctx->state[i] == MOD_OURS)
				ctx->mods[i]->C_Finalize(NULL);
		if (ctx->mods_from_registry) {
			p11_kit_modules_release(ctx->mods);
		} else {
			if (ctx->mods[0] != NULL)
				p11_kit_module_release(ctx->mods[0]);
			free(ctx->mods);
		}
	}
	free(ctx->state);
	for (i = 0; ctx->files != NULL && i < n; i++)
		free(ctx->files[i]);
	free(ctx->files);
	free(ctx->init_args);
	ctx->mods = NULL;
	ctx->state = NULL;
	ctx->files = NULL;
	ctx->init_args = NULL;
	ctx->f = NULL;
}
