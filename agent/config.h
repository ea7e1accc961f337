/* SPDX-License-Identifier: MIT */
/*
 * The agent's configuration file (docs/man/p11jwt-agent.conf.5.scd): an INI
 * file read with libinih, with [agent], [token NAME] and [key NAME]
 * sections. cfg_load() checks everything that can be checked without a
 * token (syntax, names, types, ranges, algs, globs, users and groups,
 * references) and reports every error as "FILE:LINE: message". Users and
 * groups are resolved here, at load. No tokens are opened.
 */
#ifndef P11J_CONFIG_H
#define P11J_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include "agent/policy.h"
#include "jose/jwa.h"

#define CFG_MAX_FILE (1024 * 1024)
#define CFG_MAX_NAME 64

typedef enum { CFG_KID_THUMBPRINT = 0, CFG_KID_ID, CFG_KID_FIXED } cfg_kid_mode;

typedef struct {
	char *name;
	unsigned line;
	char *module;      /* NULL: p11-kit's registered modules */
	char *uri;         /* NULL: "pkcs11:" */
	char *pin_file;
	char *module_init_args; /* C_Initialize's pReserved (NSS softoken); needs module */
	unsigned init_args_line;
	pol_list module_allow;
	bool allow_unsafe_keys;
} cfg_token;

typedef struct {
	char *name;
	unsigned line;
	char *uri;         /* PKCS#11 URI of the key (object= and/or id=) */
	char *token;       /* [token NAME] it lives on; NULL: the only one, or the URI's */
	unsigned token_line;
	char *object;      /* CKA_LABEL, instead of a URI */
	jwa_alg alg;       /* default alg; JWA_NONE: the key's */
	cfg_kid_mode kid_mode;
	char *kid;         /* CFG_KID_FIXED */
	pol_key pol;       /* with the rotation state (state, retire_after) */
	unsigned state_line, retire_line; /* where state and retire_after are, or 0 */
} cfg_key;

typedef struct {
	char *path;
	char *socket;             /* NULL: not set */
	unsigned long max_connections, workers, line_timeout; /* 0: not set */
	unsigned long idle_timeout, max_connections_per_uid;  /* 0: not set */
	unsigned long sign_processes; /* 0: not set (sign in the agent) */
	cfg_token *tokens;
	size_t ntokens;
	cfg_key *keys;
	size_t nkeys;
} cfg_config;

/* Read and check path. 0 and *ret on success. On failure P11J_E_BAD_REQUEST
 * (or P11J_E_NOT_FOUND / P11J_E_SYSTEM when the file cannot be read) and,
 * when ret_errors is not NULL, every error as "FILE:LINE: message" lines
 * (each ending in "\n", malloc'ed) in *ret_errors. */
int cfg_load(const char *path, cfg_config **ret, char **ret_errors);

/* The same over a string (tests); name is used in messages. */
int cfg_load_string(const char *name, const char *text, size_t len, cfg_config **ret,
		    char **ret_errors);

void cfg_free(cfg_config *cfg);

const cfg_key *cfg_find_key(const cfg_config *cfg, const char *name);

/* Whether two token sections would open the same token the same way (a
 * reload keeps such a token open). */
bool cfg_token_same(const cfg_token *a, const cfg_token *b);

#endif
