/* SPDX-License-Identifier: MIT */
/*
 * The fast path for "sign" and "dpop" (agent/proto-fast.h).
 *
 * What it takes, and why each rule keeps it byte-identical to the Jansson
 * path (json_loadb with JSON_REJECT_DUPLICATES, op_sign / op_dpop,
 * audit_fill, jsonfast printing):
 *   - strings of printable ASCII (and 0x7F) without any backslash: the
 *     bytes between the quotes are the decoded value and what jsonfast
 *     prints back, so values are copied, never decoded or escaped;
 *   - integers -?(0|[1-9][0-9]{0,17}), never followed by '.', 'e' or 'E':
 *     in range, and printed back as Jansson prints the parsed value ("-0"
 *     becomes 0); no reals, whose printing is Jansson's own;
 *   - true, false, null, arrays and objects nested at most FAST_MAX_DEPTH
 *     deep, objects of at most FAST_MAX_MEMBERS members, none twice (a
 *     duplicate is an error answer there);
 *   - only the members op_sign / op_dpop allow, less "header" and
 *     "include": nothing of the request's header, no certificate members;
 *   - a key that is found, not gone, usable by the peer, an alg it signs,
 *     the lifetime in range, and a policy that lets it through (the rules
 *     of pol_check_sign and pol_check_dpop, checked here without a
 *     message: a refusal is declined and refused by the Jansson path).
 * After signing nothing is declined: a failed signature is answered here,
 * as op_sign would, but for unknown_key with a rescan hook, which goes to
 * the Jansson path (it looks again and signs from the new keyring).
 *
 * The line is scanned in a copy that strings are NUL-terminated in (their
 * closing quote), bounded by its length; the copy and the claims are wiped.
 */
#include "agent/proto-fast.h"
#include "common/err.h"
#include "common/util.h"
#include "jose/b64url.h"
#include "jose/dpop.h"
#include "jose/jsonfast.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FAST_MAX_DEPTH 8      /* containers inside a claim or the id */
#define FAST_MAX_MEMBERS 64   /* per object: the duplicate check is quadratic */
#define FAST_MAX_AUD 64       /* aud elements kept for the policy and the record */
#define FAST_MAX_ID 256       /* bytes of the id's compact text */
#define FAST_STACK_LINE 2048  /* lines up to this long are copied on the stack */
#define FAST_MAX_SIG 4096     /* jws_sign_compact_raw's bound on sigmax */
#define FAST_CLAIMS_EXTRA 128 /* iat, exp and jti added to the caller's claims */

enum { V_NONE, V_STR, V_INT, V_ARRAY, V_OTHER };

typedef struct {
	const char *p; /* NUL-terminated in the copy */
	size_t n;
} fspan;

/* A value as scanned: its kind, the string or number, and where its
 * compact text went. */
typedef struct {
	int kind;
	fspan str;
	int64_t num;
	const char *text;
	size_t text_len;
} fval;

typedef struct {
	size_t n; /* all elements */
	struct {
		int kind;
		fspan str;
	} e[FAST_MAX_AUD];
} felems;

/* The claims members that op_sign, the policy and the record look at. */
typedef struct {
	size_t members;
	fval iat, exp, jti, iss, sub, aud;
	felems aud_el;
} fclaims;

typedef struct {
	char *p, *end;  /* input left */
	char *o, *oend; /* compact output */
} fscan;

enum {
	M_ID = 1 << 0,
	M_OP = 1 << 1,
	M_KEY = 1 << 2,
	M_ALG = 1 << 3,
	M_CLAIMS = 1 << 4,
	M_LIFETIME = 1 << 5,
	M_HTM = 1 << 6,
	M_HTU = 1 << 7,
	M_NONCE = 1 << 8,
	M_ATH = 1 << 9,
};

typedef struct {
	unsigned seen;
	fspan op, key, alg, htm, htu, nonce, ath;
	int64_t lifetime;
	const char *id; /* compact text, NULL: no id */
	size_t id_len;
	const char *claims; /* compact text of the caller's claims, NULL: none */
	size_t claims_len;
	fclaims c;
} freq;

static void fs_ws(fscan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static bool fs_emit(fscan *s, const char *b, size_t n)
{
	if ((size_t)(s->oend - s->o) < n)
		return false;
	memcpy(s->o, b, n);
	s->o += n;
	return true;
}

static bool fs_emit_int(fscan *s, int64_t v)
{
	char tmp[JSONF_INT_MAX];
	const char *p = jsonf_itoa(v, tmp);

	return fs_emit(s, p, (size_t)(tmp + JSONF_INT_MAX - p));
}

/* A string at s->p (a '"'): printable ASCII or 0x7F up to the closing
 * quote, which becomes its NUL. */
static bool fs_string(fscan *s, fspan *ret)
{
	char *start = s->p + 1, *q = start;

	for (;; q++) {
		unsigned char c;

		if (q >= s->end)
			return false;
		c = (unsigned char)*q;
		if (c == '"')
			break;
		if (c < 0x20 || c >= 0x80 || c == '\\')
			return false;
	}
	*q = '\0';
	ret->p = start;
	ret->n = (size_t)(q - start);
	s->p = q + 1;
	return true;
}

static bool fs_quoted(fscan *s, const fspan *v)
{
	return fs_emit(s, "\"", 1) && fs_emit(s, v->p, v->n) && fs_emit(s, "\"", 1);
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* An integer as Jansson takes it, at most 18 digits (no overflow). */
static bool fs_int(fscan *s, int64_t *ret)
{
	char *q = s->p;
	bool neg = false;
	int64_t v = 0;
	int nd = 0;

	if (q < s->end && *q == '-') {
		neg = true;
		q++;
	}
	if (q >= s->end || !is_digit(*q))
		return false;
	if (*q == '0') {
		q++;
		if (q < s->end && is_digit(*q))
			return false;
	} else {
		for (; q < s->end && is_digit(*q); q++) {
			if (++nd > 18)
				return false;
			v = v * 10 + (*q - '0');
		}
	}
	if (q < s->end && (*q == '.' || *q == 'e' || *q == 'E'))
		return false;
	*ret = neg ? -v : v;
	s->p = q;
	return true;
}

static bool fs_word(fscan *s, const char *w, size_t n)
{
	if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
		return false;
	s->p += n;
	return fs_emit(s, w, n);
}

static bool fs_value(fscan *s, int depth, fval *ret, felems *el, fclaims *cl);

/* An object at s->p ('{'). cl: the claims object, whose members of note
 * are kept. */
static bool fs_object(fscan *s, int depth, fclaims *cl)
{
	fspan keys[FAST_MAX_MEMBERS];
	size_t n = 0;

	s->p++;
	if (!fs_emit(s, "{", 1))
		return false;
	fs_ws(s);
	if (s->p < s->end && *s->p == '}') {
		s->p++;
		return fs_emit(s, "}", 1);
	}
	for (;;) {
		fspan k;
		fval v, *keep = NULL;
		felems *el = NULL;

		if (s->p >= s->end || *s->p != '"' || n == FAST_MAX_MEMBERS || !fs_string(s, &k))
			return false;
		for (size_t i = 0; i < n; i++)
			if (keys[i].n == k.n && memcmp(keys[i].p, k.p, k.n) == 0)
				return false;
		keys[n++] = k;
		if (!fs_quoted(s, &k) || !fs_emit(s, ":", 1))
			return false;
		fs_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return false;
		s->p++;
		fs_ws(s);
		if (cl != NULL && k.n == 3) {
			if (strcmp(k.p, "iat") == 0)
				keep = &cl->iat;
			else if (strcmp(k.p, "exp") == 0)
				keep = &cl->exp;
			else if (strcmp(k.p, "jti") == 0)
				keep = &cl->jti;
			else if (strcmp(k.p, "iss") == 0)
				keep = &cl->iss;
			else if (strcmp(k.p, "sub") == 0)
				keep = &cl->sub;
			else if (strcmp(k.p, "aud") == 0) {
				keep = &cl->aud;
				el = &cl->aud_el;
			}
		}
		if (!fs_value(s, depth, keep ? keep : &v, el, NULL))
			return false;
		fs_ws(s);
		if (s->p < s->end && *s->p == ',') {
			s->p++;
			fs_ws(s);
			if (!fs_emit(s, ",", 1))
				return false;
			continue;
		}
		if (s->p < s->end && *s->p == '}') {
			s->p++;
			if (cl != NULL)
				cl->members = n;
			return fs_emit(s, "}", 1);
		}
		return false;
	}
}

static bool fs_array(fscan *s, int depth, felems *el)
{
	s->p++;
	if (!fs_emit(s, "[", 1))
		return false;
	fs_ws(s);
	if (s->p < s->end && *s->p == ']') {
		s->p++;
		return fs_emit(s, "]", 1);
	}
	for (;;) {
		fval v;

		if (!fs_value(s, depth, &v, NULL, NULL))
			return false;
		if (el != NULL) {
			if (el->n < FAST_MAX_AUD) {
				el->e[el->n].kind = v.kind;
				el->e[el->n].str = v.str;
			}
			el->n++;
		}
		fs_ws(s);
		if (s->p < s->end && *s->p == ',') {
			s->p++;
			fs_ws(s);
			if (!fs_emit(s, ",", 1))
				return false;
			continue;
		}
		if (s->p < s->end && *s->p == ']') {
			s->p++;
			return fs_emit(s, "]", 1);
		}
		return false;
	}
}

/* One value at s->p, its compact text emitted; depth: containers open
 * around it. */
static bool fs_value(fscan *s, int depth, fval *ret, felems *el, fclaims *cl)
{
	char *start = s->o;
	bool ok;

	memset(ret, 0, sizeof(*ret));
	if (s->p >= s->end)
		return false;
	switch (*s->p) {
	case '"':
		ret->kind = V_STR;
		ok = fs_string(s, &ret->str) && fs_quoted(s, &ret->str);
		break;
	case '-':
	case '0' ... '9':
		ret->kind = V_INT;
		ok = fs_int(s, &ret->num) && fs_emit_int(s, ret->num);
		break;
	case 't':
		ret->kind = V_OTHER;
		ok = fs_word(s, "true", 4);
		break;
	case 'f':
		ret->kind = V_OTHER;
		ok = fs_word(s, "false", 5);
		break;
	case 'n':
		ret->kind = V_OTHER;
		ok = fs_word(s, "null", 4);
		break;
	case '[':
		ret->kind = V_ARRAY;
		ok = depth < FAST_MAX_DEPTH && fs_array(s, depth + 1, el);
		break;
	case '{':
		ret->kind = V_OTHER;
		ok = depth < FAST_MAX_DEPTH && fs_object(s, depth + 1, cl);
		break;
	default:
		ok = false;
	}
	ret->text = start;
	ret->text_len = (size_t)(s->o - start);
	return ok;
}

/* The M_* bit of a request member's name, 0 for one the fast path does
 * not take. */
static unsigned fast_member(const fspan *k)
{
	static const struct {
		const char *name;
		unsigned bit;
	} members[] = {
	    {"id", M_ID},   {"op", M_OP},         {"key", M_KEY},
	    {"alg", M_ALG}, {"claims", M_CLAIMS}, {"lifetime", M_LIFETIME},
	    {"htm", M_HTM}, {"htu", M_HTU},       {"nonce", M_NONCE},
	    {"ath", M_ATH},
	};

	for (size_t i = 0; i < ARRAY_SIZE(members); i++)
		if (k->p[0] == members[i].name[0] && strcmp(k->p, members[i].name) == 0)
			return members[i].bit;
	return 0;
}

/* The request object. The id's compact text goes to idbuf, the claims'
 * to cbuf (ccap bytes: at least the line's length, which compact text
 * never exceeds). */
static bool fs_request(fscan *s, freq *q, char *idbuf, char *cbuf, size_t ccap)
{
	fs_ws(s);
	if (s->p >= s->end || *s->p != '{')
		return false;
	s->p++;
	fs_ws(s);
	for (;;) {
		fspan k;
		unsigned bit;
		fval v;

		if (s->p >= s->end || *s->p != '"' || !fs_string(s, &k))
			return false;
		bit = fast_member(&k);
		if (bit == 0 || (q->seen & bit))
			return false; /* not ours, or twice */
		q->seen |= bit;
		fs_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return false;
		s->p++;
		fs_ws(s);
		if (s->p >= s->end)
			return false;
		switch (bit) {
		case M_ID:
			s->o = idbuf;
			s->oend = idbuf + FAST_MAX_ID;
			if (!fs_value(s, 0, &v, NULL, NULL))
				return false;
			q->id = v.text;
			q->id_len = v.text_len;
			break;
		case M_CLAIMS:
			if (*s->p != '{')
				return false;
			s->o = cbuf;
			s->oend = cbuf + ccap;
			if (!fs_value(s, 0, &v, NULL, &q->c))
				return false;
			q->claims = v.text;
			q->claims_len = v.text_len;
			break;
		case M_LIFETIME:
			if (!fs_int(s, &q->lifetime))
				return false;
			break;
		default: {
			fspan *f = bit == M_OP      ? &q->op
			           : bit == M_KEY   ? &q->key
			           : bit == M_ALG   ? &q->alg
			           : bit == M_HTM   ? &q->htm
			           : bit == M_HTU   ? &q->htu
			           : bit == M_NONCE ? &q->nonce
			                            : &q->ath;

			if (*s->p != '"' || !fs_string(s, f))
				return false;
		}
		}
		fs_ws(s);
		if (s->p < s->end && *s->p == ',') {
			s->p++;
			fs_ws(s);
			continue;
		}
		if (s->p < s->end && *s->p == '}') {
			s->p++;
			break;
		}
		return false;
	}
	fs_ws(s);
	return s->p == s->end;
}

/* Whether policy.c's check_claim lets the claim through. */
static bool fast_claim_ok(const pol_list *l, const fval *v, const felems *el, bool array_ok)
{
	if (l->n == 0)
		return true;
	if (v->kind == V_STR)
		return pol_list_match(l, v->str.p);
	if (!array_ok || v->kind != V_ARRAY || el == NULL || el->n == 0 || el->n > FAST_MAX_AUD)
		return false;
	for (size_t i = 0; i < el->n; i++)
		if (el->e[i].kind != V_STR || !pol_list_match(l, el->e[i].str.p))
			return false;
	return true;
}

/* get_key(), taking only a key that will sign. */
static const kr_key *fast_key(const proto_env *env, const proto_peer *peer, const freq *q)
{
	const kr_key *k;

	if (!(q->seen & M_KEY) || (k = kr_find(env->kr, q->key.p)) == NULL || kr_key_gone(k))
		return NULL;
	if (peer != NULL && !pol_may_use(k->pol, env->owner_uid, peer->uid, peer->gid))
		return NULL;
	return k;
}

/* pick_alg() without a header: JWA_NONE where it would refuse. */
static jwa_alg fast_alg(const kr_key *k, const freq *q)
{
	jwa_alg alg;

	if (!(q->seen & M_ALG))
		return k->default_alg;
	alg = jwa_from_name(q->alg.p);
	if (alg == JWA_NONE || !(k->algs & JWA_BIT(alg)))
		return JWA_NONE;
	return alg;
}

/* Printable by jsonfast, as Jansson's json_string() takes it. */
static bool utf8_ok(const char *s)
{
	return s != NULL && jsonf_utf8_valid(s, strlen(s));
}

/* v in decimal at o (room for 20 bytes); returns the length. */
static size_t fast_itoa(char *o, int64_t v)
{
	char tmp[JSONF_INT_MAX];
	const char *p = jsonf_itoa(v, tmp);
	size_t len = (size_t)(tmp + JSONF_INT_MAX - p);

	memcpy(o, p, len);
	return len;
}

/* One more claims member's name at o: "name": after a comma unless it is
 * the first. */
static char *claim_name(char *o, size_t *members, const char *name)
{
	size_t n = strlen(name);

	if ((*members)++ > 0)
		*o++ = ',';
	*o++ = '"';
	memcpy(o, name, n);
	o += n;
	*o++ = '"';
	*o++ = ':';
	return o;
}

/* s cut to max bytes at a UTF-8 boundary, as audit_str() does. */
static size_t cut_len(const char *s, size_t n, size_t max)
{
	if (n > max) {
		n = max;
		while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
	}
	return n;
}

/* ,"name":"s" with s cut to max; left out when not valid UTF-8 (as
 * json_stringn refuses it). 0 or P11J_E_NOMEM. */
static int put_str(jsonf_buf *b, const char *member, const char *s, size_t n, size_t max)
{
	size_t mark = b->len;
	int r;

	n = cut_len(s, n, max);
	if ((r = jsonf_str(b, member)) < 0)
		return r;
	r = jsonf_quote(b, s, n);
	if (r == P11J_E_BAD_REQUEST) {
		b->len = mark;
		err_clear();
		return 0;
	}
	return r;
}

/* Start of an audit record: ,"op":"OP","key":"..." */
static int audit_start(jsonf_buf *b, const char *op, const freq *q)
{
	int r;

	if ((r = jsonf_reserve(b, 256)) < 0 || (r = jsonf_str(b, ",\"op\":\"")) < 0 ||
	    (r = jsonf_str(b, op)) < 0 || (r = jsonf_raw(b, "\"", 1)) < 0)
		return r;
	return put_str(b, ",\"key\":", q->key.p, q->key.n, 128);
}

static int audit_done(jsonf_buf *b, proto_audit *audit, int result)
{
	char *t = jsonf_take(b, &audit->text_len);

	if (t == NULL) {
		jsonf_free(b);
		return err_nomem();
	}
	audit->text = t;
	audit->result = result;
	audit->fields = NULL;
	return 0;
}

/* The record audit_fill() makes of a sign request: ok (the claims as
 * signed: jti, exp from them) or not (what was asked). */
static int audit_sign(const freq *q, const kr_key *k, jwa_alg alg, const fval *jti, const fval *exp,
                      bool ok, proto_audit *audit, int result)
{
	jsonf_buf b = {0};
	const fclaims *c = &q->c;
	int r;

	if ((r = audit_start(&b, "sign", q)) < 0)
		goto fail;
	if (ok)
		r = put_str(&b, ",\"alg\":", jwa_name(alg), strlen(jwa_name(alg)), 32);
	else if (q->seen & M_ALG)
		r = put_str(&b, ",\"alg\":", q->alg.p, q->alg.n, 32);
	if (r < 0)
		goto fail;
	/* the answer's kid is cut, the key's own (a refused request) is not */
	if ((r = put_str(&b, ",\"kid\":", k->kid, strlen(k->kid), ok ? 128 : SIZE_MAX)) < 0)
		goto fail;
	if (c->iss.kind == V_STR &&
	    (r = put_str(&b, ",\"iss\":", c->iss.str.p, c->iss.str.n, 256)) < 0)
		goto fail;
	if (c->sub.kind == V_STR &&
	    (r = put_str(&b, ",\"sub\":", c->sub.str.p, c->sub.str.n, 256)) < 0)
		goto fail;
	if (c->aud.kind == V_STR &&
	    (r = put_str(&b, ",\"aud\":", c->aud.str.p, c->aud.str.n, 256)) < 0)
		goto fail;
	if (c->aud.kind == V_ARRAY) {
		bool first = true;

		if ((r = jsonf_str(&b, ",\"aud\":[")) < 0)
			goto fail;
		/* the first 16 elements, the strings among them */
		for (size_t i = 0; i < c->aud_el.n && i < 16; i++) {
			if (c->aud_el.e[i].kind != V_STR)
				continue;
			if ((!first && (r = jsonf_raw(&b, ",", 1)) < 0) ||
			    (r = jsonf_quote(
			         &b, c->aud_el.e[i].str.p,
			         cut_len(c->aud_el.e[i].str.p, c->aud_el.e[i].str.n, 256))) < 0)
				goto fail;
			first = false;
		}
		if ((r = jsonf_raw(&b, "]", 1)) < 0)
			goto fail;
	}
	if (jti->kind == V_STR && (r = put_str(&b, ",\"jti\":", jti->str.p, jti->str.n, 128)) < 0)
		goto fail;
	if (exp->kind == V_INT &&
	    ((r = jsonf_str(&b, ",\"exp\":")) < 0 || (r = jsonf_int(&b, exp->num)) < 0))
		goto fail;
	return audit_done(&b, audit, result);
fail:
	jsonf_free(&b);
	return r;
}

/* An error answer as proto_error_line() makes it, with the id's text. */
static int fast_error_line(const freq *q, int code, char **ret_resp, size_t *ret_len)
{
	const char *msg = err_msg();
	jsonf_buf b = {0};
	size_t mark;
	char *line;
	int r;

	if ((r = jsonf_reserve(&b, 128 + q->id_len + strlen(msg))) < 0 ||
	    (r = jsonf_str(&b, "{\"id\":")) < 0 ||
	    (r = q->id ? jsonf_raw(&b, q->id, q->id_len) : jsonf_str(&b, "null")) < 0 ||
	    (r = jsonf_str(&b, ",\"ok\":false,\"error\":{\"code\":")) < 0 ||
	    (r = jsonf_quote(&b, err_code_name(code), strlen(err_code_name(code)))) < 0 ||
	    (r = jsonf_str(&b, ",\"message\":")) < 0)
		goto fail;
	mark = b.len;
	r = jsonf_quote(&b, msg, strlen(msg));
	if (r == P11J_E_BAD_REQUEST) { /* not UTF-8: the code's own text */
		b.len = mark;
		r = jsonf_quote(&b, err_strerror(code), strlen(err_strerror(code)));
	}
	if (r < 0 || (r = jsonf_raw(&b, "}}\n", 3)) < 0)
		goto fail;
	if ((line = jsonf_take(&b, ret_len)) == NULL) {
		r = err_nomem();
		goto fail;
	}
	*ret_resp = line;
	return 0;
fail:
	jsonf_free(&b);
	return r;
}

/* {"id":ID,"ok":true,"jwt":"HEADER.CLAIMS.SIG then the caller's tail:
 * jws_sign_compact_raw() written into the answer. 0, or the signer's (or
 * the size check's) code with its message set. */
static int fast_sign_into(jsonf_buf *b, const freq *q, const kr_key *k, jwa_alg alg,
                          const char *hdr, size_t hlen, const char *claims, size_t clen)
{
	uint8_t sig[FAST_MAX_SIG];
	size_t siglen = k->sigmax, fixed = jwa_sig_len(alg), o;
	char *j;
	int r;

	if ((r = jsonf_reserve(b, 64 + q->id_len + b64u_enc_len(hlen) + b64u_enc_len(clen) +
	                              b64u_enc_len(k->sigmax) + 128)) < 0 ||
	    (r = jsonf_str(b, "{\"id\":")) < 0 ||
	    (r = q->id ? jsonf_raw(b, q->id, q->id_len) : jsonf_str(b, "null")) < 0 ||
	    (r = jsonf_str(b, ",\"ok\":true,\"jwt\":\"")) < 0 ||
	    (r = jsonf_reserve(b, b64u_enc_len(hlen) + b64u_enc_len(clen) +
	                              b64u_enc_len(k->sigmax) + 3)) < 0)
		return r;
	j = b->p + b->len;
	o = b64u_encode_to((const uint8_t *)hdr, hlen, j);
	j[o++] = '.';
	o += b64u_encode_to((const uint8_t *)claims, clen, j + o);
	r = k->sign(k->sign_ctx, alg, (const uint8_t *)j, o, sig, &siglen);
	if (r < 0)
		return r;
	if (siglen == 0 || siglen > k->sigmax || (fixed != 0 && siglen != fixed))
		return err_set(P11J_E_INTERNAL, "signer returned %zu bytes for %s", siglen,
		               jwa_name(alg));
	j[o++] = '.';
	o += b64u_encode_to(sig, siglen, j + o);
	b->len += o;
	return 0;
}

/* A signature that failed (code): the error answer and the refused
 * record. Declined where proto_handle_ex() would look for the key again
 * (unknown_key with a rescan hook): it signs from the new keyring. */
static int fast_failed(const proto_env *env, const freq *q, int code, char **ret_resp,
                       size_t *ret_len)
{
	if (code == P11J_E_UNKNOWN_KEY && env->unknown_key != NULL) {
		err_clear();
		return PROTO_FAST_DECLINED;
	}
	return fast_error_line(q, code, ret_resp, ret_len);
}

/* op_sign() for a request without header or include members. */
static int fast_sign(const proto_env *env, const proto_peer *peer, freq *q, char *cbuf,
                     size_t ccap, proto_audit *audit, char **ret_resp, size_t *ret_len)
{
	const kr_key *k = fast_key(env, peer, q);
	const pol_key *p;
	jsonf_buf b = {0};
	fclaims *c = &q->c;
	char jti_s[37];
	fval iat, exp, jti;
	int64_t now, lifetime = PROTO_DEFAULT_LIFETIME, max, left, base;
	size_t clen, n;
	char *o, *line = NULL;
	jwa_alg alg;
	int r;

	if (q->seen & (M_HTM | M_HTU | M_NONCE | M_ATH))
		return PROTO_FAST_DECLINED;
	if (k == NULL || (alg = fast_alg(k, q)) == JWA_NONE)
		return PROTO_FAST_DECLINED;
	if (q->seen & M_LIFETIME) {
		if (q->lifetime < 1 || q->lifetime > PROTO_MAX_LIFETIME)
			return PROTO_FAST_DECLINED;
		lifetime = q->lifetime;
	}
	if (k->hdr_json[alg] == NULL || k->sigmax == 0 || k->sigmax > FAST_MAX_SIG ||
	    !utf8_ok(k->kid))
		return PROTO_FAST_DECLINED;
	now = util_now();
	/* build_claims(): iat, exp and jti where the caller has none */
	iat = c->iat;
	exp = c->exp;
	jti = c->jti;
	base = iat.kind == V_INT ? iat.num : now;
	if (exp.kind == V_NONE) {
		if (__builtin_add_overflow(base, lifetime, &exp.num))
			return PROTO_FAST_DECLINED;
		exp.kind = V_INT;
	}
	/* pol_check_sign() without a header or an include */
	p = k->pol;
	if (pol_check_state(p, k->name, now) < 0) {
		err_clear();
		return PROTO_FAST_DECLINED;
	}
	max = p != NULL && p->max_lifetime > 0 ? p->max_lifetime : POL_DEFAULT_MAX_LIFETIME;
	if (p != NULL && ((p->algs != 0 && !(p->algs & JWA_BIT(alg))) || p->include_auto != 0 ||
	                  !fast_claim_ok(&p->iss, &c->iss, NULL, false) ||
	                  !fast_claim_ok(&p->sub, &c->sub, NULL, false) ||
	                  !fast_claim_ok(&p->aud, &c->aud, &c->aud_el, true)))
		return PROTO_FAST_DECLINED;
	if (lifetime > max ||
	    (exp.kind == V_INT && (__builtin_sub_overflow(exp.num, now, &left) || left > max)))
		return PROTO_FAST_DECLINED;
	if (jti.kind == V_NONE) {
		if (util_uuid4(jti_s) < 0) {
			err_clear();
			return PROTO_FAST_DECLINED;
		}
		jti.kind = V_STR;
		jti.str = (fspan){jti_s, 36};
	}
	/* the claims: the caller's members in their order, then what was
	 * added (cbuf has room for the line's length and FAST_CLAIMS_EXTRA) */
	if (q->claims == NULL) {
		cbuf[0] = '{';
		clen = 1;
	} else {
		clen = q->claims_len - 1; /* without its '}' */
	}
	if (clen > ccap - FAST_CLAIMS_EXTRA)
		return PROTO_FAST_DECLINED; /* cannot happen: ccap is len + the extra */
	o = cbuf + clen;
	n = c->members;
	if (c->iat.kind == V_NONE) {
		o = claim_name(o, &n, "iat");
		iat.text = o;
		iat.text_len = fast_itoa(o, now);
		o += iat.text_len;
	}
	if (c->exp.kind == V_NONE) {
		o = claim_name(o, &n, "exp");
		exp.text = o;
		exp.text_len = fast_itoa(o, exp.num);
		o += exp.text_len;
	}
	if (c->jti.kind == V_NONE) {
		o = claim_name(o, &n, "jti");
		jti.text = o;
		*o++ = '"';
		memcpy(o, jti_s, 36);
		o += 36;
		*o++ = '"';
		jti.text_len = 38;
	}
	*o++ = '}';
	clen = (size_t)(o - cbuf);
	r = fast_sign_into(&b, q, k, alg, k->hdr_json[alg], k->hdr_len[alg], cbuf, clen);
	if (r < 0) {
		int code = r;

		jsonf_free(&b);
		if ((r = fast_failed(env, q, code, ret_resp, ret_len)) != 0)
			return r;
		if (audit == NULL)
			return 0;
		audit->result = code;
		if (!audit->no_fields &&
		    (r = audit_sign(q, k, alg, &c->jti, &c->exp, false, audit, code)) < 0) {
			freezero_buf(*ret_resp, *ret_len);
			*ret_resp = NULL;
			return r;
		}
		return 0;
	}
	if ((r = jsonf_str(&b, "\",\"alg\":\"")) < 0 || (r = jsonf_str(&b, jwa_name(alg))) < 0 ||
	    (r = jsonf_str(&b, "\",\"kid\":")) < 0 ||
	    (r = jsonf_quote(&b, k->kid, strlen(k->kid))) < 0 ||
	    (r = jsonf_str(&b, ",\"iat\":")) < 0 ||
	    (r = jsonf_raw(&b, iat.text, iat.text_len)) < 0 ||
	    (r = jsonf_str(&b, ",\"exp\":")) < 0 ||
	    (r = jsonf_raw(&b, exp.text, exp.text_len)) < 0 ||
	    (r = jsonf_str(&b, ",\"jti\":")) < 0 ||
	    (r = jsonf_raw(&b, jti.text, jti.text_len)) < 0 || (r = jsonf_raw(&b, "}\n", 2)) < 0 ||
	    (line = jsonf_take(&b, ret_len)) == NULL) {
		jsonf_free(&b);
		return r < 0 ? r : err_nomem();
	}
	if (audit != NULL) {
		audit->result = 0;
		if (!audit->no_fields &&
		    (r = audit_sign(q, k, alg, &jti, &exp, true, audit, 0)) < 0) {
			freezero_buf(line, *ret_len);
			return r;
		}
	}
	*ret_resp = line;
	return 0;
}

/* The record audit_dpop() makes: ok (the htu as signed, jti and iat) or
 * not (the htu as asked). */
static int audit_dpop(const freq *q, const kr_key *k, jwa_alg alg, const char *nhtu,
                      const char *jti, int64_t iat, bool ok, proto_audit *audit, int result)
{
	jsonf_buf b = {0};
	int r;

	if ((r = audit_start(&b, "dpop", q)) < 0)
		goto fail;
	if (ok)
		r = put_str(&b, ",\"alg\":", jwa_name(alg), strlen(jwa_name(alg)), 32);
	else if (q->seen & M_ALG)
		r = put_str(&b, ",\"alg\":", q->alg.p, q->alg.n, 32);
	if (r < 0 || (r = put_str(&b, ",\"jkt\":", k->jkt, strlen(k->jkt), SIZE_MAX)) < 0 ||
	    (r = put_str(&b, ",\"htm\":", q->htm.p, q->htm.n, 32)) < 0)
		goto fail;
	r = ok ? put_str(&b, ",\"htu\":", nhtu, strlen(nhtu), 512)
	       : put_str(&b, ",\"htu\":", q->htu.p, q->htu.n, 512);
	if (r < 0)
		goto fail;
	if (ok && ((r = put_str(&b, ",\"jti\":", jti, strlen(jti), 64)) < 0 ||
	           (r = jsonf_str(&b, ",\"iat\":")) < 0 || (r = jsonf_int(&b, iat)) < 0))
		goto fail;
	return audit_done(&b, audit, result);
fail:
	jsonf_free(&b);
	return r;
}

/* Whether s needs no escaping in a JSON string (printable ASCII, 0x7F,
 * neither '"' nor '\\'): copied as it is. */
static bool plain_ascii(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\')
			return false;
	}
	return true;
}

/* op_dpop(). */
static int fast_dpop(const proto_env *env, const proto_peer *peer, freq *q, char *cbuf, size_t ccap,
                     proto_audit *audit, char **ret_resp, size_t *ret_len)
{
	const kr_key *k = fast_key(env, peer, q);
	char jti[DPOP_JTI_LEN + 1];
	char *nhtu = NULL, *line = NULL;
	jsonf_buf b = {0};
	fscan w = {.o = cbuf, .oend = cbuf + ccap};
	size_t clen;
	int64_t iat;
	jwa_alg alg;
	int r = PROTO_FAST_DECLINED;

	if (q->seen & (M_CLAIMS | M_LIFETIME) || !(q->seen & M_HTM) || !(q->seen & M_HTU))
		return PROTO_FAST_DECLINED;
	if (k == NULL || (alg = fast_alg(k, q)) == JWA_NONE)
		return PROTO_FAST_DECLINED;
	if (dpop_htm_check(q->htm.p, q->htm.n) < 0 ||
	    ((q->seen & M_NONCE) && dpop_nonce_check(q->nonce.p, q->nonce.n) < 0) ||
	    ((q->seen & M_ATH) && dpop_ath_check(q->ath.p, q->ath.n) < 0) ||
	    dpop_htu_normalise(q->htu.p, q->htu.n, &nhtu) < 0 ||
	    pol_check_dpop(k->pol, env->dpop_default, k->name, k->algs, alg) < 0 ||
	    pol_check_state(k->pol, k->name, util_now()) < 0 || k->dpop_hdr[alg] == NULL ||
	    k->sigmax == 0 || k->sigmax > FAST_MAX_SIG || !utf8_ok(k->jkt) ||
	    !plain_ascii(nhtu, strlen(nhtu)) || dpop_jti(jti) < 0) {
		err_clear();
		goto out;
	}
	iat = util_now();
	/* dpop_claims(): htm, nonce and ath were checked, and hold nothing
	 * to escape */
	if (!fs_emit(&w, "{\"jti\":\"", 8) || !fs_emit(&w, jti, DPOP_JTI_LEN) ||
	    !fs_emit(&w, "\",\"htm\":\"", 9) || !fs_emit(&w, q->htm.p, q->htm.n) ||
	    !fs_emit(&w, "\",\"htu\":\"", 9) || !fs_emit(&w, nhtu, strlen(nhtu)) ||
	    !fs_emit(&w, "\",\"iat\":", 8) || !fs_emit_int(&w, iat) ||
	    ((q->seen & M_NONCE) &&
	     (!fs_emit(&w, ",\"nonce\":\"", 10) || !fs_emit(&w, q->nonce.p, q->nonce.n) ||
	      !fs_emit(&w, "\"", 1))) ||
	    ((q->seen & M_ATH) && (!fs_emit(&w, ",\"ath\":\"", 8) ||
	                           !fs_emit(&w, q->ath.p, q->ath.n) || !fs_emit(&w, "\"", 1))) ||
	    !fs_emit(&w, "}", 1))
		goto out; /* no room: cannot happen (the line holds all of it) */
	clen = (size_t)(w.o - cbuf);
	r = fast_sign_into(&b, q, k, alg, k->dpop_hdr[alg], k->dpop_hdr_len[alg], cbuf, clen);
	if (r < 0) {
		int code = r;

		jsonf_free(&b);
		if ((r = fast_failed(env, q, code, ret_resp, ret_len)) != 0)
			goto out;
		if (audit != NULL) {
			audit->result = code;
			if (!audit->no_fields &&
			    (r = audit_dpop(q, k, alg, NULL, NULL, 0, false, audit, code)) < 0) {
				freezero_buf(*ret_resp, *ret_len);
				*ret_resp = NULL;
			}
		}
		goto out;
	}
	if ((r = jsonf_str(&b, "\",\"alg\":\"")) < 0 || (r = jsonf_str(&b, jwa_name(alg))) < 0 ||
	    (r = jsonf_str(&b, "\",\"jkt\":")) < 0 ||
	    (r = jsonf_quote(&b, k->jkt, strlen(k->jkt))) < 0 ||
	    (r = jsonf_str(&b, ",\"htu\":\"")) < 0 || (r = jsonf_str(&b, nhtu)) < 0 ||
	    (r = jsonf_str(&b, "\",\"jti\":\"")) < 0 || (r = jsonf_str(&b, jti)) < 0 ||
	    (r = jsonf_str(&b, "\",\"iat\":")) < 0 || (r = jsonf_int(&b, iat)) < 0 ||
	    (r = jsonf_raw(&b, "}\n", 2)) < 0 || (line = jsonf_take(&b, ret_len)) == NULL) {
		jsonf_free(&b);
		if (r == 0)
			r = err_nomem();
		goto out;
	}
	if (audit != NULL) {
		audit->result = 0;
		if (!audit->no_fields &&
		    (r = audit_dpop(q, k, alg, nhtu, jti, iat, true, audit, 0)) < 0) {
			freezero_buf(line, *ret_len);
			goto out;
		}
	}
	*ret_resp = line;
	r = 0;
out:
	free(nhtu);
	return r;
}

int proto_fast_handle(const proto_env *env, const proto_peer *peer, const char *line, size_t len,
                      proto_audit *audit, char **ret_resp, size_t *ret_len)
{
	char lstack[FAST_STACK_LINE], cstack[FAST_STACK_LINE + FAST_CLAIMS_EXTRA];
	char idbuf[FAST_MAX_ID];
	char *copy = lstack, *cbuf = cstack;
	size_t ccap = sizeof(cstack);
	fscan s;
	freq q;
	int r = PROTO_FAST_DECLINED;

	if (env->no_fast || env->kr == NULL || len > PROTO_MAX_LINE)
		return PROTO_FAST_DECLINED;
	if (len >= FAST_STACK_LINE) {
		ccap = len + FAST_CLAIMS_EXTRA;
		copy = malloc(len + 1);
		cbuf = malloc(ccap);
		if (copy == NULL || cbuf == NULL) {
			free(copy);
			free(cbuf);
			return PROTO_FAST_DECLINED;
		}
	}
	memcpy(copy, line, len);
	copy[len] = '\0';
	if (ccap > len + FAST_CLAIMS_EXTRA)
		ccap = len + FAST_CLAIMS_EXTRA; /* all that is ever written, and wiped */
	memset(&q, 0, offsetof(freq, c.aud_el.e));
	s = (fscan){.p = copy, .end = copy + len};
	if (fs_request(&s, &q, idbuf, cbuf, ccap) && (q.seen & M_OP)) {
		if (strcmp(q.op.p, "sign") == 0)
			r = fast_sign(env, peer, &q, cbuf, ccap, audit, ret_resp, ret_len);
		else if (strcmp(q.op.p, "dpop") == 0)
			r = fast_dpop(env, peer, &q, cbuf, ccap, audit, ret_resp, ret_len);
	}
	/* the request, the claims, the id: each written at most len + the
	 * extra bytes */
	util_wipe(copy, len);
	util_wipe(cbuf, ccap);
	if (q.seen & M_ID)
		util_wipe(idbuf, sizeof(idbuf));
	if (copy != lstack) {
		free(copy);
		free(cbuf);
	}
	return r;
}
