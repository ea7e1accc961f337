/* SPDX-License-Identifier: MIT */
/*
 * Per-key policy (docs/man/p11jwt-agent.conf.5.scd): who may use a key and
 * what a JWT signed with it may say. Pure decisions over the request, no
 * I/O: the protocol handler asks, the configuration fills the rules. A key
 * without rules (pol NULL) gets the safe defaults: only the agent's own uid
 * and root, at most POL_DEFAULT_MAX_LIFETIME seconds, no jku/x5u/jwk.
 */
#ifndef P11J_POLICY_H
#define P11J_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <jansson.h>
#include "jose/jwa.h"

#define POL_DEFAULT_MAX_LIFETIME 3600
#define POL_MAX_LIFETIME 86400 /* the most a max_lifetime may say */

/* Certificate members a JWT may carry (include = / include_auto =). */
enum { POL_INC_X5T = 1, POL_INC_X5T_S256 = 2, POL_INC_X5C = 4, POL_INC_ALL = 7 };

typedef struct {
	char **v;
	size_t n;
} pol_list;

typedef struct pol_key {
	unsigned algs;          /* JWA_BIT mask allowed; 0: whatever the key signs */
	uid_t *uids;            /* besides the agent's uid and root */
	size_t nuids;
	gid_t *gids;            /* the peer's (primary) gid */
	size_t ngids;
	int64_t max_lifetime;   /* seconds; 0: POL_DEFAULT_MAX_LIFETIME */
	pol_list iss, sub, aud; /* exact values or fnmatch(3) globs; n == 0: any */
	pol_list deny_header;   /* header members clients may not set */
	unsigned include;       /* POL_INC_* a client may ask for */
	unsigned include_auto;  /* POL_INC_* added to every JWT */
	bool dpop;              /* may make DPoP proofs (op "dpop"); default no */
	int state;              /* POL_STATE_*: where the key is in a rotation */
	int64_t retire_after;   /* retiring: signs nothing from this time on (Unix s) */
} pol_key;

/* Key states for rotation (docs/rotation.md): active keys sign; next keys
 * are published (keys, jwks) and sign only when a request names them, a
 * role (@active) never picks one; retiring keys are published and sign
 * until retire_after, then refuse (policy_violation). */
enum { POL_STATE_ACTIVE = 0, POL_STATE_NEXT = 1, POL_STATE_RETIRING = 2 };

/* "active", "next", "retiring". */
const char *pol_state_name(int state);
/* The state named s; -1 when none. */
int pol_state_from_name(const char *s);

/* An RFC 3339 date-time ("2026-12-31T23:59:59Z", "...+01:00", fraction
 * allowed and dropped) or an ISO 8601 date ("2026-12-31", midnight UTC)
 * as Unix seconds. P11J_E_BAD_REQUEST naming the forms otherwise. */
int pol_parse_time(const char *s, int64_t *ret);
/* t as "2026-12-31T23:59:59Z" into buf (at least 21 bytes). */
void pol_format_time(int64_t t, char *buf, size_t len);

/* Whether a key under p (NULL: defaults) may sign now: a retiring key
 * after its retire_after does not (P11J_E_POLICY naming the date). For
 * sign and dpop alike. */
int pol_check_state(const pol_key *p, const char *keyname, int64_t now);

/* Fill p with the defaults (no allocation). */
void pol_key_init(pol_key *p);
void pol_key_clear(pol_key *p);

/* Whether uid/gid may use a key under p (NULL: defaults). */
bool pol_may_use(const pol_key *p, uid_t owner, uid_t uid, gid_t gid);

/* Check a sign request against p (NULL: defaults) before signing: alg,
 * caller's header (may be NULL), the requested lifetime and the final
 * claims (with iat/exp filled in), the include mask asked for. On success
 * *inc gets the include mask to use (asked | include_auto). P11J_E_POLICY
 * with a message naming the rule otherwise. now: util_now(). */
int pol_check_sign(const pol_key *p, const char *keyname, unsigned key_algs, jwa_alg alg,
		   const json_t *header, int64_t lifetime, const json_t *claims, int64_t now,
		   unsigned *inc);

/* Check a DPoP proof request against p: the key must be allowed to make
 * proofs (p->dpop; for a key without rules, pol NULL, dflt says: the
 * agent's --allow-dpop) and alg must be one of its algs. P11J_E_POLICY
 * naming the rule otherwise. */
int pol_check_dpop(const pol_key *p, bool dflt, const char *keyname, unsigned key_algs,
		   jwa_alg alg);

/* Whether s looks like a glob (has *, ? or [). */
bool pol_is_glob(const char *s);
/* Whether s is one of l's values or matches one of its globs (fnmatch
 * without FNM_PATHNAME: '*' spans '/' in URLs). */
bool pol_list_match(const pol_list *l, const char *s);

#endif
