/* SPDX-License-Identifier: MIT */
/*
 * Token layer: loads a PKCS#11 module through p11-kit, finds a token and its
 * signing keys by RFC 7512 URI, logs in once, and signs with C_Sign. Keys
 * never leave the token: only public attributes and C_Sign are used.
 * Thread-safe: tok_sign() may be called from many threads at once; each
 * concurrent signature uses its own session from a pool.
 */
#ifndef P11J_TOK_H
#define P11J_TOK_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <openssl/evp.h>
#include "common/log.h"
#include "jose/jwa.h"

typedef struct tok_ctx tok_ctx;
typedef struct tok_key tok_key;

/* The token layer logs through common/log.h's callback, at these syslog
 * priorities. */
enum { TOK_LOG_ERROR = LOG_ERR, TOK_LOG_WARNING = LOG_WARNING, TOK_LOG_INFO = LOG_INFO,
       TOK_LOG_DEBUG = LOG_DEBUG };

typedef struct {
	/* Module file; NULL: p11-kit's registered modules (p11_kit_modules_load). */
	const char *module_path;
	/* Extra allowed directory prefixes for realpath(module) beyond /usr/lib*
	 * and /usr/local/lib* (NULL-terminated array, may be NULL). */
	const char *const *module_allow;
	/* The module's initialisation parameters, given to C_Initialize as
	 * CK_C_INITIALIZE_ARGS.pReserved (NSS softoken: "configdir='sql:DIR'
	 * ..."); only with module_path (or the URI's module-path). Modules
	 * registered with p11-kit get their registration's x-init-reserved
	 * from p11-kit instead. Not a secret, but never logged. */
	const char *module_init_args;
	/* RFC 7512 URI selecting token and keys; NULL means "pkcs11:". Its
	 * module-path / module-name / pin-source / pin-value are honoured. */
	const char *uri;
	/* PIN file (must be 0600-ish: not group/other readable); NULL:
	 * $CREDENTIALS_DIRECTORY/pin (systemd credentials), the URI's pin-source,
	 * then env P11JWT_PIN. The PIN is kept in mlock()ed memory for logging
	 * in again after a fault, and wiped by tok_lock() and tok_close(). */
	const char *pin_file;
	/* Serve private keys that are extractable or not sensitive (warns). */
	bool allow_unsafe_keys;
	/* Do not log in (list public keys only, e.g. for jwks without a PIN). */
	bool no_login;
	/* With no PIN available, open "locked" instead of failing with
	 * P11J_E_PIN_REQUIRED: keys are listed from public objects and signing
	 * answers P11J_E_PIN_REQUIRED until tok_login(). */
	bool allow_locked;
	/* Look for no PIN anywhere (file, credential, URI, environment): a
	 * signing process (tok_proc_serve) opens locked and gets the PIN from
	 * the agent. */
	bool no_pin_sources;
	p11j_log_fn log;
	void *log_ud;
} tok_config;

/* Load module, initialise with CKF_OS_LOCKING_OK, pick the first initialised
 * token matching the URI (skipping slots without CKF_TOKEN_INITIALIZED), log
 * in, and enumerate every private key matching the URI with CKA_SIGN true
 * whose public key (public key object or certificate with the same CKA_ID)
 * can be read and is of a supported kind. Object handles are resolved once. */
int tok_open(const tok_config *cfg, tok_ctx **ret);

/* Close sessions, C_Finalize, unload. NULL is fine. Call before OpenSSL
 * cleanup (SoftHSM crashes otherwise). */
void tok_close(tok_ctx *ctx);

/* Token label, manufacturer, serial as read from CK_TOKEN_INFO (trimmed). */
const char *tok_label(const tok_ctx *ctx);

size_t tok_key_count(const tok_ctx *ctx);
const tok_key *tok_key_at(const tok_ctx *ctx, size_t i);
/* By CKA_LABEL; NULL if none. */
const tok_key *tok_key_find(const tok_ctx *ctx, const char *name);

/* List the token's keys again, with the filter of tok_open's URI: keys
 * still there keep their tok_key (pointers that requests hold stay valid),
 * a key no longer there is marked gone (tok_key_gone; tok_key_count/at/
 * find skip it; freed by tok_close only), new keys are added. *ret_added,
 * *ret_removed (may be NULL): how many. Safe while other threads sign;
 * one rescan (or walk of tok_key_at) at a time per context: the caller
 * serialises them. P11J_E_TOKEN_UNAVAILABLE when the token is away. */
int tok_rescan(tok_ctx *ctx, size_t *ret_added, size_t *ret_removed);
/* Whether a rescan found k gone from the token. */
bool tok_key_gone(const tok_key *k);

const char *tok_key_name(const tok_key *k);  /* CKA_LABEL (or hex id if no label) */
const char *tok_key_uri(const tok_key *k);   /* pkcs11:token=...;object=...;id=...;type=private */
const uint8_t *tok_key_id(const tok_key *k, size_t *ret_len);  /* CKA_ID */
EVP_PKEY *tok_key_pubkey(const tok_key *k);  /* borrowed, public only */
/* DER certificate with the same CKA_ID, or NULL. */
const uint8_t *tok_key_cert(const tok_key *k, size_t *ret_len);
jwa_keykind tok_key_kind(const tok_key *k);
/* True when the private key is extractable or not sensitive (served only
 * with allow_unsafe_keys). */
bool tok_key_unsafe(const tok_key *k);
/* Mask of algs this key can sign on this token (mechanisms it supports). */
unsigned tok_key_algs(const tok_key *k);

/* Sign in[0..inlen) for JWS alg: RS* via CKM_SHA*_RSA_PKCS (fallback: hash
 * in software + DigestInfo + CKM_RSA_PKCS), PS* via CKM_SHA*_RSA_PKCS_PSS
 * (fallback: hash in software + CKM_RSA_PKCS_PSS, same parameters),
 * ES* hash with OpenSSL then CKM_ECDSA (raw R||S, fixed width), EdDSA via
 * CKM_EDDSA. *siglen: size of sig in, length out. Thread-safe.
 * P11J_E_UNSUPPORTED_ALG if alg does not fit the key. Matches jws_sign_fn
 * when ctx is a tok_signer. */
int tok_sign(tok_ctx *ctx, const tok_key *k, jwa_alg alg, const uint8_t *in, size_t inlen,
	     uint8_t *sig, size_t *siglen);

/* Convenience pair for jws_sign_fn. */
typedef struct { tok_ctx *ctx; const tok_key *key; } tok_signer;
int tok_signer_fn(void *signer, jwa_alg alg, const uint8_t *in, size_t inlen,
		  uint8_t *sig, size_t *siglen);

/* PIN lifecycle and faults (docs/design-pkcs11.md, "PIN and login"):
 * READY signs; LOCKED (no PIN, or tok_lock()) lists keys and answers
 * P11J_E_PIN_REQUIRED; UNAVAILABLE (device or session lost) answers
 * P11J_E_TOKEN_UNAVAILABLE at once, and the next call after a back-off of
 * TOK_RECOVER_MS re-opens sessions, logs in with the cached PIN and finds
 * the keys' objects again. */
typedef enum { TOK_READY = 0, TOK_LOCKED = 1, TOK_UNAVAILABLE = 2 } tok_state;
#define TOK_RECOVER_MS 500
/* How many sessions the token says it takes at once (CK_TOKEN_INFO's
 * ulMaxSessionCount, or the limit learnt from CKR_SESSION_COUNT), capped at
 * the pool's 64; 0 when it names none. A network HSM's limit is how many
 * signatures it works on at once: the agent sizes its workers by it. */
size_t tok_session_limit(tok_ctx *ctx);

/* Signatures made on this context, and the thread CPU time spent inside
 * the module (C_SignInit + C_Sign) by every 16th signature of each
 * signing thread: *ret_sampled_ns over *ret_samples signatures, whose mean
 * estimates one signature's module CPU. For the "status" op and the
 * benchmark's "agent's own CPU" (agent CPU minus the module's). */
void tok_sign_stats(tok_ctx *ctx, uint64_t *ret_signatures, uint64_t *ret_samples,
		    uint64_t *ret_sampled_ns);

tok_state tok_get_state(tok_ctx *ctx);
const char *tok_state_name(tok_state st); /* "ready", "locked", "unavailable" */

/* Log in with pin[0..len) (pin NULL: the token's protected authentication
 * path, a PIN pad). A PIN the token rejected once in this process is refused
 * without calling C_Login (P11J_E_PIN_INCORRECT). On success the PIN is
 * cached (mlock()ed) and the keys' private objects are found. Already logged
 * in: 0 if pin is the cached PIN, else P11J_E_BAD_REQUEST (tok_lock() first).
 * The caller wipes its copy of the PIN. */
int tok_login(tok_ctx *ctx, const char *pin, size_t len);
/* C_Logout and wipe the cached PIN; signing answers P11J_E_PIN_REQUIRED. */
int tok_lock(tok_ctx *ctx);
/* Whether uri (NULL or "": any) selects this context's token. */
bool tok_matches(const tok_ctx *ctx, const char *uri);

/* Signing processes (docs/design.md, "Signing processes"): n processes,
 * each running exe with argv[1] = arg, which calls tok_proc_serve(); each
 * does its own C_Initialize and C_Login (the PIN over its socket) and
 * signs what tok_sign() routes to it, while this context keeps listing,
 * login, lock and state. A process that dies fails only its request
 * (token_unavailable, naming its pid and signal) and is started again
 * with a back-off. Call once, right after tok_open(); tok_close() stops
 * them. */
#define TOK_PROC_MAX 64
typedef struct {
	unsigned n;      /* 1..TOK_PROC_MAX */
	const char *exe; /* "/proc/self/exe" */
	const char *arg; /* the hidden mode argument */
} tok_proc_config;
int tok_proc_start(tok_ctx *ctx, const tok_config *cfg, const tok_proc_config *pc);
typedef struct {
	unsigned n, running; /* configured, serving now */
	uint64_t restarts;   /* processes started after the first n */
	uint64_t crashes;    /* died while the agent needed them */
	int pid[TOK_PROC_MAX]; /* 0: not running */
} tok_proc_stats;
/* false when ctx signs in process. */
bool tok_proc_stats_get(tok_ctx *ctx, tok_proc_stats *ret);
/* The signing process's main: serves the agent on fd until it closes
 * it; returns the exit status. log: where the process's own lines go
 * before the agent is reached (stderr). */
int tok_proc_serve(int fd);

/* Name of a CK_RV ("CKR_PIN_INCORRECT") and its mapping to P11J_E_*. */
const char *tok_ckr_name(unsigned long rv);
int tok_ckr_to_err(unsigned long rv);

#endif
