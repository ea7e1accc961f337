/* SPDX-License-Identifier: MIT */
/*
 * Inside the token layer: the context and key structs every pkcs11/tok*.c
 * file shares, and the functions they call in each other, grouped by the
 * file that defines them (docs/design-pkcs11.md has the map). Also what
 * pkcs11/admin.c needs beyond the public API. Not part of the public API;
 * the test hooks are in pkcs11/tok-test.h.
 */
#ifndef P11J_TOK_INTERNAL_H
#define P11J_TOK_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>
#include "pkcs11/tok.h"

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
#define TOK_DI_LEN 19     /* DER DigestInfo before a SHA-2 digest */

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
	/* no longer on the token (tok_rescan): skipped by tok_key_count/at/
	 * find, freed only by tok_close, since requests may hold it */
	bool gone;
};

enum { MOD_SKIPPED = 0, MOD_SHARED = 1, MOD_OURS = 2 };

struct tok_ctx {
	CK_FUNCTION_LIST **mods; /* NULL-terminated */
	uint8_t *state;          /* MOD_* per module */
	bool mods_from_registry; /* p11_kit_modules_load() list */
	char **files;            /* each module's file (or NULL), one per mods[] */
	char *init_args;         /* pReserved for a module loaded by path, or NULL */
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
	/* keys_mu guards keys, nkeys and each key's gone against tok_rescan
	 * on another thread (keys are only ever added); the URI's object= and
	 * id=, saved at open, select the same keys in a rescan */
	pthread_mutex_t keys_mu;
	bool keys_mu_ok;
	uint8_t *filt_label, *filt_id;
	size_t filt_label_len, filt_id_len;
	bool filt_label_set, filt_id_set;

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
	 * without waiting for op_lock. tstate is written under state_mu but
	 * atomic, so that tok_get_state() (twice per signature) reads it
	 * without taking the mutex every signing thread would share. */
	pthread_rwlock_t op_lock;
	pthread_mutex_t state_mu;
	_Atomic tok_state tstate;
	bool recovering;
	uint64_t next_try_ms; /* no recovery attempt before this */
	char *pin;            /* mlock()ed page, TOK_PIN_MAX + 1 bytes */
	size_t pin_len;
	bool pin_cached;
	bool pinpad; /* logged in through the protected authentication path */

	/* Thread CPU time inside the module's C_SignInit + C_Sign, measured
	 * on every TOK_CPU_SAMPLE-th signature of each thread (two clock reads
	 * cost ~0.4 µs each on a VM, too much for every signature). */
	_Atomic uint64_t cpu_sampled_ns, cpu_samples, signatures;

	/* signing processes (tok-proc.c), or NULL: sign in this process */
	struct tok_procs *procs;

	p11j_log_fn log;
	void *log_ud;
};

#define TOK_CPU_SAMPLE 16

/* ---- tok.c: the context's life ----------------------------------------- */

void tok_log(const tok_ctx *ctx, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- tok-ckr.c: CK_RV names and mapping -------------------------------- */

/* The one place a failing C_* call becomes an error: "C_Login on token
 * 'p11jwt-test' failed: CKR_PIN_INCORRECT". 0 for the CK_RVs that count as
 * success (tok_ckr_to_err). ctx may be NULL (no token chosen yet). */
int tok_ck(const tok_ctx *ctx, const char *fn, CK_RV rv);

/* ---- tok-module.c: loading modules ------------------------------------- */

/* Load the module of cfg (or the URI's module-path), else p11-kit's
 * registered modules (narrowed by the URI's module-name), each allowlisted
 * by realpath(), and C_Initialize them. */
int tok_module_load(tok_ctx *ctx, const tok_config *cfg, P11KitUri *uri);
/* C_Initialize module ctx->mods[i] (at load, and again in recovery): a
 * module loaded by path gets CKF_OS_LOCKING_OK and ctx->init_args as
 * pReserved; one registered with p11-kit is initialised the way p11-kit
 * would, with its registration's x-init-reserved. 0 also for
 * CKR_CRYPTOKI_ALREADY_INITIALIZED; on failure the error names the
 * module's file and the CKR_. */
int tok_module_init(const tok_ctx *ctx, size_t i);
/* The file of module ctx->mods[i], for messages. */
const char *tok_module_file(const tok_ctx *ctx, size_t i);
/* C_Finalize the modules we initialised, and release them all. */
void tok_module_unload(tok_ctx *ctx);

/* ---- tok-slot.c: finding the token ------------------------------------- */

/* The first initialised token matching uri in any loaded module: sets
 * ctx->f, mod_idx, slot, ti and label. uri_shown is for the message that
 * lists the tokens seen when none matches. */
int tok_slot_find(tok_ctx *ctx, P11KitUri *uri, const char *uri_shown);
/* The same token (label, manufacturer, model, serial) again in ctx->f,
 * after a reconnect maybe in another slot. 1 found, 0 not present. */
int tok_slot_refind(tok_ctx *ctx);

/* ---- tok-mech.c: JWS algorithm -> mechanism ---------------------------- */

/* Which algorithms the token has a mechanism for (C_GetMechanismList). */
int tok_mech_read(tok_ctx *ctx);
/* Mask of the algs of a key kind this token can sign. */
unsigned tok_mech_algs(const tok_ctx *ctx, jwa_keykind kind);

/* The mechanisms alg needs, for messages ("CKM_SHA256_RSA_PKCS_PSS or
 * CKM_RSA_PKCS_PSS"). */
const char *tok_mech_wanted(jwa_alg alg);

/* What C_SignInit and C_Sign get for one signature. */
typedef struct {
	CK_MECHANISM mech;
	CK_RSA_PKCS_PSS_PARAMS pss;
	const uint8_t *data;
	CK_ULONG len;
	uint8_t buf[TOK_DI_LEN + EVP_MAX_MD_SIZE]; /* DigestInfo and digest hashed here */
} tok_sign_input;

/* The mechanism, its parameters and the bytes to sign for alg over
 * in[0..inlen): hashed on the token when it can, else hashed here for the
 * raw mechanism. The caller wipes ret->buf. */
int tok_mech_input(const tok_ctx *ctx, jwa_alg alg, const uint8_t *in, size_t inlen,
                   tok_sign_input *ret);

/* ---- tok-pin.c: PIN, login, lock --------------------------------------- */

int tok_pin_store_init(tok_ctx *ctx);
void tok_pin_store_wipe(tok_ctx *ctx);
void tok_pin_store_free(tok_ctx *ctx);
/* C_Login(CKU_USER) on session s with pin (NULL: the protected
 * authentication path), never twice with a PIN the token rejected; on
 * success the PIN is cached for logging in again after a fault. */
int tok_pin_login(tok_ctx *ctx, CK_SESSION_HANDLE s, const char *pin, size_t len);
/* Login at open with the PIN cfg and the URI lead to. *ret_locked: no PIN
 * anywhere and cfg->allow_locked. */
int tok_pin_open_login(tok_ctx *ctx, const tok_config *cfg, P11KitUri *uri, const char *uri_pin,
                       CK_SESSION_HANDLE s, bool *ret_locked);

/* ---- tok-object.c: attributes and searches ----------------------------- */

/* Variable-length attribute into a fresh buffer (NUL-terminated for
 * convenience). Absent or unreadable: *ret NULL, *ret_len 0, returns 0. */
int tok_attr_get(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                 size_t max, uint8_t **ret, size_t *ret_len);
/* Fixed-size attribute; returns 1 if read, 0 if absent. */
int tok_attr_fixed(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                   void *val, size_t len);
/* Every object matching tmpl (at most TOK_FIND_MAX); *ret is freed by the
 * caller. */
int tok_objects_find(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                     CK_OBJECT_HANDLE **ret, size_t *ret_n);

/* ---- tok-pubkey.c: public keys and certificates ------------------------ */

/* The public key of object o (a public key, or a private key with its
 * public attributes) of type kt (CKK_RSA, CKK_EC, CKK_EC_EDWARDS), read
 * from its attributes on session s; name is for messages. The agent reads
 * keys with it at open; admin.c reads the keys it has just generated. */
int tok_pub_from_object(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_KEY_TYPE kt,
                        const char *name, EVP_PKEY **ret);
/* The DER of certificate o and its public key. P11J_E_NOT_FOUND without a
 * CKA_VALUE. */
int tok_cert_read(tok_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, uint8_t **ret_der,
                  size_t *ret_len, EVP_PKEY **ret_pub);

/* CKA_EC_PARAMS of the curves the token layer knows (DER OIDs; for
 * Ed25519 the PrintableString "edwards25519" SoftHSM takes). */
extern const uint8_t tok_oid_p256[10], tok_oid_p384[7], tok_oid_p521[7];
extern const uint8_t tok_str_ed25519[14];

/* ---- tok-keys.c: key enumeration and handles --------------------------- */

/* Every key matching the URI, from the private keys, or with public_only
 * (no login, or locked) from the public key objects and certificates. */
int tok_keys_enumerate(tok_ctx *ctx, P11KitUri *uri, CK_SESSION_HANDLE s, bool public_only);
/* Find every key's private key again (after login or recovery). */
int tok_keys_resolve(tok_ctx *ctx, CK_SESSION_HANDLE s);
/* Forget every key's private key handle. */
void tok_keys_forget(tok_ctx *ctx);
void tok_key_free(tok_key *k);
/* Free every key of ctx. */
void tok_keys_free(tok_ctx *ctx);

/* ---- tok-pool.c: the session pool -------------------------------------- */

/* A session for one operation: a free one, or a new one while fewer than
 * TOK_POOL_MAX are open, else wait. */
int tok_pool_get(tok_ctx *ctx, CK_SESSION_HANDLE *ret);
void tok_pool_put(tok_ctx *ctx, CK_SESSION_HANDLE h);
/* Close a session in an unknown state instead of putting it back. */
void tok_pool_drop(tok_ctx *ctx, CK_SESSION_HANDLE h);
/* Close the free sessions; exclusive op_lock (none in use). */
void tok_pool_flush(tok_ctx *ctx);

/* ---- tok-recover.c: state and recovery --------------------------------- */

void tok_state_set(tok_ctx *ctx, tok_state st);
/* UNAVAILABLE from now until a recovery succeeds; why is logged once. */
void tok_mark_unavailable(tok_ctx *ctx, const char *why);
/* CLOCK_MONOTONIC in milliseconds (recovery back-offs, signing processes). */
uint64_t tok_now_ms(void);
/* No recovery attempt before TOK_RECOVER_MS from now. */
void tok_recover_later(tok_ctx *ctx);
/* Try to recover if nobody else is and the back-off allows (force: login
 * asks, back-off ignored). Returns 0 when the state changed from
 * UNAVAILABLE (to READY or LOCKED), else P11J_E_TOKEN_UNAVAILABLE at once. */
int tok_recover(tok_ctx *ctx, bool force, bool have_wrlock);

/* ---- tok-proc.c: signing processes ------------------------------------ */

/* The signature of tok_sign() made by a signing process; op_lock held
 * shared. *ret_fault: the process's token failed (not the process). */
int tok_proc_sign(tok_ctx *ctx, const tok_key *k, jwa_alg alg, const uint8_t *in, size_t inlen,
                  uint8_t *sig, size_t *siglen, bool *ret_fault);
/* op_lock held exclusively (no process is signing): the context was
 * recovered, logged in, or locked; each process follows. */
void tok_proc_recovered(tok_ctx *ctx);
void tok_proc_login(tok_ctx *ctx);
void tok_proc_lock(tok_ctx *ctx);
/* Stop the processes (tok_close). */
void tok_proc_stop(tok_ctx *ctx);

/* ---- for pkcs11/admin.c ------------------------------------------------ */

/* tok.c: tok_open() that also accepts a token holding no usable key yet
 * (key generation, storing certificates). */
int tok_open_any(const tok_config *cfg, tok_ctx **ret);

/* tok.c: the chosen token's module and slot. Sessions opened on it are
 * logged in already (login is per token); the caller closes the ones it
 * opens. */
CK_FUNCTION_LIST *tok_module(tok_ctx *ctx, CK_SLOT_ID *ret_slot);

#endif
