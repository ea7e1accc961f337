/* SPDX-License-Identifier: MIT */
/*
 * The agent's current configuration, replaced on SIGHUP. A generation is
 * the parsed configuration, the tokens it opened and the keyring built from
 * them (with each key's policy). Requests hold a reference to the
 * generation they started with (proto_env.acquire/release), so a reload
 * never frees a keyring or closes a token under a request: the new
 * generation is built first (opening only tokens whose sections changed,
 * reusing the others with their login state), swapped in, and the old one
 * is freed by whoever drops its last reference.
 */
#ifndef P11J_RELOAD_H
#define P11J_RELOAD_H

#include <stdbool.h>
#include <stddef.h>
#include "agent/config.h"
#include "agent/keyring.h"
#include "pkcs11/tok.h"

typedef struct reload_ctx reload_ctx;

typedef struct {
	/* configuration file, re-read by reload_now(); NULL: none */
	const char *path;
	/* the token from the command line, used when the file has no
	 * [token] section (or there is no file) */
	const char *module;
	const char *module_init_args; /* C_Initialize's pReserved, or NULL */
	const char *const *module_allow; /* NULL-terminated, may be NULL */
	const char *uri;
	const char *pin_file;
	bool allow_unsafe_keys;
	/* > 0: every token signs in this many processes of its own
	 * (tok_proc_start), running sign_exe with argv[1] sign_arg */
	unsigned sign_processes;
	const char *sign_exe, *sign_arg;
	p11j_log_fn log;     /* reload's own lines (ud NULL) */
	p11j_log_fn tok_log; /* the token layer's (ud NULL) */
} reload_config;

/* Open the tokens and build the first generation from cfg (taken; NULL:
 * no file). Fails with the token layer's code and err_msg(). */
int reload_new(const reload_config *c, cfg_config *cfg, reload_ctx **ret);

/* For proto_env: the current keyring, and a reference to give back. */
const keyring *reload_acquire(void *r, void **ref);
void reload_release(void *ref);

/* List every token's keys again (tok_rescan), re-read the file if there
 * is one, and switch to the generation built from them. A file with errors
 * (each logged as FILE:LINE: message) or a token that does not open keeps
 * the current generation. A configured key that the current generation
 * serves and that is no longer on its token is dropped with a warning. */
int reload_now(reload_ctx *r);
/* The same for the protocol's "reload" op (proto_env.reload, ud the
 * reload_ctx): adds "added" and "removed" (key names), "keys" (how many
 * now) and "config" (the file re-read, or null) to resp. */
int reload_op(void *r, json_t *resp);

/* For proto_env.unknown_key (ud the reload_ctx): at most once per
 * RELOAD_RESCAN_INTERVAL_MS, whoever asks, list the tokens' keys again
 * (the file is not re-read) and return 1 when the new generation serves
 * name; otherwise (or within the interval) 0 at once. */
#define RELOAD_RESCAN_INTERVAL_MS 5000
int reload_unknown_key(void *r, const char *name);

/* Start the thread that runs reload_now() after reload_later(). */
int reload_start(reload_ctx *r);
/* Async-signal-safe: ask for a reload (SIGHUP). */
void reload_later(reload_ctx *r);

/* Stop the thread and drop the current generation (after the server has
 * answered every request). NULL is fine. */
void reload_free(reload_ctx *r);

/* Tokens of a generation (ref from reload_acquire()). */
size_t reload_token_count(void *ref);
tok_ctx *reload_token_at(void *ref, size_t i);
/* The token a login/lock request names (uri NULL: the only one). */
int reload_pick_token(void *ref, const char *uri, tok_ctx **ret);

#endif
