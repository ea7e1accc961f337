/* SPDX-License-Identifier: MIT */
#include "agent/policy.h"
#include "common/err.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const default_deny[] = { "jku", "x5u", "jwk" };

static const pol_key pol_defaults = {
	.max_lifetime = POL_DEFAULT_MAX_LIFETIME,
	.deny_header = { (char **)default_deny, 3 },
	.include = POL_INC_ALL,
};

void pol_key_init(pol_key *p)
{
	*p = pol_defaults;
}

static void list_clear(pol_list *l)
{
	if (l->v != (char **)default_deny) {
		for (size_t i = 0; i < l->n; i++)
			free(l->v[i]);
		free(l->v);
	}
	l->v = NULL;
	l->n = 0;
}

void pol_key_clear(pol_key *p)
{
	if (p == NULL)
		return;
	free(p->uids);
	free(p->gids);
	list_clear(&p->iss);
	list_clear(&p->sub);
	list_clear(&p->aud);
	list_clear(&p->deny_header);
	pol_key_init(p);
}

bool pol_is_glob(const char *s)
{
	return strpbrk(s, "*?[") != NULL;
}

bool pol_may_use(const pol_key *p, uid_t owner, uid_t uid, gid_t gid)
{
	if (uid == owner || uid == 0)
		return true;
	if (p == NULL)
		return false;
	for (size_t i = 0; i < p->nuids; i++)
		if (p->uids[i] == uid)
			return true;
	for (size_t i = 0; i < p->ngids; i++)
		if (p->gids[i] == gid)
			return true;
	return false;
}

bool pol_list_match(const pol_list *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++) {
		if (strcmp(l->v[i], s) == 0)
			return true;
		/* no FNM_PATHNAME: '*' spans '/' in URLs */
		if (pol_is_glob(l->v[i]) && fnmatch(l->v[i], s, 0) == 0)
			return true;
	}
	return false;
}

/* One string claim, or (aud) an array whose every element must match. */
static int check_claim(const pol_list *l, const char *keyname, const char *claim,
		       const json_t *claims, bool array_ok)
{
	const json_t *v = json_object_get(claims, claim), *e;
	size_t i;

	if (l->n == 0)
		return 0;
	if (v == NULL)
		return err_set(P11J_E_POLICY, "key %s: claim %s is required (policy %s)", keyname,
			       claim, claim);
	if (json_is_string(v)) {
		if (!pol_list_match(l, json_string_value(v)))
			return err_set(P11J_E_POLICY,
				       "key %s: claim %s '%.256s' does not match any allowed value "
				       "(policy %s)", keyname, claim, json_string_value(v), claim);
		return 0;
	}
	if (!array_ok || !json_is_array(v))
		return err_set(P11J_E_POLICY, "key %s: claim %s must be a string%s (policy %s)",
			       keyname, claim, array_ok ? " or an array of strings" : "", claim);
	if (json_array_size(v) == 0)
		return err_set(P11J_E_POLICY, "key %s: claim %s is an empty array (policy %s)",
			       keyname, claim, claim);
	json_array_foreach(v, i, e) {
		if (!json_is_string(e))
			return err_set(P11J_E_POLICY,
				       "key %s: claim %s[%zu] is not a string (policy %s)", keyname,
				       claim, i, claim);
		if (!pol_list_match(l, json_string_value(e)))
			return err_set(P11J_E_POLICY,
				       "key %s: claim %s '%.256s' does not match any allowed value "
				       "(policy %s)", keyname, claim, json_string_value(e), claim);
	}
	return 0;
}

static void algs_text(unsigned mask, char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	for (int a = JWA_NONE + 1; a < JWA__COUNT; a++)
		if ((mask & JWA_BIT(a)) && o < len)
			o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? ", " : "",
					      jwa_name((jwa_alg)a));
}

static const char *inc_name(unsigned bit)
{
	return bit == POL_INC_X5T ? "x5t" : bit == POL_INC_X5T_S256 ? "x5t#S256" : "x5c";
}

/* the alg rule, shared by sign and dpop */
static int check_alg(const pol_key *p, const char *keyname, unsigned key_algs, jwa_alg alg)
{
	char buf[128];

	if (p->algs == 0 || (p->algs & JWA_BIT(alg)))
		return 0;
	algs_text(p->algs & key_algs, buf, sizeof(buf));
	return err_set(P11J_E_POLICY, "alg %s not allowed for key %s (allowed: %s)", jwa_name(alg),
		       keyname, buf[0] ? buf : "none on this token");
}

int pol_check_dpop(const pol_key *p, bool dflt, const char *keyname, unsigned key_algs,
		   jwa_alg alg)
{
	if (!(p != NULL ? p->dpop : dflt))
		return err_set(P11J_E_POLICY, "key %s may not make DPoP proofs (policy dpop; %s)",
			       keyname, p != NULL ? "set dpop = yes in its [key] section"
						  : "start the agent with --allow-dpop");
	return check_alg(p != NULL ? p : &pol_defaults, keyname, key_algs, alg);
}

int pol_check_sign(const pol_key *p, const char *keyname, unsigned key_algs, jwa_alg alg,
		   const json_t *header, int64_t lifetime, const json_t *claims, int64_t now,
		   unsigned *inc)
{
	int64_t max;
	const json_t *exp;
	int64_t left = INT64_MAX;
	int r;

	if (p == NULL)
		p = &pol_defaults;
	max = p->max_lifetime > 0 ? p->max_lifetime : POL_DEFAULT_MAX_LIFETIME;
	if ((r = pol_check_state(p, keyname, now)) < 0 ||
	    (r = check_alg(p, keyname, key_algs, alg)) < 0)
		return r;
	if (header != NULL)
		for (size_t i = 0; i < p->deny_header.n; i++)
			if (json_object_get(header, p->deny_header.v[i]) != NULL)
				return err_set(P11J_E_POLICY,
					       "key %s: header parameter %s may not be set by clients "
					       "(policy deny_header)", keyname, p->deny_header.v[i]);
	for (unsigned bit = 1; bit <= POL_INC_X5C; bit <<= 1) {
		bool allowed = (p->include | p->include_auto) & bit;

		/* a certificate member in the client's header is governed like
		 * one it asks the agent to add; where allowed, the agent writes
		 * the key's own value over it (a client cannot name a
		 * certificate of its choosing) */
		if (header != NULL && json_object_get(header, inc_name(bit)) != NULL) {
			if (!allowed)
				return err_set(P11J_E_POLICY,
					       "key %s: header parameter %s may not be set "
					       "(policy include)", keyname, inc_name(bit));
			*inc |= bit;
		}
		if ((*inc & bit) && !allowed)
			return err_set(P11J_E_POLICY,
				       "key %s: %s may not be included (policy include)", keyname,
				       inc_name(bit));
	}
	if (lifetime > max)
		return err_set(P11J_E_POLICY, "key %s: lifetime %lld over the key's max_lifetime %lld",
			       keyname, (long long)lifetime, (long long)max);
	/* the caller may set exp (or iat) itself: what counts is how long the
	 * JWT is valid from now */
	exp = json_object_get(claims, "exp");
	if (json_is_real(exp)) {
		/* a NumericDate may have a fraction */
		double d = json_real_value(exp) - (double)now;

		left = d > (double)INT64_MAX / 2 ? INT64_MAX : d < 0 ? 0 : (int64_t)d + (d > (int64_t)d);
		if (left > max)
			return err_set(P11J_E_POLICY,
				       "key %s: claim exp is %lld s from now, over the key's "
				       "max_lifetime %lld", keyname, (long long)left, (long long)max);
	}
	/* an exp that is not a number makes no NumericDate: verifiers refuse
	 * the JWT, so it cannot outlive the limit */
	if (json_is_integer(exp) &&
	    (__builtin_sub_overflow((int64_t)json_integer_value(exp), now, &left) || left > max))
		return err_set(P11J_E_POLICY,
			       "key %s: claim exp is %lld s from now, over the key's max_lifetime "
			       "%lld", keyname, (long long)left, (long long)max);
	if ((r = check_claim(&p->iss, keyname, "iss", claims, false)) < 0 ||
	    (r = check_claim(&p->sub, keyname, "sub", claims, false)) < 0 ||
	    (r = check_claim(&p->aud, keyname, "aud", claims, true)) < 0)
		return r;
	*inc |= p->include_auto;
	return 0;
}

static const char *const state_names[] = { "active", "next", "retiring" };

const char *pol_state_name(int state)
{
	return state >= 0 && state <= POL_STATE_RETIRING ? state_names[state] : "active";
}

int pol_state_from_name(const char *s)
{
	for (int i = 0; i <= POL_STATE_RETIRING; i++)
		if (strcmp(s, state_names[i]) == 0)
			return i;
	return -1;
}

/* n digits at s into *v; false if any is not a digit */
static bool digits(const char *s, int n, int *v)
{
	*v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		*v = *v * 10 + (s[i] - '0');
	}
	return true;
}

int pol_parse_time(const char *s, int64_t *ret)
{
	static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	struct tm tm = { 0 };
	int y, mo, d, h = 0, mi = 0, sec = 0, oh = 0, om = 0, sign = 0;
	const char *p = s;
	time_t t;

	if (strlen(s) < 10 || !digits(p, 4, &y) || p[4] != '-' || !digits(p + 5, 2, &mo) ||
	    p[7] != '-' || !digits(p + 8, 2, &d))
		goto bad;
	p += 10;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		if (!digits(p + 1, 2, &h) || p[3] != ':' || !digits(p + 4, 2, &mi) || p[6] != ':' ||
		    !digits(p + 7, 2, &sec))
			goto bad;
		p += 9;
		if (*p == '.') {
			if (p[1] < '0' || p[1] > '9')
				goto bad;
			for (p++; *p >= '0' && *p <= '9'; p++)
				;
		}
		if (*p == 'Z' || *p == 'z') {
			p++;
		} else if (*p == '+' || *p == '-') {
			sign = *p == '+' ? 1 : -1;
			if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) ||
			    oh > 23 || om > 59)
				goto bad;
			p += 6;
		} else {
			goto bad; /* a time without its offset is ambiguous */
		}
	}
	if (*p != '\0' || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] ||
	    (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) || h > 23 ||
	    mi > 59 || sec > 60)
		goto bad;
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec > 59 ? 59 : sec;
	t = timegm(&tm);
	*ret = (int64_t)t - sign * (oh * 3600 + om * 60);
	return 0;
bad:
	return err_set(P11J_E_BAD_REQUEST, "'%.64s' is not a date: give 2026-12-31, "
		       "2026-12-31T12:00:00Z or 2026-12-31T12:00:00+01:00 (RFC 3339)", s);
}

void pol_format_time(int64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (gmtime_r(&tt, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, len, "%lld", (long long)t);
}

int pol_check_state(const pol_key *p, const char *keyname, int64_t now)
{
	char when[32];

	if (p == NULL || p->state != POL_STATE_RETIRING || now < p->retire_after)
		return 0;
	pol_format_time(p->retire_after, when, sizeof(when));
	return err_set(P11J_E_POLICY, "key %s is retiring and signs nothing after %s (policy "
		       "state = retiring, retire_after); sign with the active key", keyname, when);
}
