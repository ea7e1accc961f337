/* SPDX-License-Identifier: MIT */
/*
 * Token layer. See docs/design-pkcs11.md for why it is shaped this way:
 * modules allowlisted by realpath(), one login per token, object handles
 * resolved once at open, a pool of sessions so that concurrent signatures
 * never share a session, and one place (tok_ck) where CK_RV becomes P11J_E_*.
 */
#include "pkcs11/tok.h"
#include "pkcs11/tok-internal.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/jwk.h"
#include "jose/jws.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

/* Older pkcs11.h copies predate PKCS#11 3.0's EdDSA; 0.24's has them. */
#ifndef CKK_EC_EDWARDS
#define CKK_EC_EDWARDS 0x40UL
#endif
#ifndef CKM_EDDSA
#define CKM_EDDSA 0x1057UL
#endif

#define TOK_POOL_MAX 64          /* sessions open at once per token */
#define TOK_SIG_MAX 1024         /* RSA 8192 */
#define TOK_ATTR_MAX 1024        /* label, id, modulus */
#define TOK_CERT_MAX (64 * 1024) /* DER certificate */
#define TOK_PIN_MAX 256
#define TOK_FIND_MAX 4096 /* objects per search */

struct tok_key {
	char *name;
	char *uri;
	uint8_t *id;
	size_t id_len;
	EVP_PKEY *pub;
	uint8_t *cert;
	size_t cert_len;
	jwa_keykind kind;
	bool unsafe;
	unsigned algs;
	size_t sig_len; /* exact length of a signature */
	/* CK_INVALID_HANDLE while locked (or no usable private key); valid for
	 * one login only: found again after login and recovery. Read under
	 * op_lock (shared), written under op_lock (exclusive). */
	CK_OBJECT_HANDLE priv;
	bool always_auth; /* CKA_ALWAYS_AUTHENTICATE: context login per C_Sign */
};

enum { MOD_SKIPPED = 0, MOD_SHARED = 1, MOD_OURS = 2 };

struct tok_ctx {
	CK_FUNCTION_LIST **mods; /* NULL-terminated */
	uint8_t *state;          /* MOD_* per module */
	bool mods_from_registry; /* p11_kit_modules_load() list */
	CK_FUNCTION_LIST *f;     /* module of the chosen token */
	CK_SLOT_ID slot;
	CK_TOKEN_INFO ti;
	char label[sizeof(((CK_TOKEN_INFO *)0)->label) + 1];

	bool logged_in;
	bool no_login;
	bool allow_unsafe;
	size_t mod_idx;      /* ctx->f is ctx->mods[mod_idx] */
	bool reinit_pending; /* C_Finalize + C_Initialize at the next recovery */
	bool force_raw;      /* prefer a row's raw mechanism (tests) */
	unsigned algs_mech;  /* JWA_BIT(alg): the token lists the row's mech */
	unsigned algs_raw;   /* JWA_BIT(alg): the token lists the row's raw */

	tok_key **keys;
	size_t nkeys;

	pthread_mutex_t mu; /* pool state below */
	pthread_cond_t cv;
	pthread_mutex_t close_mu; /* SoftHSM: never close sessions concurrently */
	CK_SESSION_HANDLE free_s[TOK_POOL_MAX];
	size_t nfree;
	size_t nopen;
	bool locks_ok;

	/* PIN lifecycle and recovery. op_lock is held shared by each signature
	 * for its PKCS#11 calls and exclusively by login, lock and recovery,
	 * which change sessions, handles and the cached PIN. state_mu guards
	 * tstate, recovering and next_try_ms, so that callers can fail fast
	 * without waiting for op_lock. */
	pthread_rwlock_t op_lock;
	pthread_mutex_t state_mu;
	tok_state tstate;
	bool recovering;
	uint64_t next_try_ms; /* no recovery attempt before this */
	char *pin;            /* mlock()ed page, TOK_PIN_MAX + 1 bytes */
	size_t pin_len;
	bool pin_cached;
	bool pinpad; /* logged in through the protected authentication path */

	tok_log_fn log;
	void *log_ud;
};

static __attribute__((format(printf, 3, 4))) void tok_log(const tok_ctx *ctx, int level,
                                                          const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (ctx->log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	ctx->log(level, buf, ctx->log_ud);
}

/* ---- CK_RV names and mapping ---------------------------------------- */

/* clang-format off */
#define CKR_ENTRY(x) { x, #x }
static const struct {
	CK_RV rv;
	const char *name;
} ckr_names[] = {
	CKR_ENTRY(CKR_OK), CKR_ENTRY(CKR_CANCEL), CKR_ENTRY(CKR_HOST_MEMORY),
	CKR_ENTRY(CKR_SLOT_ID_INVALID), CKR_ENTRY(CKR_GENERAL_ERROR),
	CKR_ENTRY(CKR_FUNCTION_FAILED), CKR_ENTRY(CKR_ARGUMENTS_BAD), CKR_ENTRY(CKR_NO_EVENT),
	CKR_ENTRY(CKR_NEED_TO_CREATE_THREADS), CKR_ENTRY(CKR_CANT_LOCK),
	CKR_ENTRY(CKR_ATTRIBUTE_READ_ONLY), CKR_ENTRY(CKR_ATTRIBUTE_SENSITIVE),
	CKR_ENTRY(CKR_ATTRIBUTE_TYPE_INVALID), CKR_ENTRY(CKR_ATTRIBUTE_VALUE_INVALID),
	CKR_ENTRY(CKR_ACTION_PROHIBITED), CKR_ENTRY(CKR_DATA_INVALID),
	CKR_ENTRY(CKR_DATA_LEN_RANGE), CKR_ENTRY(CKR_DEVICE_ERROR), CKR_ENTRY(CKR_DEVICE_MEMORY),
	CKR_ENTRY(CKR_DEVICE_REMOVED), CKR_ENTRY(CKR_ENCRYPTED_DATA_INVALID),
	CKR_ENTRY(CKR_ENCRYPTED_DATA_LEN_RANGE), CKR_ENTRY(CKR_FUNCTION_CANCELED),
	CKR_ENTRY(CKR_FUNCTION_NOT_PARALLEL), CKR_ENTRY(CKR_FUNCTION_NOT_SUPPORTED),
	CKR_ENTRY(CKR_KEY_HANDLE_INVALID), CKR_ENTRY(CKR_KEY_SIZE_RANGE),
	CKR_ENTRY(CKR_KEY_TYPE_INCONSISTENT), CKR_ENTRY(CKR_KEY_NOT_NEEDED),
	CKR_ENTRY(CKR_KEY_CHANGED), CKR_ENTRY(CKR_KEY_NEEDED), CKR_ENTRY(CKR_KEY_INDIGESTIBLE),
	CKR_ENTRY(CKR_KEY_FUNCTION_NOT_PERMITTED), CKR_ENTRY(CKR_KEY_NOT_WRAPPABLE),
	CKR_ENTRY(CKR_KEY_UNEXTRACTABLE), CKR_ENTRY(CKR_MECHANISM_INVALID),
	CKR_ENTRY(CKR_MECHANISM_PARAM_INVALID), CKR_ENTRY(CKR_OBJECT_HANDLE_INVALID),
	CKR_ENTRY(CKR_OPERATION_ACTIVE), CKR_ENTRY(CKR_OPERATION_NOT_INITIALIZED),
	CKR_ENTRY(CKR_PIN_INCORRECT), CKR_ENTRY(CKR_PIN_INVALID), CKR_ENTRY(CKR_PIN_LEN_RANGE),
	CKR_ENTRY(CKR_PIN_EXPIRED), CKR_ENTRY(CKR_PIN_LOCKED), CKR_ENTRY(CKR_SESSION_CLOSED),
	CKR_ENTRY(CKR_SESSION_COUNT), CKR_ENTRY(CKR_SESSION_HANDLE_INVALID),
	CKR_ENTRY(CKR_SESSION_PARALLEL_NOT_SUPPORTED), CKR_ENTRY(CKR_SESSION_READ_ONLY),
	CKR_ENTRY(CKR_SESSION_EXISTS), CKR_ENTRY(CKR_SESSION_READ_ONLY_EXISTS),
	CKR_ENTRY(CKR_SESSION_READ_WRITE_SO_EXISTS), CKR_ENTRY(CKR_SIGNATURE_INVALID),
	CKR_ENTRY(CKR_SIGNATURE_LEN_RANGE), CKR_ENTRY(CKR_TEMPLATE_INCOMPLETE),
	CKR_ENTRY(CKR_TEMPLATE_INCONSISTENT), CKR_ENTRY(CKR_TOKEN_NOT_PRESENT),
	CKR_ENTRY(CKR_TOKEN_NOT_RECOGNIZED), CKR_ENTRY(CKR_TOKEN_WRITE_PROTECTED),
	CKR_ENTRY(CKR_UNWRAPPING_KEY_SIZE_RANGE), CKR_ENTRY(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
	CKR_ENTRY(CKR_USER_ALREADY_LOGGED_IN), CKR_ENTRY(CKR_USER_NOT_LOGGED_IN),
	CKR_ENTRY(CKR_USER_PIN_NOT_INITIALIZED), CKR_ENTRY(CKR_USER_TYPE_INVALID),
	CKR_ENTRY(CKR_USER_ANOTHER_ALREADY_LOGGED_IN), CKR_ENTRY(CKR_USER_TOO_MANY_TYPES),
	CKR_ENTRY(CKR_WRAPPED_KEY_INVALID), CKR_ENTRY(CKR_WRAPPED_KEY_LEN_RANGE),
	CKR_ENTRY(CKR_WRAPPING_KEY_HANDLE_INVALID), CKR_ENTRY(CKR_WRAPPING_KEY_SIZE_RANGE),
	CKR_ENTRY(CKR_WRAPPING_KEY_TYPE_INCONSISTENT), CKR_ENTRY(CKR_RANDOM_SEED_NOT_SUPPORTED),
	CKR_ENTRY(CKR_RANDOM_NO_RNG), CKR_ENTRY(CKR_DOMAIN_PARAMS_INVALID),
	CKR_ENTRY(CKR_CURVE_NOT_SUPPORTED), CKR_ENTRY(CKR_BUFFER_TOO_SMALL),
	CKR_ENTRY(CKR_SAVED_STATE_INVALID), CKR_ENTRY(CKR_INFORMATION_SENSITIVE),
	CKR_ENTRY(CKR_STATE_UNSAVEABLE), CKR_ENTRY(CKR_CRYPTOKI_NOT_INITIALIZED),
	CKR_ENTRY(CKR_CRYPTOKI_ALREADY_INITIALIZED), CKR_ENTRY(CKR_MUTEX_BAD),
	CKR_ENTRY(CKR_MUTEX_NOT_LOCKED), CKR_ENTRY(CKR_NEW_PIN_MODE), CKR_ENTRY(CKR_NEXT_OTP),
	CKR_ENTRY(CKR_EXCEEDED_MAX_ITERATIONS), CKR_ENTRY(CKR_FIPS_SELF_TEST_FAILED),
	CKR_ENTRY(CKR_LIBRARY_LOAD_FAILED), CKR_ENTRY(CKR_PIN_TOO_WEAK),
	CKR_ENTRY(CKR_PUBLIC_KEY_INVALID), CKR_ENTRY(CKR_FUNCTION_REJECTED),
};
/* clang-format on */

const char *tok_ckr_name(unsigned long rv)
{
	static __thread char buf[48];
	size_t i;

	for (i = 0; i < ARRAY_SIZE(ckr_names); i++)
		if (ckr_names[i].rv == rv)
			return ckr_names[i].name;
	if (rv >= CKR_VENDOR_DEFINED)
		snprintf(buf, sizeof(buf), "CKR_VENDOR_DEFINED+0x%lx", rv - CKR_VENDOR_DEFINED);
	else
		snprintf(buf, sizeof(buf), "CKR_0x%08lx", rv);
	return buf;
}

int tok_ckr_to_err(unsigned long rv)
{
	switch (rv) {
	case CKR_OK:
	case CKR_USER_ALREADY_LOGGED_IN:
	case CKR_CRYPTOKI_ALREADY_INITIALIZED:
		return 0;
	case CKR_DEVICE_REMOVED:
	case CKR_DEVICE_ERROR:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_TOKEN_NOT_RECOGNIZED:
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_CRYPTOKI_NOT_INITIALIZED:
		return P11J_E_TOKEN_UNAVAILABLE;
	case CKR_PIN_INCORRECT:
	case CKR_PIN_LOCKED:
	case CKR_PIN_EXPIRED:
	case CKR_PIN_INVALID:
	case CKR_PIN_LEN_RANGE:
		return P11J_E_PIN_INCORRECT;
	case CKR_MECHANISM_INVALID:
	case CKR_MECHANISM_PARAM_INVALID:
		return P11J_E_UNSUPPORTED_ALG;
	case CKR_HOST_MEMORY:
		return P11J_E_NOMEM;
	default:
		return P11J_E_PKCS11;
	}
}

/* The one place a failing C_* call becomes an error: "C_Login on token
 * 'p11jwt-test' failed: CKR_PIN_INCORRECT". */
static int tok_ck(const tok_ctx *ctx, const char *fn, CK_RV rv)
{
	int code = tok_ckr_to_err(rv);

	if (code == 0)
		return 0;
	if (ctx != NULL && ctx->label[0] != '\0')
		return err_set(code, "%s on token '%s' failed: %s", fn, ctx->label,
		               tok_ckr_name(rv));
	return err_set(code, "%s failed: %s", fn, tok_ckr_name(rv));
}

/* ---- small helpers --------------------------------------------------- */

static void trim_padded(char *dst, const unsigned char *src, size_t n)
{
	while (n > 0 && (src[n - 1] == ' ' || src[n - 1] == '\0'))
		n--;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static const char *kind_name(jwa_keykind k)
{
	switch (k) {
	case KEYKIND_RSA:
		return "RSA";
	case KEYKIND_P256:
		return "P-256";
	case KEYKIND_P384:
		return "P-384";
	case KEYKIND_P521:
		return "P-521";
	case KEYKIND_ED25519:
		return "Ed25519";
	default:
		return "unknown";
	}
}

/* ---- module loading -------------------------------------------------- */

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

static int modules_load(tok_ctx *ctx, const tok_config *cfg, P11KitUri *uri)
{
	const char *path = cfg->module_path;
	const char *want_name = p11_kit_uri_get_module_name(uri);
	char *real = NULL;
	CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
	size_t i, n = 0, usable = 0;
	int r;

	if (path == NULL)
		path = p11_kit_uri_get_module_path(uri);
	if (path != NULL) {
		r = module_check(cfg, path, &real);
		if (r < 0)
			return r;
		ctx->mods = calloc(2, sizeof(*ctx->mods));
		ctx->state = calloc(1, sizeof(*ctx->state));
		if (ctx->mods == NULL || ctx->state == NULL) {
			free(real);
			return err_set(P11J_E_NOMEM, "out of memory");
		}
		ctx->mods[0] = p11_kit_module_load(real, 0);
		if (ctx->mods[0] == NULL) {
			const char *m = p11_kit_message();

			r = err_set(P11J_E_MODULE, "cannot load PKCS#11 module '%s': %s", real,
			            m ? m : "unknown reason");
			free(real);
			return r;
		}
		free(real);
		n = 1;
	} else {
		ctx->mods = p11_kit_modules_load(NULL, 0);
		ctx->mods_from_registry = true;
		if (ctx->mods == NULL) {
			const char *m = p11_kit_message();

			return err_set(P11J_E_MODULE,
			               "cannot load the p11-kit registered modules: %s",
			               m ? m : "unknown reason");
		}
		while (ctx->mods[n] != NULL)
			n++;
		ctx->state = calloc(n + 1, sizeof(*ctx->state));
		if (ctx->state == NULL)
			return err_set(P11J_E_NOMEM, "out of memory");
	}

	for (i = 0; i < n; i++) {
		CK_FUNCTION_LIST *m = ctx->mods[i];
		CK_RV rv;

		if (ctx->mods_from_registry) {
			char *fn = p11_kit_module_get_filename(m);
			char *nm = p11_kit_module_get_name(m);
			bool skip = false;

			if (want_name != NULL && (nm == NULL || strcmp(nm, want_name) != 0))
				skip = true;
			if (!skip && fn != NULL) {
				char *rp = NULL;

				if (module_check(cfg, fn, &rp) < 0) {
					tok_log(ctx, TOK_LOG_WARNING, "skipping module: %s",
					        err_msg());
					skip = true;
				}
				free(rp);
			}
			free(fn);
			free(nm);
			if (skip)
				continue;
		}
		rv = m->C_Initialize(&args);
		if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			r = tok_ck(NULL, "C_Initialize", rv);
			if (!ctx->mods_from_registry)
				return r;
			tok_log(ctx, TOK_LOG_WARNING, "skipping module: %s", err_msg());
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

/* ---- token selection ------------------------------------------------- */

static int token_find(tok_ctx *ctx, P11KitUri *uri, const char *uri_shown)
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
			r = err_set(P11J_E_NOMEM, "out of memory");
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
			if (nseen < 8 && strlen(seen) + strlen(lbl) + 5 < sizeof(seen)) {
				if (nseen > 0)
					strcat(seen, ", ");
				strcat(seen, "'");
				strcat(seen, lbl);
				strcat(seen, "'");
			}
			nseen++;
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

/* ---- mechanisms ------------------------------------------------------ */

#define TOK_CKM_NONE ((CK_MECHANISM_TYPE)-1)

/* DER DigestInfo prefixes (RFC 8017, 9.2 note 1) for the CKM_RSA_PKCS
 * fallback. */
static const uint8_t di_sha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
static const uint8_t di_sha384[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
static const uint8_t di_sha512[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};
#define TOK_DI_LEN sizeof(di_sha256) /* the same for the three */

/* How each JWS algorithm is signed on a token: the one table. mech is the
 * mechanism that hashes and signs on the token; raw signs a digest hashed
 * here (after the DigestInfo prefix when there is one). mech is used when
 * the token lists it, else raw. */
typedef struct {
	jwa_alg alg;
	CK_MECHANISM_TYPE mech;      /* TOK_CKM_NONE: we always hash */
	CK_MECHANISM_TYPE raw;       /* TOK_CKM_NONE: the token always hashes */
	const char *raw_what;        /* the error's words when hashing here fails */
	const EVP_MD *(*md)(void);   /* the hash (NULL: EdDSA) */
	CK_MECHANISM_TYPE pss_hash;  /* PSS: CK_RSA_PKCS_PSS_PARAMS hashAlg */
	CK_RSA_PKCS_MGF_TYPE pss_mgf;
	CK_ULONG pss_slen;           /* salt length: the hash's */
	const uint8_t *digest_info;  /* raw RSA: DER prefix before the digest */
} tok_mech;

/* clang-format off */
static const tok_mech mech_table[] = {
	{JWA_RS256, CKM_SHA256_RSA_PKCS, CKM_RSA_PKCS, "hashing for RSA", EVP_sha256, 0, 0, 0, di_sha256},
	{JWA_RS384, CKM_SHA384_RSA_PKCS, CKM_RSA_PKCS, "hashing for RSA", EVP_sha384, 0, 0, 0, di_sha384},
	{JWA_RS512, CKM_SHA512_RSA_PKCS, CKM_RSA_PKCS, "hashing for RSA", EVP_sha512, 0, 0, 0, di_sha512},
	{JWA_PS256, CKM_SHA256_RSA_PKCS_PSS, TOK_CKM_NONE, NULL, EVP_sha256,
	 CKM_SHA256, CKG_MGF1_SHA256, 32, NULL},
	{JWA_PS384, CKM_SHA384_RSA_PKCS_PSS, TOK_CKM_NONE, NULL, EVP_sha384,
	 CKM_SHA384, CKG_MGF1_SHA384, 48, NULL},
	{JWA_PS512, CKM_SHA512_RSA_PKCS_PSS, TOK_CKM_NONE, NULL, EVP_sha512,
	 CKM_SHA512, CKG_MGF1_SHA512, 64, NULL},
	/* No CKM_ECDSA_SHA* on SoftHSM: hash here, sign the digest. */
	{JWA_ES256, TOK_CKM_NONE, CKM_ECDSA, "hashing for ECDSA", EVP_sha256, 0, 0, 0, NULL},
	{JWA_ES384, TOK_CKM_NONE, CKM_ECDSA, "hashing for ECDSA", EVP_sha384, 0, 0, 0, NULL},
	{JWA_ES512, TOK_CKM_NONE, CKM_ECDSA, "hashing for ECDSA", EVP_sha512, 0, 0, 0, NULL},
	{JWA_EDDSA, CKM_EDDSA, TOK_CKM_NONE, NULL, NULL, 0, 0, 0, NULL},
};
/* clang-format on */

static const tok_mech *mech_find(jwa_alg alg)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(mech_table); i++)
		if (mech_table[i].alg == alg)
			return &mech_table[i];
	return NULL;
}

/* Which rows the token can sign, from C_GetMechanismList, read once. */
static int mechs_read(tok_ctx *ctx)
{
	CK_MECHANISM_TYPE *mt = NULL;
	CK_ULONG n = 0, i;
	size_t j;
	CK_RV rv;
	int r = 0;

	rv = ctx->f->C_GetMechanismList(ctx->slot, NULL, &n);
	if (rv != CKR_OK)
		return tok_ck(ctx, "C_GetMechanismList", rv);
	mt = calloc(n + 1, sizeof(*mt));
	if (mt == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	rv = ctx->f->C_GetMechanismList(ctx->slot, mt, &n);
	if (rv != CKR_OK) {
		r = tok_ck(ctx, "C_GetMechanismList", rv);
		goto out;
	}
	for (i = 0; i < n; i++)
		for (j = 0; j < ARRAY_SIZE(mech_table); j++) {
			if (mt[i] == mech_table[j].mech)
				ctx->algs_mech |= JWA_BIT(mech_table[j].alg);
			if (mt[i] == mech_table[j].raw)
				ctx->algs_raw |= JWA_BIT(mech_table[j].alg);
		}
out:
	free(mt);
	return r;
}

/* Mask of the algs of a key kind this token has a mechanism for. */
static unsigned algs_supported(const tok_ctx *ctx, jwa_keykind kind)
{
	return jwa_algs_for_kind(kind) & (ctx->algs_mech | ctx->algs_raw);
}

/* What C_SignInit and C_Sign get for one signature of in[0..inlen). */
typedef struct {
	CK_MECHANISM mech;
	CK_RSA_PKCS_PSS_PARAMS pss;
	const uint8_t *data;
	CK_ULONG len;
	uint8_t buf[TOK_DI_LEN + EVP_MAX_MD_SIZE]; /* DigestInfo and digest hashed here */
} sign_input;

/* The row's mech when the token lists it (and tests do not force raw),
 * else its raw mechanism on a digest hashed here. The caller wipes
 * ret->buf. */
static int mech_input(const tok_ctx *ctx, jwa_alg alg, const uint8_t *in, size_t inlen,
                      sign_input *ret)
{
	const tok_mech *m = mech_find(alg);
	size_t pre = 0;
	unsigned int mdlen = 0;

	if (m == NULL)
		return err_set(P11J_E_UNSUPPORTED_ALG, "unknown JWS algorithm");
	memset(ret, 0, sizeof(*ret));
	ret->data = in;
	ret->len = (CK_ULONG)inlen;
	if ((ctx->algs_mech & JWA_BIT(alg)) && !(ctx->force_raw && m->raw != TOK_CKM_NONE)) {
		ret->mech.mechanism = m->mech;
		if (m->pss_hash != 0) {
			ret->pss.hashAlg = m->pss_hash;
			ret->pss.mgf = m->pss_mgf;
			ret->pss.sLen = m->pss_slen;
			ret->mech.pParameter = &ret->pss;
			ret->mech.ulParameterLen = sizeof(ret->pss);
		}
		return 0;
	}
	/* The token only does the signature operation: the DigestInfo (RSA)
	 * and the digest are made here. */
	if (m->digest_info != NULL) {
		pre = TOK_DI_LEN;
		memcpy(ret->buf, m->digest_info, pre);
	}
	if (!EVP_Digest(in, inlen, ret->buf + pre, &mdlen, m->md(), NULL))
		return err_set_ossl(P11J_E_CRYPTO, m->raw_what);
	ret->mech.mechanism = m->raw;
	ret->data = ret->buf;
	ret->len = (CK_ULONG)(pre + mdlen);
	return 0;
}

/* ---- PIN ------------------------------------------------------------- */

static int pin_from_file(const char *path, char **ret)
{
	char *buf = NULL, *pin = NULL;
	size_t len = 0;
	int r;

	r = util_read_file(path, TOK_PIN_MAX, true, &buf, &len);
	if (r < 0)
		return r;
	buf[strcspn(buf, "\n")] = '\0';
	util_chomp(buf);
	if (buf[0] == '\0') {
		r = err_set(P11J_E_BAD_REQUEST, "PIN file '%s' is empty", path);
		goto out;
	}
	pin = strdup(buf);
	if (pin == NULL) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}
	*ret = pin;
out:
	freezero_buf(buf, len);
	return r;
}

/* PIN from the config's file, systemd's credential "pin", the URI's
 * pin-source or pin-value, or P11JWT_PIN. *ret is NULL when there is none. */
static int pin_get(const tok_config *cfg, P11KitUri *uri, const char *uri_pin, char **ret)
{
	const char *src, *creds = getenv("CREDENTIALS_DIRECTORY");
	char *pin = NULL;

	*ret = NULL;
	if (cfg->pin_file != NULL)
		return pin_from_file(cfg->pin_file, ret);
	/* LoadCredential=pin:... or SetCredentialEncrypted=pin:...; another
	 * credential directory without a "pin" falls through. */
	if (creds != NULL && creds[0] == '/') {
		char path[PATH_MAX];

		if (snprintf(path, sizeof(path), "%s/pin", creds) < (int)sizeof(path) &&
		    access(path, F_OK) == 0)
			return pin_from_file(path, ret);
	}
	src = p11_kit_uri_get_pin_source(uri);
	if (src != NULL) {
		if (strncmp(src, "file:", 5) == 0) {
			src += 5;
			if (strncmp(src, "//", 2) == 0)
				src += 2;
		} else if (src[0] != '/' && strchr(src, ':') != NULL) {
			return err_set(
			    P11J_E_BAD_REQUEST,
			    "pin-source '%s' is not supported; use a file path or a file: URI",
			    src);
		}
		return pin_from_file(src, ret);
	}
	if (uri_pin != NULL)
		pin = strdup(uri_pin);
	else if (getenv("P11JWT_PIN") != NULL && getenv("P11JWT_PIN")[0] != '\0')
		pin = strdup(getenv("P11JWT_PIN"));
	else
		return 0;
	if (pin == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	*ret = pin;
	return 0;
}

/* PINs a token has rejected in this process, as SHA-256(salt, serial,
 * label, PIN) with a random salt per process (so the list is no dictionary
 * target): the same wrong PIN is never sent twice (pkcs11-provider does the
 * same), because every wrong try brings a smartcard closer to locking. */
#define TOK_BADPIN_MAX 16
static pthread_mutex_t badpin_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t badpin[TOK_BADPIN_MAX][32];
static size_t badpin_n;
static uint8_t badpin_salt[32];
static bool badpin_salted;

static void badpin_digest(const tok_ctx *ctx, const char *pin, size_t pin_len, uint8_t out[32])
{
	EVP_MD_CTX *mc;
	unsigned int len = 0;

	pthread_mutex_lock(&badpin_mu);
	if (!badpin_salted && RAND_bytes(badpin_salt, sizeof(badpin_salt)) == 1)
		badpin_salted = true;
	pthread_mutex_unlock(&badpin_mu);
	memset(out, 0, 32);
	mc = EVP_MD_CTX_new();
	if (mc != NULL && EVP_DigestInit_ex(mc, EVP_sha256(), NULL) &&
	    EVP_DigestUpdate(mc, badpin_salt, sizeof(badpin_salt)) &&
	    EVP_DigestUpdate(mc, ctx->ti.serialNumber, sizeof(ctx->ti.serialNumber)) &&
	    EVP_DigestUpdate(mc, ctx->ti.label, sizeof(ctx->ti.label)) &&
	    EVP_DigestUpdate(mc, pin, pin_len))
		EVP_DigestFinal_ex(mc, out, &len);
	EVP_MD_CTX_free(mc);
}

static bool badpin_known(const uint8_t d[32])
{
	bool found = false;
	size_t i;

	pthread_mutex_lock(&badpin_mu);
	for (i = 0; i < badpin_n && !found; i++)
		found = CRYPTO_memcmp(badpin[i], d, 32) == 0;
	pthread_mutex_unlock(&badpin_mu);
	return found;
}

static void badpin_add(const uint8_t d[32])
{
	pthread_mutex_lock(&badpin_mu);
	memcpy(badpin[badpin_n % TOK_BADPIN_MAX], d, 32);
	badpin_n = badpin_n < TOK_BADPIN_MAX ? badpin_n + 1 : TOK_BADPIN_MAX;
	pthread_mutex_unlock(&badpin_mu);
}

/* The cached PIN lives in its own page: mlock()ed so it is never swapped
 * out, MADV_DONTDUMP so it is in no core dump (the agent is not dumpable
 * anyway). mlock() can fail under a small RLIMIT_MEMLOCK: then it warns. */
static int pin_store_init(tok_ctx *ctx)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = TOK_PIN_MAX + 1;
	void *p;

	len = (len + pg - 1) / pg * pg;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return err_set(P11J_E_NOMEM, "cannot map memory for the PIN: %s", strerror(errno));
#ifdef MADV_DONTDUMP
	(void)madvise(p, len, MADV_DONTDUMP);
#endif
	if (mlock(p, len) < 0)
		tok_log(ctx, TOK_LOG_WARNING,
		        "cannot lock the PIN's memory (%s); it could be swapped out",
		        strerror(errno));
	ctx->pin = p;
	return 0;
}

static void pin_store_wipe(tok_ctx *ctx)
{
	if (ctx->pin != NULL)
		OPENSSL_cleanse(ctx->pin, TOK_PIN_MAX + 1);
	ctx->pin_len = 0;
	ctx->pin_cached = false;
	ctx->pinpad = false;
}

static void pin_store_free(tok_ctx *ctx)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = TOK_PIN_MAX + 1;

	if (ctx->pin == NULL)
		return;
	pin_store_wipe(ctx);
	len = (len + pg - 1) / pg * pg;
	munlock(ctx->pin, len);
	munmap(ctx->pin, len);
	ctx->pin = NULL;
}

/* C_Login(CKU_USER) on session s with pin (NULL: the protected
 * authentication path), never twice with a PIN the token rejected; on
 * success the PIN is cached for logging in again after a fault. */
static int session_login(tok_ctx *ctx, CK_SESSION_HANDLE s, const char *pin, size_t len)
{
	uint8_t digest[32];
	CK_RV rv;
	int r;

	if (pin != NULL && (len == 0 || len > TOK_PIN_MAX))
		return err_set(P11J_E_PIN_INCORRECT, "a PIN must be 1 to %d bytes", TOK_PIN_MAX);
	if (pin == NULL) {
		rv = ctx->f->C_Login(s, CKU_USER, NULL, 0);
		r = tok_ck(ctx, "C_Login", rv);
		if (r < 0)
			return r;
		pin_store_wipe(ctx);
		ctx->pinpad = true;
		ctx->logged_in = true;
		return 0;
	}
	badpin_digest(ctx, pin, len, digest);
	if (badpin_known(digest)) {
		OPENSSL_cleanse(digest, sizeof(digest));
		return err_set(P11J_E_PIN_INCORRECT,
		               "token '%s' already rejected this PIN; not "
		               "trying it again (CKR_PIN_INCORRECT)",
		               ctx->label);
	}
	rv = ctx->f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)pin, (CK_ULONG)len);
	if (rv == CKR_PIN_INCORRECT)
		badpin_add(digest);
	OPENSSL_cleanse(digest, sizeof(digest));
	r = tok_ck(ctx, "C_Login", rv);
	if (r < 0)
		return r;
	if (pin != ctx->pin) {
		pin_store_wipe(ctx);
		memcpy(ctx->pin, pin, len);
		ctx->pin[len] = '\0';
		ctx->pin_len = len;
	}
	ctx->pin_cached = true;
	ctx->logged_in = true;
	return 0;
}

/* Login at open. *ret_locked: no PIN anywhere and cfg->allow_locked. */
static int login(tok_ctx *ctx, const tok_config *cfg, P11KitUri *uri, const char *uri_pin,
                 CK_SESSION_HANDLE s, bool *ret_locked)
{
	char *pin = NULL;
	int r;

	*ret_locked = false;
	r = pin_get(cfg, uri, uri_pin, &pin);
	if (r < 0)
		return r;
	if (pin == NULL) {
		if (ctx->ti.flags & CKF_PROTECTED_AUTHENTICATION_PATH)
			return session_login(ctx, s, NULL, 0);
		if (!(ctx->ti.flags & CKF_LOGIN_REQUIRED))
			return 0;
		if (cfg->allow_locked) {
			*ret_locked = true;
			return 0;
		}
		return err_set(P11J_E_PIN_REQUIRED,
		               "token '%s' needs a PIN: give a PIN file, a pin-source in the URI, "
		               "or set P11JWT_PIN",
		               ctx->label);
	}
	r = session_login(ctx, s, pin, strlen(pin));
	freezero_str(pin);
	return r;
}

/* ---- object attributes ----------------------------------------------- */

/* Variable-length attribute into a fresh buffer (NUL-terminated for
 * convenience). Absent or unreadable: *ret NULL, *ret_len 0, returns 0. */
static int attr_get(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                    size_t max, uint8_t **ret, size_t *ret_len)
{
	CK_ATTRIBUTE a = {t, NULL, 0};
	uint8_t *buf = NULL;
	CK_RV rv;

	*ret = NULL;
	*ret_len = 0;
	rv = ctx->f->C_GetAttributeValue(s, o, &a, 1);
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE ||
	    a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
		return 0;
	if (rv != CKR_OK)
		return tok_ck(ctx, "C_GetAttributeValue", rv);
	if (a.ulValueLen > max)
		return err_set(P11J_E_PKCS11, "attribute 0x%lx on token '%s' is over %zu bytes",
		               (unsigned long)t, ctx->label, max);
	buf = calloc(1, a.ulValueLen + 1);
	if (buf == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	a.pValue = buf;
	rv = ctx->f->C_GetAttributeValue(s, o, &a, 1);
	if (rv != CKR_OK) {
		free(buf);
		return tok_ck(ctx, "C_GetAttributeValue", rv);
	}
	*ret = buf;
	*ret_len = a.ulValueLen;
	return 0;
}

/* Fixed-size attribute; returns 1 if read, 0 if absent. */
static int attr_fixed(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                      void *val, size_t len)
{
	CK_ATTRIBUTE a = {t, val, len};
	CK_RV rv;

	rv = ctx->f->C_GetAttributeValue(s, o, &a, 1);
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE ||
	    a.ulValueLen != len)
		return 0;
	if (rv != CKR_OK)
		return tok_ck(ctx, "C_GetAttributeValue", rv);
	return 1;
}

static int objects_find(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                        CK_OBJECT_HANDLE **ret, size_t *ret_n)
{
	CK_OBJECT_HANDLE *v = NULL, *nv;
	size_t cnt = 0, cap = 0;
	CK_ULONG got;
	CK_RV rv;
	int r = 0;

	rv = ctx->f->C_FindObjectsInit(s, tmpl, n);
	if (rv != CKR_OK)
		return tok_ck(ctx, "C_FindObjectsInit", rv);
	for (;;) {
		if (cnt == cap) {
			if (cap >= TOK_FIND_MAX) {
				r = err_set(P11J_E_PKCS11,
				            "more than %d matching objects on token '%s'",
				            TOK_FIND_MAX, ctx->label);
				goto out;
			}
			cap = cap ? cap * 2 : 16;
			nv = realloc(v, cap * sizeof(*v));
			if (nv == NULL) {
				r = err_set(P11J_E_NOMEM, "out of memory");
				goto out;
			}
			v = nv;
		}
		got = 0;
		rv = ctx->f->C_FindObjects(s, v + cnt, cap - cnt, &got);
		if (rv != CKR_OK) {
			r = tok_ck(ctx, "C_FindObjects", rv);
			goto out;
		}
		if (got == 0)
			break;
		cnt += got;
	}
out:
	ctx->f->C_FindObjectsFinal(s);
	if (r < 0) {
		free(v);
		return r;
	}
	*ret = v;
	*ret_n = cnt;
	return 0;
}

/* First object of a class with the key's CKA_ID (or label when it has no
 * ID); CK_INVALID_HANDLE if none. */
static int object_peer(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const uint8_t *id,
                       size_t id_len, const char *label, CK_OBJECT_HANDLE *ret)
{
	CK_CERTIFICATE_TYPE x509 = CKC_X_509;
	CK_ATTRIBUTE tmpl[3] = {{CKA_CLASS, &cls, sizeof(cls)}};
	CK_ULONG n = 1;
	CK_OBJECT_HANDLE *v = NULL;
	size_t nv = 0;
	int r;

	*ret = CK_INVALID_HANDLE;
	if (id_len > 0) {
		tmpl[n++] = (CK_ATTRIBUTE){CKA_ID, (void *)id, id_len};
	} else if (label != NULL) {
		tmpl[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
	} else {
		return 0;
	}
	if (cls == CKO_CERTIFICATE)
		tmpl[n++] = (CK_ATTRIBUTE){CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)};
	r = objects_find(ctx, s, tmpl, n, &v, &nv);
	if (r < 0)
		return r;
	if (nv > 0)
		*ret = v[0];
	free(v);
	return 0;
}

/* ---- public keys ----------------------------------------------------- */

static int pub_rsa(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, EVP_PKEY **ret)
{
	uint8_t *mod = NULL, *exp = NULL;
	size_t mod_len = 0, exp_len = 0;
	int r;

	r = attr_get(ctx, s, o, CKA_MODULUS, TOK_SIG_MAX, &mod, &mod_len);
	if (r == 0)
		r = attr_get(ctx, s, o, CKA_PUBLIC_EXPONENT, 16, &exp, &exp_len);
	if (r < 0)
		goto out;
	if (mod == NULL || exp == NULL) {
		r = P11J_E_NOT_FOUND;
		goto out;
	}
	r = jwk_pkey_rsa(mod, mod_len, exp, exp_len, ret);
out:
	free(mod);
	free(exp);
	return r;
}

/* CKA_EC_POINT: DER OCTET STRING around the point (the standard) or the
 * bare point (some modules, and SoftHSM for imported Ed25519 keys). */
static const uint8_t *point_unwrap(const uint8_t *p, size_t len, size_t want)
{
	size_t hl, cl;

	if (len == want)
		return p;
	if (len < 2 || p[0] != 0x04)
		return NULL;
	if (p[1] < 0x80) {
		hl = 2;
		cl = p[1];
	} else if (p[1] == 0x81 && len >= 3) {
		hl = 3;
		cl = p[2];
	} else {
		return NULL;
	}
	if (hl + cl != len || cl != want)
		return NULL;
	return p + hl;
}

const uint8_t tok_oid_p256[10] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
const uint8_t tok_oid_p384[7] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
const uint8_t tok_oid_p521[7] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23};
static const uint8_t oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
const uint8_t tok_str_ed25519[14] = {0x13, 0x0c, 'e', 'd', 'w', 'a', 'r',
                                     'd',  's',  '2', '5', '5', '1', '9'};

#define BYTES_EQ(p, n, lit) ((n) == sizeof(lit) && memcmp((p), (lit), sizeof(lit)) == 0)

static int pub_ec(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, bool edwards,
                  const char *name, EVP_PKEY **ret)
{
	uint8_t *par = NULL, *pt = NULL;
	size_t par_len = 0, pt_len = 0, field = 0;
	const char *group = NULL;
	const uint8_t *q;
	int r;

	r = attr_get(ctx, s, o, CKA_EC_PARAMS, 64, &par, &par_len);
	if (r == 0)
		r = attr_get(ctx, s, o, CKA_EC_POINT, 256, &pt, &pt_len);
	if (r < 0)
		goto out;
	if (par == NULL || pt == NULL) {
		r = P11J_E_NOT_FOUND;
		goto out;
	}
	if (edwards) {
		if (!BYTES_EQ(par, par_len, oid_ed25519) && !BYTES_EQ(par, par_len, tok_str_ed25519)) {
			r = err_set(P11J_E_UNSUPPORTED_ALG,
			            "key '%s' is an Edwards curve other than "
			            "Ed25519",
			            name);
			goto out;
		}
		q = point_unwrap(pt, pt_len, 32);
		if (q == NULL) {
			r = err_set(P11J_E_PKCS11, "key '%s' has a malformed CKA_EC_POINT", name);
			goto out;
		}
		*ret = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, q, 32);
		if (*ret == NULL)
			r = err_set_ossl(P11J_E_CRYPTO, "Ed25519 public key");
		goto out;
	}
	if (BYTES_EQ(par, par_len, tok_oid_p256)) {
		group = "P-256";
		field = 32;
	} else if (BYTES_EQ(par, par_len, tok_oid_p384)) {
		group = "P-384";
		field = 48;
	} else if (BYTES_EQ(par, par_len, tok_oid_p521)) {
		group = "P-521";
		field = 66;
	} else {
		r = err_set(P11J_E_UNSUPPORTED_ALG,
		            "key '%s' is on a curve other than P-256, "
		            "P-384, P-521",
		            name);
		goto out;
	}
	q = point_unwrap(pt, pt_len, 1 + 2 * field);
	if (q == NULL || q[0] != 0x04) {
		r = err_set(P11J_E_PKCS11, "key '%s' has a malformed or compressed CKA_EC_POINT",
		            name);
		goto out;
	}
	r = jwk_pkey_ec(group, q, 1 + 2 * field, ret);
out:
	free(par);
	free(pt);
	return r;
}

int tok_pub_from_object(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_KEY_TYPE kt,
                        const char *name, EVP_PKEY **ret)
{
	switch (kt) {
	case CKK_RSA:
		return pub_rsa(ctx, s, o, ret);
	case CKK_EC:
		return pub_ec(ctx, s, o, false, name, ret);
	case CKK_EC_EDWARDS:
		return pub_ec(ctx, s, o, true, name, ret);
	default:
		return err_set(P11J_E_UNSUPPORTED_ALG,
		               "key '%s' has unsupported CKA_KEY_TYPE 0x%lx", name,
		               (unsigned long)kt);
	}
}

static int cert_read(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, uint8_t **ret_der,
                     size_t *ret_len, EVP_PKEY **ret_pub)
{
	uint8_t *der = NULL;
	size_t len = 0;
	const unsigned char *p;
	X509 *x = NULL;
	EVP_PKEY *pk;
	int r;

	r = attr_get(ctx, s, o, CKA_VALUE, TOK_CERT_MAX, &der, &len);
	if (r < 0)
		return r;
	if (der == NULL)
		return P11J_E_NOT_FOUND;
	p = der;
	x = d2i_X509(NULL, &p, (long)len);
	if (x == NULL || p != der + len || (pk = X509_get0_pubkey(x)) == NULL) {
		r = err_set_ossl(P11J_E_CRYPTO, "parsing a certificate on the token");
		goto out;
	}
	EVP_PKEY_up_ref(pk);
	*ret_pub = pk;
	*ret_der = der;
	*ret_len = len;
	der = NULL;
out:
	X509_free(x);
	free(der);
	return r;
}

/* ---- key enumeration ------------------------------------------------- */

static void key_free(tok_key *k)
{
	if (k == NULL)
		return;
	free(k->name);
	free(k->uri);
	free(k->id);
	free(k->cert);
	EVP_PKEY_free(k->pub);
	free(k);
}

static int key_uri(tok_ctx *ctx, tok_key *k, const uint8_t *label, size_t label_len)
{
	P11KitUri *u = p11_kit_uri_new();
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE a;
	CK_TOKEN_INFO *ti;
	int r = 0;

	if (u == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	ti = p11_kit_uri_get_token_info(u);
	memcpy(ti->label, ctx->ti.label, sizeof(ti->label));
	if (label_len > 0) {
		a = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, label_len};
		p11_kit_uri_set_attribute(u, &a);
	}
	if (k->id_len > 0) {
		a = (CK_ATTRIBUTE){CKA_ID, k->id, k->id_len};
		p11_kit_uri_set_attribute(u, &a);
	}
	a = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
	p11_kit_uri_set_attribute(u, &a);
	if (p11_kit_uri_format(u, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &k->uri) != P11_KIT_URI_OK)
		r = err_set(P11J_E_NOMEM, "cannot format the key URI");
	p11_kit_uri_free(u);
	return r;
}

/* One key from its anchor object (the private key, or with no_login the
 * public key or certificate). Returns 0 with *ret NULL when the key is
 * skipped (a warning has been logged). */
static int key_load(tok_ctx *ctx, const tok_config *cfg, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                    CK_OBJECT_CLASS cls, tok_key **ret)
{
	tok_key *k = NULL;
	uint8_t *label = NULL;
	size_t label_len = 0;
	CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
	CK_BBOOL extractable = CK_TRUE, sensitive = CK_FALSE;
	CK_OBJECT_HANDLE pubo = CK_INVALID_HANDLE, certo = CK_INVALID_HANDLE;
	EVP_PKEY *certpub = NULL;
	int r;

	*ret = NULL;
	k = calloc(1, sizeof(*k));
	if (k == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	k->priv = CK_INVALID_HANDLE;
	r = attr_get(ctx, s, o, CKA_LABEL, TOK_ATTR_MAX, &label, &label_len);
	if (r == 0)
		r = attr_get(ctx, s, o, CKA_ID, TOK_ATTR_MAX, &k->id, &k->id_len);
	if (r < 0)
		goto out;
	if (label_len > 0 && memchr(label, '\0', label_len) == NULL)
		k->name = strdup((char *)label);
	else if (k->id_len > 0)
		r = util_hex(k->id, k->id_len, &k->name);
	else if (asprintf(&k->name, "handle-%lu", (unsigned long)o) < 0)
		k->name = NULL;
	if (r < 0)
		goto out;
	if (k->name == NULL) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}

	if (cls != CKO_CERTIFICATE &&
	    (r = attr_fixed(ctx, s, o, CKA_KEY_TYPE, &kt, sizeof(kt))) < 0)
		goto out;

	if (cls == CKO_PRIVATE_KEY) {
		k->priv = o;
		/* Absent flags count against the key: unknown is not safe. */
		if ((r = attr_fixed(ctx, s, o, CKA_EXTRACTABLE, &extractable, 1)) < 0 ||
		    (r = attr_fixed(ctx, s, o, CKA_SENSITIVE, &sensitive, 1)) < 0)
			goto out;
		k->unsafe = extractable != CK_FALSE || sensitive == CK_FALSE;
		if (k->unsafe && !cfg->allow_unsafe_keys) {
			tok_log(ctx, TOK_LOG_WARNING,
			        "skipping key '%s' on token '%s': the private key is %s "
			        "(allow with --allow-unsafe-keys)",
			        k->name, ctx->label,
			        extractable != CK_FALSE ? "extractable" : "not sensitive");
			r = 0;
			goto skip;
		}
		if (k->unsafe)
			tok_log(ctx, TOK_LOG_WARNING,
			        "serving key '%s' although its private key is %s", k->name,
			        extractable != CK_FALSE ? "extractable" : "not sensitive");
		{
			CK_BBOOL always = CK_FALSE;

			if ((r = attr_fixed(ctx, s, o, CKA_ALWAYS_AUTHENTICATE, &always, 1)) < 0)
				goto out;
			k->always_auth = always == CK_TRUE;
		}
		r = object_peer(ctx, s, CKO_PUBLIC_KEY, k->id, k->id_len, k->name, &pubo);
	} else if (cls == CKO_PUBLIC_KEY) {
		pubo = o;
	}
	if (r < 0)
		goto out;
	if (cls == CKO_CERTIFICATE)
		certo = o;
	else if ((r = object_peer(ctx, s, CKO_CERTIFICATE, k->id, k->id_len, NULL, &certo)) < 0)
		goto out;

	if (pubo != CK_INVALID_HANDLE) {
		r = tok_pub_from_object(ctx, s, pubo, kt, k->name, &k->pub);
		if (r < 0 && r != P11J_E_NOT_FOUND) {
			tok_log(ctx, TOK_LOG_WARNING, "skipping key '%s': %s", k->name, err_msg());
			r = 0;
			goto skip;
		}
	}
	if (certo != CK_INVALID_HANDLE) {
		r = cert_read(ctx, s, certo, &k->cert, &k->cert_len, &certpub);
		if (r == P11J_E_NOMEM)
			goto out;
		if (r < 0) {
			tok_log(ctx, TOK_LOG_WARNING, "ignoring the certificate of key '%s': %s",
			        k->name, err_msg());
		} else if (k->pub != NULL && EVP_PKEY_eq(k->pub, certpub) != 1) {
			tok_log(ctx, TOK_LOG_WARNING,
			        "ignoring the certificate of key '%s': its "
			        "public key differs from the token's public key",
			        k->name);
			free(k->cert);
			k->cert = NULL;
			k->cert_len = 0;
		} else if (k->pub == NULL) {
			k->pub = certpub;
			certpub = NULL;
		}
	}
	/* RSA private key objects carry the (public) modulus and exponent. */
	if (k->pub == NULL && kt == CKK_RSA && k->priv != CK_INVALID_HANDLE)
		r = pub_rsa(ctx, s, k->priv, &k->pub);
	if (k->pub == NULL) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "skipping key '%s': no public key object or "
		        "certificate with the same CKA_ID",
		        k->name);
		r = 0;
		goto skip;
	}
	k->kind = jwa_keykind_of(k->pub);
	if (k->kind == KEYKIND_UNKNOWN ||
	    (kt != (CK_KEY_TYPE)-1 && (kt == CKK_RSA) != (k->kind == KEYKIND_RSA))) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "skipping key '%s': unsupported kind of key "
		        "(RSA under 2048 bits, or not P-256, P-384, P-521, Ed25519)",
		        k->name);
		r = 0;
		goto skip;
	}
	k->algs = algs_supported(ctx, k->kind);
	if (k->kind == KEYKIND_RSA)
		k->sig_len = (size_t)EVP_PKEY_get_size(k->pub);
	else
		k->sig_len = jwa_sig_len(jwa_default_for_kind(k->kind));
	if (k->sig_len == 0 || k->sig_len > TOK_SIG_MAX) {
		tok_log(ctx, TOK_LOG_WARNING, "skipping key '%s': signatures over %d bytes",
		        k->name, TOK_SIG_MAX);
		r = 0;
		goto skip;
	}
	r = key_uri(ctx, k, label, label_len);
	if (r < 0)
		goto out;
	*ret = k;
	k = NULL;
	goto out;
skip:
	r = 0;
out:
	EVP_PKEY_free(certpub);
	free(label);
	key_free(k);
	return r;
}

static int keys_add(tok_ctx *ctx, tok_key *k)
{
	tok_key **nv = realloc(ctx->keys, (ctx->nkeys + 1) * sizeof(*nv));

	if (nv == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	ctx->keys = nv;
	ctx->keys[ctx->nkeys++] = k;
	return 0;
}

static bool id_known(const tok_ctx *ctx, const uint8_t *id, size_t id_len)
{
	size_t i;

	for (i = 0; i < ctx->nkeys; i++)
		if (ctx->keys[i]->id_len == id_len && id_len > 0 &&
		    memcmp(ctx->keys[i]->id, id, id_len) == 0)
			return true;
	return false;
}

static int keys_enumerate(tok_ctx *ctx, const tok_config *cfg, P11KitUri *uri, CK_SESSION_HANDLE s,
                          bool public_only)
{
	/* With no_login the private keys are invisible; the public halves
	 * (then certificates with no public key object) stand in for them. */
	static const CK_OBJECT_CLASS with_login[] = {CKO_PRIVATE_KEY};
	static const CK_OBJECT_CLASS without[] = {CKO_PUBLIC_KEY, CKO_CERTIFICATE};
	const CK_OBJECT_CLASS *classes = public_only ? without : with_login;
	size_t nclasses = public_only ? 2 : 1, c, i;
	CK_ATTRIBUTE tmpl[4];
	CK_ATTRIBUTE *ua;
	CK_BBOOL yes = CK_TRUE;
	CK_OBJECT_CLASS cls;
	CK_OBJECT_HANDLE *v = NULL;
	size_t nv = 0;
	int r = 0;

	for (c = 0; c < nclasses; c++) {
		CK_ULONG n = 0;

		cls = classes[c];
		tmpl[n++] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
		if (cls == CKO_PRIVATE_KEY)
			tmpl[n++] = (CK_ATTRIBUTE){CKA_SIGN, &yes, sizeof(yes)};
		/* The URI's type= is ignored: object=/id= name the key pair. */
		if ((ua = p11_kit_uri_get_attribute(uri, CKA_LABEL)) != NULL)
			tmpl[n++] = *ua;
		if ((ua = p11_kit_uri_get_attribute(uri, CKA_ID)) != NULL)
			tmpl[n++] = *ua;
		free(v);
		v = NULL;
		r = objects_find(ctx, s, tmpl, n, &v, &nv);
		if (r < 0)
			goto out;
		for (i = 0; i < nv; i++) {
			tok_key *k = NULL;

			r = key_load(ctx, cfg, s, v[i], cls, &k);
			if (r < 0)
				goto out;
			if (k == NULL)
				continue;
			if (public_only && id_known(ctx, k->id, k->id_len)) {
				key_free(k);
				continue;
			}
			r = keys_add(ctx, k);
			if (r < 0) {
				key_free(k);
				goto out;
			}
		}
	}
out:
	free(v);
	return r;
}

/* The private key of a key listed while locked, or listed before the token
 * went away: found again by CKA_ID (else label), since object handles are
 * valid for one session and login only. The same safety checks as at open
 * apply: the key stays unusable (priv invalid) if they fail. */
static int key_resolve(tok_ctx *ctx, CK_SESSION_HANDLE s, tok_key *k)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_BBOOL yes = CK_TRUE, extractable = CK_TRUE, sensitive = CK_FALSE, always = CK_FALSE;
	CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
	CK_ATTRIBUTE tmpl[3] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_SIGN, &yes, sizeof(yes)}};
	CK_OBJECT_HANDLE *v = NULL, o;
	size_t nv = 0;
	int r;

	k->priv = CK_INVALID_HANDLE;
	k->always_auth = false;
	if (k->id_len > 0)
		tmpl[2] = (CK_ATTRIBUTE){CKA_ID, k->id, k->id_len};
	else
		tmpl[2] = (CK_ATTRIBUTE){CKA_LABEL, k->name, strlen(k->name)};
	r = objects_find(ctx, s, tmpl, 3, &v, &nv);
	if (r < 0)
		return r;
	if (nv == 0) {
		tok_log(ctx, TOK_LOG_WARNING, "key '%s' has no private key on token '%s'", k->name,
		        ctx->label);
		goto out;
	}
	o = v[0];
	if ((r = attr_fixed(ctx, s, o, CKA_KEY_TYPE, &kt, sizeof(kt))) < 0 ||
	    (r = attr_fixed(ctx, s, o, CKA_EXTRACTABLE, &extractable, 1)) < 0 ||
	    (r = attr_fixed(ctx, s, o, CKA_SENSITIVE, &sensitive, 1)) < 0 ||
	    (r = attr_fixed(ctx, s, o, CKA_ALWAYS_AUTHENTICATE, &always, 1)) < 0)
		goto out;
	if (kt != (CK_KEY_TYPE)-1 && (kt == CKK_RSA) != (k->kind == KEYKIND_RSA)) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "key '%s': the private key's type does not match its public key", k->name);
		goto out;
	}
	k->unsafe = extractable != CK_FALSE || sensitive == CK_FALSE;
	if (k->unsafe && !ctx->allow_unsafe) {
		tok_log(ctx, TOK_LOG_WARNING,
		        "not signing with key '%s' on token '%s': the private key is %s "
		        "(allow with --allow-unsafe-keys)",
		        k->name, ctx->label,
		        extractable != CK_FALSE ? "extractable" : "not sensitive");
		goto out;
	}
	k->always_auth = always == CK_TRUE;
	k->priv = o;
out:
	free(v);
	return r;
}

static int keys_resolve(tok_ctx *ctx, CK_SESSION_HANDLE s)
{
	size_t i;
	int r;

	for (i = 0; i < ctx->nkeys; i++)
		if ((r = key_resolve(ctx, s, ctx->keys[i])) < 0)
			return r;
	return 0;
}

static void keys_forget(tok_ctx *ctx)
{
	size_t i;

	for (i = 0; i < ctx->nkeys; i++)
		ctx->keys[i]->priv = CK_INVALID_HANDLE;
}

/* ---- session pool ---------------------------------------------------- */

static int pool_get(tok_ctx *ctx, CK_SESSION_HANDLE *ret)
{
	CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
	CK_RV rv;

	pthread_mutex_lock(&ctx->mu);
	for (;;) {
		if (ctx->nfree > 0) {
			*ret = ctx->free_s[--ctx->nfree];
			pthread_mutex_unlock(&ctx->mu);
			return 0;
		}
		if (ctx->nopen < TOK_POOL_MAX)
			break;
		pthread_cond_wait(&ctx->cv, &ctx->mu);
	}
	ctx->nopen++;
	pthread_mutex_unlock(&ctx->mu);

	/* Login state is per token, so this session is logged in already. */
	rv = ctx->f->C_OpenSession(ctx->slot, CKF_SERIAL_SESSION, NULL, NULL, &h);
	if (rv != CKR_OK) {
		pthread_mutex_lock(&ctx->mu);
		ctx->nopen--;
		pthread_cond_signal(&ctx->cv);
		pthread_mutex_unlock(&ctx->mu);
		return tok_ck(ctx, "C_OpenSession", rv);
	}
	*ret = h;
	return 0;
}

static void pool_put(tok_ctx *ctx, CK_SESSION_HANDLE h)
{
	pthread_mutex_lock(&ctx->mu);
	ctx->free_s[ctx->nfree++] = h;
	pthread_cond_signal(&ctx->cv);
	pthread_mutex_unlock(&ctx->mu);
}

/* A session in an unknown state (broken, or an operation left active) is
 * closed rather than reused. */
static void pool_drop(tok_ctx *ctx, CK_SESSION_HANDLE h)
{
	pthread_mutex_lock(&ctx->close_mu);
	ctx->f->C_CloseSession(h);
	pthread_mutex_unlock(&ctx->close_mu);
	pthread_mutex_lock(&ctx->mu);
	ctx->nopen--;
	pthread_cond_signal(&ctx->cv);
	pthread_mutex_unlock(&ctx->mu);
}

/* ---- state, login, lock, recovery ------------------------------------- */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void state_set(tok_ctx *ctx, tok_state st)
{
	pthread_mutex_lock(&ctx->state_mu);
	ctx->tstate = st;
	pthread_mutex_unlock(&ctx->state_mu);
}

tok_state tok_get_state(tok_ctx *ctx)
{
	tok_state st;

	pthread_mutex_lock(&ctx->state_mu);
	st = ctx->tstate;
	pthread_mutex_unlock(&ctx->state_mu);
	return st;
}

const char *tok_state_name(tok_state st)
{
	switch (st) {
	case TOK_READY:
		return "ready";
	case TOK_LOCKED:
		return "locked";
	default:
		return "unavailable";
	}
}

/* A call failed in a way that says the device or our sessions are gone:
 * from now on callers fail fast until a recovery succeeds. Logged once. */
static void mark_unavailable(tok_ctx *ctx, const char *why)
{
	bool was;

	pthread_mutex_lock(&ctx->state_mu);
	was = ctx->tstate == TOK_UNAVAILABLE;
	ctx->tstate = TOK_UNAVAILABLE;
	pthread_mutex_unlock(&ctx->state_mu);
	if (!was)
		tok_log(ctx, TOK_LOG_WARNING,
		        "%s; signing answers token_unavailable until the token is back "
		        "(checked at most every %d ms)",
		        why, TOK_RECOVER_MS);
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

/* Close what the pool holds; exclusive op_lock, so nothing is in use. Errors
 * are expected (the sessions are usually gone already). */
static void pool_flush(tok_ctx *ctx)
{
	size_t i;

	pthread_mutex_lock(&ctx->mu);
	for (i = 0; i < ctx->nfree; i++)
		ctx->f->C_CloseSession(ctx->free_s[i]);
	ctx->nopen -= ctx->nfree;
	ctx->nfree = 0;
	pthread_cond_broadcast(&ctx->cv);
	pthread_mutex_unlock(&ctx->mu);
}

/* The same token (label, manufacturer, model, serial) again: after a
 * reconnect it may sit in another slot. 1 found, 0 not present. */
static int token_refind(tok_ctx *ctx)
{
	CK_SLOT_ID *slots = NULL;
	CK_ULONG ns = 0, j;
	CK_RV rv;
	int r = 0;

	rv = ctx->f->C_GetSlotList(CK_TRUE, NULL, &ns);
	if (rv == CKR_OK && ns > 0) {
		slots = calloc(ns, sizeof(*slots));
		if (slots == NULL)
			return err_set(P11J_E_NOMEM, "out of memory");
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

/* One attempt to get back to a logged-in token with usable handles; the
 * caller holds op_lock exclusively. Sets the state. */
static int reopen_once(tok_ctx *ctx, bool *ret_absent)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_RV rv;
	int r;

	*ret_absent = false;
	r = token_refind(ctx);
	if (r < 0)
		return r;
	if (r == 0) {
		*ret_absent = true;
		return err_set(P11J_E_TOKEN_UNAVAILABLE, "token '%s' is not present", ctx->label);
	}
	rv = ctx->f->C_OpenSession(ctx->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
	if (rv != CKR_OK)
		return tok_ck(ctx, "C_OpenSession", rv);
	pthread_mutex_lock(&ctx->mu);
	ctx->nopen++;
	pthread_mutex_unlock(&ctx->mu);
	ctx->logged_in = false;
	keys_forget(ctx);
	if (ctx->pin_cached || ctx->pinpad) {
		r = session_login(ctx, s, ctx->pinpad ? NULL : ctx->pin, ctx->pin_len);
		if (r == P11J_E_PIN_INCORRECT) {
			/* The PIN was changed meanwhile: never send it again. */
			tok_log(ctx, TOK_LOG_WARNING,
			        "token '%s' is back but refused the cached PIN (%s); locked",
			        ctx->label, err_msg());
			pin_store_wipe(ctx);
			pool_put(ctx, s);
			state_set(ctx, TOK_LOCKED);
			return 0;
		}
		if (r < 0)
			goto fail;
	}
	if (ctx->logged_in || !(ctx->ti.flags & CKF_LOGIN_REQUIRED)) {
		r = keys_resolve(ctx, s);
		if (r < 0)
			goto fail;
		pool_put(ctx, s);
		state_set(ctx, TOK_READY);
		return 0;
	}
	/* No PIN kept (locked while the token was away): make sure the
	 * token's login state agrees with ours. */
	(void)ctx->f->C_Logout(s);
	pool_put(ctx, s);
	state_set(ctx, TOK_LOCKED);
	return 0;
fail:
	pool_drop(ctx, s);
	return r;
}

/* Exclusive op_lock held. A module whose transport broke (p11-kit-client
 * after its server went away) answers every call with CKR_DEVICE_ERROR or
 * CKR_DEVICE_REMOVED until it is initialised again, and initialised while
 * its server is away it shows no slot until the next C_Initialize: one we
 * initialised ourselves is finalized and initialised again, and again at
 * each attempt until the token is back. A module that merely shows the
 * token absent (a card pulled out) is left alone. */
static int reopen(tok_ctx *ctx)
{
	CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
	bool absent = false, ours = ctx->state[ctx->mod_idx] == MOD_OURS;
	CK_RV rv;
	int r;

	pool_flush(ctx);
	if (!ctx->reinit_pending) {
		r = reopen_once(ctx, &absent);
		if (r >= 0 || r != P11J_E_TOKEN_UNAVAILABLE || absent || !ours)
			return r;
		tok_log(ctx, TOK_LOG_INFO, "initialising the PKCS#11 module again (%s)", err_msg());
	}
	ctx->f->C_Finalize(NULL);
	pthread_mutex_lock(&ctx->mu);
	ctx->nopen = 0; /* C_Finalize closed every session */
	pthread_mutex_unlock(&ctx->mu);
	ctx->reinit_pending = true;
	rv = ctx->f->C_Initialize(&args);
	if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		(void)tok_ck(ctx, "C_Initialize", rv);
		return P11J_E_TOKEN_UNAVAILABLE;
	}
	r = reopen_once(ctx, &absent);
	if (r >= 0)
		ctx->reinit_pending = false;
	return r;
}

/* Try to recover if nobody else is and the back-off allows (force: login
 * asks, back-off ignored). Returns 0 when the state changed from
 * UNAVAILABLE (to READY or LOCKED), else P11J_E_TOKEN_UNAVAILABLE at once. */
static int recover(tok_ctx *ctx, bool force, bool have_wrlock)
{
	uint64_t now = now_ms();
	int r;

	pthread_mutex_lock(&ctx->state_mu);
	if (ctx->tstate != TOK_UNAVAILABLE) {
		pthread_mutex_unlock(&ctx->state_mu);
		return 0;
	}
	if (ctx->recovering || (!force && now < ctx->next_try_ms)) {
		pthread_mutex_unlock(&ctx->state_mu);
		return err_set(P11J_E_TOKEN_UNAVAILABLE,
		               "token '%s' is unavailable (removed, or its device or sessions "
		               "failed); trying again shortly",
		               ctx->label);
	}
	ctx->recovering = true;
	pthread_mutex_unlock(&ctx->state_mu);

	if (!have_wrlock)
		pthread_rwlock_wrlock(&ctx->op_lock);
	r = reopen(ctx);
	if (!have_wrlock)
		pthread_rwlock_unlock(&ctx->op_lock);

	pthread_mutex_lock(&ctx->state_mu);
	ctx->recovering = false;
	ctx->next_try_ms = now_ms() + TOK_RECOVER_MS;
	pthread_mutex_unlock(&ctx->state_mu);
	if (r < 0)
		return err_set(P11J_E_TOKEN_UNAVAILABLE, "token '%s' is unavailable: %s",
		               ctx->label, err_msg());
	tok_log(ctx, TOK_LOG_INFO, "token '%s' is back (%s)", ctx->label,
	        tok_state_name(tok_get_state(ctx)));
	return 0;
}

void tok_test_recover_now(tok_ctx *ctx)
{
	pthread_mutex_lock(&ctx->state_mu);
	ctx->next_try_ms = 0;
	pthread_mutex_unlock(&ctx->state_mu);
}

int tok_login(tok_ctx *ctx, const char *pin, size_t len)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	bool same;
	int r;

	if (ctx == NULL)
		return err_set(P11J_E_BAD_REQUEST, "tok_login: no token");
	if (pin != NULL && (len == 0 || len > TOK_PIN_MAX))
		return err_set(P11J_E_BAD_REQUEST, "a PIN must be 1 to %d bytes", TOK_PIN_MAX);
	if (pin == NULL && !(ctx->ti.flags & CKF_PROTECTED_AUTHENTICATION_PATH))
		return err_set(P11J_E_BAD_REQUEST,
		               "token '%s' has no PIN pad (protected authentication path): "
		               "give the PIN",
		               ctx->label);
	pthread_rwlock_wrlock(&ctx->op_lock);
	if ((r = recover(ctx, true, true)) < 0)
		goto out;
	switch (tok_get_state(ctx)) {
	case TOK_READY:
		same = pin != NULL && ctx->pin_cached && len == ctx->pin_len &&
		       CRYPTO_memcmp(pin, ctx->pin, len) == 0;
		if (same || (pin == NULL && ctx->pinpad) ||
		    (!ctx->logged_in && !(ctx->ti.flags & CKF_LOGIN_REQUIRED)))
			r = 0;
		else
			r = err_set(P11J_E_BAD_REQUEST,
			            "token '%s' is logged in already with another PIN; lock it "
			            "first (p11jwt lock)",
			            ctx->label);
		goto out;
	case TOK_LOCKED:
		break;
	default:
		r = err_set(P11J_E_TOKEN_UNAVAILABLE, "token '%s' is unavailable", ctx->label);
		goto out;
	}
	if ((r = pool_get(ctx, &s)) < 0)
		goto fault;
	r = session_login(ctx, s, pin, len);
	if (r == 0)
		r = keys_resolve(ctx, s);
	if (r == 0) {
		pool_put(ctx, s);
		state_set(ctx, TOK_READY);
		tok_log(ctx, TOK_LOG_INFO, "logged in to token '%s'", ctx->label);
		goto out;
	}
	if (r == P11J_E_TOKEN_UNAVAILABLE) {
		pool_drop(ctx, s);
		goto fault;
	}
	pool_put(ctx, s);
	goto out;
fault:
	if (r == P11J_E_TOKEN_UNAVAILABLE)
		mark_unavailable(ctx, err_msg());
out:
	pthread_rwlock_unlock(&ctx->op_lock);
	return r;
}

int tok_lock(tok_ctx *ctx)
{
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_RV rv;
	int r = 0;

	if (ctx == NULL)
		return err_set(P11J_E_BAD_REQUEST, "tok_lock: no token");
	pthread_rwlock_wrlock(&ctx->op_lock);
	pin_store_wipe(ctx);
	keys_forget(ctx);
	if (ctx->logged_in && tok_get_state(ctx) != TOK_UNAVAILABLE) {
		if ((r = pool_get(ctx, &s)) == 0) {
			rv = ctx->f->C_Logout(s);
			if (rv != CKR_OK && rv != CKR_USER_NOT_LOGGED_IN &&
			    tok_ckr_to_err(rv) == P11J_E_TOKEN_UNAVAILABLE) {
				pool_drop(ctx, s);
				mark_unavailable(ctx, "C_Logout failed");
			} else {
				pool_put(ctx, s);
			}
		}
		r = 0; /* locked either way: no PIN is kept */
	}
	ctx->logged_in = false;
	if (tok_get_state(ctx) != TOK_UNAVAILABLE)
		state_set(ctx, TOK_LOCKED);
	tok_log(ctx, TOK_LOG_INFO, "token '%s' locked: PIN wiped", ctx->label);
	pthread_rwlock_unlock(&ctx->op_lock);
	return r;
}

/* ---- open / close ---------------------------------------------------- */

static int open_token(const tok_config *cfg, bool need_keys, tok_ctx **ret)
{
	tok_ctx *ctx = NULL;
	P11KitUri *uri = NULL;
	char *uri_pin = NULL, *shown = NULL;
	const char *ustr;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	bool locked = false;
	CK_RV rv;
	int r, ur;

	if (cfg == NULL || ret == NULL)
		return err_set(P11J_E_BAD_REQUEST, "tok_open: no configuration");
	ustr = cfg->uri != NULL ? cfg->uri : "pkcs11:";
	ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL)
		return err_set(P11J_E_NOMEM, "out of memory");
	{
		pthread_rwlockattr_t ra;

		/* Writers (login, lock, recovery) must not starve behind a
		 * steady stream of signatures. */
		pthread_rwlockattr_init(&ra);
		pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		if (pthread_mutex_init(&ctx->mu, NULL) != 0 ||
		    pthread_cond_init(&ctx->cv, NULL) != 0 ||
		    pthread_mutex_init(&ctx->close_mu, NULL) != 0 ||
		    pthread_mutex_init(&ctx->state_mu, NULL) != 0 ||
		    pthread_rwlock_init(&ctx->op_lock, &ra) != 0) {
			pthread_rwlockattr_destroy(&ra);
			free(ctx);
			return err_set(P11J_E_SYSTEM, "cannot create the session pool locks");
		}
		pthread_rwlockattr_destroy(&ra);
	}
	ctx->locks_ok = true;
	ctx->log = cfg->log;
	ctx->log_ud = cfg->log_ud;
	ctx->no_login = cfg->no_login;
	ctx->allow_unsafe = cfg->allow_unsafe_keys;
	r = pin_store_init(ctx);
	if (r < 0)
		goto out;

	uri = p11_kit_uri_new();
	if (uri == NULL) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}
	ur = p11_kit_uri_parse(ustr, P11_KIT_URI_FOR_OBJECT_ON_TOKEN_AND_MODULE, uri);
	if (ur != P11_KIT_URI_OK) {
		r = err_set(P11J_E_BAD_REQUEST, "invalid PKCS#11 URI: %s", p11_kit_uri_message(ur));
		goto out;
	}
	if (p11_kit_uri_any_unrecognized(uri)) {
		r = err_set(P11J_E_BAD_REQUEST,
		            "the PKCS#11 URI has path attributes p11jwt does "
		            "not know (RFC 7512: token, manufacturer, serial, model, object, id, "
		            "type, slot-id, ...)");
		goto out;
	}
	/* Keep pin-value out of anything we format for messages. */
	if (p11_kit_uri_get_pin_value(uri) != NULL) {
		uri_pin = strdup(p11_kit_uri_get_pin_value(uri));
		if (uri_pin == NULL) {
			r = err_set(P11J_E_NOMEM, "out of memory");
			goto out;
		}
		p11_kit_uri_set_pin_value(uri, NULL);
	}
	if (p11_kit_uri_format(uri, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &shown) != P11_KIT_URI_OK) {
		r = err_set(P11J_E_NOMEM, "out of memory");
		goto out;
	}

	r = modules_load(ctx, cfg, uri);
	if (r < 0)
		goto out;
	r = token_find(ctx, uri, shown);
	if (r < 0)
		goto out;
	r = mechs_read(ctx);
	if (r < 0)
		goto out;
	rv = ctx->f->C_OpenSession(ctx->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
	if (rv != CKR_OK) {
		r = tok_ck(ctx, "C_OpenSession", rv);
		goto out;
	}
	ctx->nopen = 1;
	if (!ctx->no_login) {
		r = login(ctx, cfg, uri, uri_pin, s, &locked);
		if (r < 0)
			goto out;
	}
	r = keys_enumerate(ctx, cfg, uri, s, ctx->no_login || locked);
	if (r < 0)
		goto out;
	if (ctx->no_login || locked) {
		ctx->tstate = TOK_LOCKED;
		if (locked)
			tok_log(ctx, TOK_LOG_INFO,
			        "no PIN for token '%s': locked until `p11jwt login`", ctx->label);
	}
	if (ctx->nkeys == 0 && need_keys) {
		r = err_set(P11J_E_NOT_FOUND, "no usable signing key on token '%s' matches '%s'",
		            ctx->label, shown);
		goto out;
	}
	/* The login session stays open in the pool: closing a token's last
	 * session logs the user out. */
	ctx->free_s[ctx->nfree++] = s;
	s = CK_INVALID_HANDLE;
	*ret = ctx;
	ctx = NULL;
	r = 0;
out:
	if (ctx != NULL && s != CK_INVALID_HANDLE) {
		ctx->f->C_CloseSession(s);
		ctx->nopen = 0;
	}
	tok_close(ctx);
	freezero_str(uri_pin);
	free(shown);
	p11_kit_uri_free(uri);
	return r;
}

int tok_open(const tok_config *cfg, tok_ctx **ret)
{
	return open_token(cfg, true, ret);
}

int tok_open_any(const tok_config *cfg, tok_ctx **ret)
{
	return open_token(cfg, false, ret);
}

CK_FUNCTION_LIST *tok_module(tok_ctx *ctx, CK_SLOT_ID *ret_slot)
{
	*ret_slot = ctx->slot;
	return ctx->f;
}

void tok_close(tok_ctx *ctx)
{
	size_t i;

	if (ctx == NULL)
		return;
	if (ctx->f != NULL)
		for (i = 0; i < ctx->nfree; i++)
			ctx->f->C_CloseSession(ctx->free_s[i]);
	if (ctx->mods != NULL) {
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
	for (i = 0; i < ctx->nkeys; i++)
		key_free(ctx->keys[i]);
	free(ctx->keys);
	pin_store_free(ctx);
	if (ctx->locks_ok) {
		pthread_mutex_destroy(&ctx->mu);
		pthread_cond_destroy(&ctx->cv);
		pthread_mutex_destroy(&ctx->close_mu);
		pthread_mutex_destroy(&ctx->state_mu);
		pthread_rwlock_destroy(&ctx->op_lock);
	}
	free(ctx);
}

/* ---- accessors ------------------------------------------------------- */

const char *tok_label(const tok_ctx *ctx)
{
	return ctx->label;
}
size_t tok_key_count(const tok_ctx *ctx)
{
	return ctx->nkeys;
}

const tok_key *tok_key_at(const tok_ctx *ctx, size_t i)
{
	return i < ctx->nkeys ? ctx->keys[i] : NULL;
}

const tok_key *tok_key_find(const tok_ctx *ctx, const char *name)
{
	size_t i;

	if (name == NULL)
		return NULL;
	for (i = 0; i < ctx->nkeys; i++)
		if (strcmp(ctx->keys[i]->name, name) == 0)
			return ctx->keys[i];
	return NULL;
}

const char *tok_key_name(const tok_key *k)
{
	return k->name;
}
const char *tok_key_uri(const tok_key *k)
{
	return k->uri;
}
EVP_PKEY *tok_key_pubkey(const tok_key *k)
{
	return k->pub;
}
jwa_keykind tok_key_kind(const tok_key *k)
{
	return k->kind;
}
bool tok_key_unsafe(const tok_key *k)
{
	return k->unsafe;
}
unsigned tok_key_algs(const tok_key *k)
{
	return k->algs;
}

const uint8_t *tok_key_id(const tok_key *k, size_t *ret_len)
{
	if (ret_len != NULL)
		*ret_len = k->id_len;
	return k->id;
}

const uint8_t *tok_key_cert(const tok_key *k, size_t *ret_len)
{
	if (ret_len != NULL)
		*ret_len = k->cert_len;
	return k->cert;
}

void tok_test_force_raw_rsa(tok_ctx *ctx, bool on)
{
	ctx->force_raw = on;
}

size_t tok_test_open_sessions(tok_ctx *ctx)
{
	size_t n;

	pthread_mutex_lock(&ctx->mu);
	n = ctx->nopen;
	pthread_mutex_unlock(&ctx->mu);
	return n;
}

/* ---- signing --------------------------------------------------------- */

/* Wait until signing may start: READY, op_lock held shared on success.
 * LOCKED and UNAVAILABLE answer at once (an UNAVAILABLE token is recovered
 * first when the back-off allows). */
static int sign_begin(tok_ctx *ctx, const tok_key *k)
{
	int i;

	for (i = 0; i < 4; i++) {
		tok_state st = tok_get_state(ctx);

		if (st == TOK_UNAVAILABLE) {
			int r = recover(ctx, false, false);

			if (r < 0)
				return r;
			continue;
		}
		if (st == TOK_LOCKED) {
			if (ctx->no_login)
				return err_set(P11J_E_PIN_REQUIRED,
				               "token '%s' was opened without login; "
				               "cannot sign with key '%s'",
				               ctx->label, k->name);
			return err_set(P11J_E_PIN_REQUIRED,
			               "token '%s' is locked; log in with `p11jwt login` to sign "
			               "with key '%s'",
			               ctx->label, k->name);
		}
		pthread_rwlock_rdlock(&ctx->op_lock);
		if (tok_get_state(ctx) == TOK_READY) {
			if (k->priv != CK_INVALID_HANDLE)
				return 0;
			pthread_rwlock_unlock(&ctx->op_lock);
			return err_set(P11J_E_UNKNOWN_KEY,
			               "key '%s' has no usable private key on token '%s' "
			               "(see the agent's log)",
			               k->name, ctx->label);
		}
		pthread_rwlock_unlock(&ctx->op_lock);
	}
	return err_set(P11J_E_TOKEN_UNAVAILABLE, "token '%s' is unavailable", ctx->label);
}

static bool session_broken(CK_RV rv)
{
	return tok_ckr_to_err(rv) == P11J_E_TOKEN_UNAVAILABLE || rv == CKR_OPERATION_ACTIVE ||
	       rv == CKR_BUFFER_TOO_SMALL;
}

int tok_sign(tok_ctx *ctx, const tok_key *k, jwa_alg alg, const uint8_t *in, size_t inlen,
             uint8_t *sig, size_t *siglen)
{
	sign_input si;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	uint8_t out[TOK_SIG_MAX];
	CK_ULONG outlen = sizeof(out);
	int r = 0;
	const char *fn = "C_SignInit";
	int attempt;
	CK_RV rv;

	if (ctx == NULL || k == NULL || sig == NULL || siglen == NULL || (in == NULL && inlen > 0))
		return err_set(P11J_E_BAD_REQUEST, "tok_sign: missing argument");
	if (alg <= JWA_NONE || alg >= JWA__COUNT)
		return err_set(P11J_E_UNSUPPORTED_ALG, "unknown JWS algorithm");
	if (!(jwa_algs_for_kind(k->kind) & JWA_BIT(alg)))
		return err_set(P11J_E_UNSUPPORTED_ALG, "%s does not fit key '%s' (%s); use %s",
		               jwa_name(alg), k->name, kind_name(k->kind),
		               jwa_name(jwa_default_for_kind(k->kind)));
	if (!(k->algs & JWA_BIT(alg)))
		return err_set(P11J_E_UNSUPPORTED_ALG,
		               "token '%s' has no mechanism for %s with key '%s'", ctx->label,
		               jwa_name(alg), k->name);
	if (*siglen < k->sig_len)
		return err_set(P11J_E_INTERNAL,
		               "signature buffer of %zu bytes is under the %zu "
		               "that key '%s' needs",
		               *siglen, k->sig_len, k->name);
	if (inlen > ULONG_MAX)
		return err_set(P11J_E_REQUEST_TOO_LARGE, "input too large to sign");

	if ((r = mech_input(ctx, alg, in, inlen, &si)) < 0)
		goto out;

	/* A fault (device or session lost) makes the token UNAVAILABLE; when
	 * the back-off allows, it is recovered at once and the signature tried
	 * once more, so a dropped session costs the client nothing. */
	for (attempt = 0;; attempt++) {
		bool fault = false;

		if ((r = sign_begin(ctx, k)) < 0)
			goto out;
		outlen = sizeof(out);
		fn = "C_SignInit";
		r = pool_get(ctx, &s);
		if (r < 0) {
			fault = r == P11J_E_TOKEN_UNAVAILABLE;
		} else {
			rv = ctx->f->C_SignInit(s, &si.mech, k->priv);
			if (rv == CKR_OK && k->always_auth) {
				/* CKA_ALWAYS_AUTHENTICATE: the PIN again for this
				 * one operation. */
				fn = "C_Login(CKU_CONTEXT_SPECIFIC)";
				rv = ctx->f->C_Login(s, CKU_CONTEXT_SPECIFIC,
				                     ctx->pinpad ? NULL : (CK_UTF8CHAR *)ctx->pin,
				                     ctx->pinpad ? 0 : (CK_ULONG)ctx->pin_len);
			}
			if (rv == CKR_OK) {
				fn = "C_Sign";
				rv = ctx->f->C_Sign(s, (CK_BYTE *)si.data, si.len, out, &outlen);
			}
			if (rv != CKR_OK) {
				r = tok_ck(ctx, fn, rv);
				fault = r == P11J_E_TOKEN_UNAVAILABLE;
				/* A key handle that stopped working: the token was
				 * swapped or re-inserted under our sessions; its
				 * objects must be found again. */
				if (rv == CKR_KEY_HANDLE_INVALID ||
				    rv == CKR_OBJECT_HANDLE_INVALID) {
					fault = true;
					r = err_set(P11J_E_TOKEN_UNAVAILABLE,
					            "%s on token '%s' failed: %s", fn, ctx->label,
					            tok_ckr_name(rv));
				}
				if (session_broken(rv))
					pool_drop(ctx, s);
				else
					pool_put(ctx, s);
			} else {
				pool_put(ctx, s);
			}
		}
		if (fault)
			mark_unavailable(ctx, err_msg());
		pthread_rwlock_unlock(&ctx->op_lock);
		if (r == 0)
			break;
		if (!fault || attempt > 0)
			goto out;
		{
			char first[256];

			snprintf(first, sizeof(first), "%s", err_msg());
			/* recovered: sign_begin() answers for a LOCKED token */
			if (recover(ctx, false, false) < 0) {
				r = err_set(P11J_E_TOKEN_UNAVAILABLE, "%s", first);
				goto out;
			}
		}
	}

	if (outlen == k->sig_len) {
		memcpy(sig, out, outlen);
	} else if (jwa_is_ec(alg) && outlen > 0 && out[0] == 0x30) {
		/* A module that returns DER for CKM_ECDSA. */
		r = jws_ecdsa_der_to_raw(out, outlen, k->sig_len / 2, sig);
		if (r < 0)
			goto out;
	} else {
		r = err_set(P11J_E_PKCS11,
		            "C_Sign on token '%s' returned %lu bytes for %s, "
		            "expected %zu",
		            ctx->label, (unsigned long)outlen, jwa_name(alg), k->sig_len);
		goto out;
	}
	*siglen = k->sig_len;
out:
	OPENSSL_cleanse(si.buf, sizeof(si.buf));
	return r;
}

int tok_signer_fn(void *signer, jwa_alg alg, const uint8_t *in, size_t inlen, uint8_t *sig,
                  size_t *siglen)
{
	tok_signer *ts = signer;

	if (ts == NULL)
		return err_set(P11J_E_BAD_REQUEST, "tok_signer_fn: no signer");
	return tok_sign(ts->ctx, ts->key, alg, in, inlen, sig, siglen);
}
