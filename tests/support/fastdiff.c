/* SPDX-License-Identifier: MIT */
#include "support/fastdiff.h"
#include "agent/audit.h"
#include "agent/keyring.h"
#include "agent/policy.h"
#include "agent/proto-fast.h"
#include "common/err.h"
#include "common/util.h"
#include "support/protoenv.h"
#include "support/softsign.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define FD_NOW_MS (PROTOENV_NOW * 1000 + 123)

static keyring fd_kr;
static proto_env fd_env;
static EVP_PKEY *fd_pk[5];
static uint8_t *fd_cert;
static int fd_cert_len;
static int fd_fail;
static uint64_t fd_rand;
static unsigned fd_rescans;

static const proto_peer fd_peers[FD__PEERS - 1] = {
    [FD_OWNER] = {.uid = PROTOENV_OWNER, .gid = PROTOENV_OWNER, .pid = 42},
    [FD_ROOT] = {.uid = 0, .gid = 0, .pid = 1},
    [FD_SHARED] = {.uid = 2000, .gid = 2000, .pid = 7},
    [FD_STRANGER] = {.uid = 3000, .gid = 3000, .pid = 8},
};

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15u);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

static int fd_random(uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (uint8_t)splitmix(&fd_rand);
	return 0;
}

/* A signature that depends on every byte signed: FNV-1a of the input,
 * stretched. The size the alg has (or the key's bound, for RSA). */
static int fd_sign(void *ctx, jwa_alg alg, const uint8_t *in, size_t inlen, uint8_t *sig,
                   size_t *siglen)
{
	uint64_t h = 0xcbf29ce484222325u;
	size_t n = jwa_sig_len(alg) ? jwa_sig_len(alg) : *siglen;

	(void)ctx;
	if (fd_fail == FD_FAIL_SHORT) {
		sig[0] = 0;
		*siglen = 1;
		return 0;
	}
	if (fd_fail < 0)
		return err_set(fd_fail, "the test signer fails with %s", err_code_name(fd_fail));
	if (n > *siglen)
		return err_set(P11J_E_INTERNAL, "signature buffer too small");
	for (size_t i = 0; i < inlen; i++)
		h = (h ^ in[i]) * 0x100000001b3u;
	for (size_t i = 0; i < n; i++)
		sig[i] = (uint8_t)splitmix(&h);
	*siglen = n;
	return 0;
}

static int fd_unknown_key(void *ud, const char *name)
{
	(void)ud;
	(void)name;
	fd_rescans++;
	return 0;
}

static char *fd_iss[] = {"svc-*", "exact"};
static char *fd_aud[] = {"https://a", "https://b/*"};
static char *fd_sub[] = {"alice", "bob*"};
static char *fd_sub1[] = {"s1"};
static uid_t fd_uids[] = {2000};

static pol_key fd_pols[7];

static void add(const char *name, int pk, const pol_key *pol, const char *kid)
{
	if (kr_add(&fd_kr, name, "pkcs11:object=x", fd_pk[pk], pk == 0 ? fd_cert : NULL,
	           pk == 0 ? (size_t)fd_cert_len : 0, 0, fd_sign, NULL) < 0 ||
	    ((pol != NULL || kid != NULL) &&
	     kr_key_configure(fd_kr.keys[fd_kr.n - 1], pol, JWA_NONE, kid) < 0)) {
		fprintf(stderr, "fastdiff: key %s: %s\n", name, err_msg());
		abort();
	}
}

void fastdiff_init(void)
{
	pol_key *p = fd_pols;
	char kid[160], longname[141];

	if (fd_env.kr != NULL)
		return;
	fd_pk[0] = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	fd_pk[1] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	fd_pk[2] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	fd_pk[3] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
	fd_pk[4] = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	for (int i = 0; i < 5; i++)
		if (fd_pk[i] == NULL)
			abort();
	if (softsign_cert(fd_pk[0], &fd_cert, &fd_cert_len) < 0)
		abort();
	for (size_t i = 0; i < sizeof(fd_pols) / sizeof(fd_pols[0]); i++)
		pol_key_init(&fd_pols[i]);
	/* pol: what a configured key usually says */
	p[0].iss = (pol_list){fd_iss, 2};
	p[0].aud = (pol_list){fd_aud, 2};
	p[0].max_lifetime = 600;
	p[0].algs = JWA_BIT(JWA_ES256);
	p[0].uids = fd_uids;
	p[0].nuids = 1;
	p[0].dpop = true;
	/* ret: retired ten seconds ago; ret2: retires later */
	p[1].state = POL_STATE_RETIRING;
	p[1].retire_after = PROTOENV_NOW - 10;
	p[1].dpop = true;
	p[2].state = POL_STATE_RETIRING;
	p[2].retire_after = PROTOENV_NOW + 1000;
	p[2].dpop = true;
	/* auto: a certificate member in every JWT */
	p[3].include_auto = POL_INC_X5T;
	/* nodpop, lim */
	p[4].sub = (pol_list){fd_sub1, 1};
	p[5].sub = (pol_list){fd_sub, 2};
	p[5].max_lifetime = 100;
	p[5].dpop = true;
	/* edp: EdDSA proofs; PS only for rsapss */
	p[6].algs = JWA_BIT(JWA_PS256) | JWA_BIT(JWA_PS512);
	p[6].dpop = true;
	add("rsa", 0, NULL, NULL);
	add("p256", 1, NULL, NULL);
	add("p384", 2, NULL, NULL);
	add("p521", 3, NULL, NULL);
	add("ed", 4, NULL, NULL);
	add("pol", 1, &p[0], NULL);
	add("ret", 1, &p[1], NULL);
	add("ret2", 1, &p[2], NULL);
	add("auto", 0, &p[3], NULL);
	add("nodpop", 1, &p[4], NULL);
	add("lim", 4, &p[5], NULL);
	add("rsapss", 0, &p[6], NULL);
	/* kid: cut at 128 bytes inside the é, with characters to escape */
	memset(kid, 'k', 125);
	memcpy(kid + 125, "\"\\\xc3\xa9tail/", 9);
	kid[134] = '\0';
	add("kid", 1, NULL, kid);
	/* a name over the record's 128 bytes */
	memset(longname, 'n', 140);
	longname[140] = '\0';
	add(longname, 1, NULL, NULL);
	protoenv_init(&fd_env, &fd_kr);
	fd_env.dpop_default = true;
	util_set_random(fd_random);
}

void fastdiff_fini(void)
{
	kr_free(&fd_kr);
	for (int i = 0; i < 5; i++)
		EVP_PKEY_free(fd_pk[i]);
	OPENSSL_free(fd_cert);
	fd_cert = NULL;
	fd_env.kr = NULL;
	util_set_random(NULL);
	protoenv_fini();
}

typedef struct {
	int rc;
	char *resp;
	size_t rlen;
	int result;
	bool record;
	char *al;
	size_t alen;
} fd_out;

static void out_free(fd_out *o)
{
	free(o->resp);
	free(o->al);
	memset(o, 0, sizeof(*o));
}

/* mode 0: Jansson only, 1: the fast path by itself, 2: proto_handle_ex */
static void run_one(int mode, const char *line, size_t len, const fastdiff_opts *o, fd_out *out)
{
	const proto_peer *peer = o->peer < FD_NOPEER ? &fd_peers[o->peer] : NULL;
	proto_audit a = {.no_fields = o->no_fields};
	proto_env env = fd_env;

	env.no_fast = mode == 0;
	env.unknown_key = o->rescan ? fd_unknown_key : NULL;
	fd_rand = 0x5eed;
	fd_fail = o->sign_fail;
	err_clear();
	memset(out, 0, sizeof(*out));
	if (mode == 1)
		out->rc = proto_fast_handle(&env, peer, line, len, o->no_audit ? NULL : &a,
		                            &out->resp, &out->rlen);
	else
		out->rc = proto_handle_ex(&env, peer, line, len, o->no_audit ? NULL : &a,
		                          &out->resp, &out->rlen);
	out->result = a.result;
	out->record = proto_audit_has_record(&a);
	if (out->record && audit_line(&a, peer, FD_NOW_MS, &out->al, &out->alen) < 0)
		out->rc = -1000;
	if (mode == 1 && out->rc == PROTO_FAST_DECLINED &&
	    (out->resp != NULL || a.result != 0 || out->record))
		out->rc = -2000; /* declined, but touched something */
	proto_audit_clear(&a);
	fd_fail = 0;
}

static bool same(const fd_out *x, const fd_out *y)
{
	return x->rc == y->rc && x->rlen == y->rlen &&
	       (x->rlen == 0 || memcmp(x->resp, y->resp, x->rlen) == 0) && x->result == y->result &&
	       x->record == y->record && x->alen == y->alen &&
	       (x->alen == 0 || memcmp(x->al, y->al, x->alen) == 0);
}

static void describe(const char *what, const fd_out *slow, const fd_out *fast, char *msg,
                     size_t msglen)
{
	snprintf(msg, msglen,
	         "%s: rc %d / %d, result %d / %d\n  slow: %.*s  fast: %.*s  slow audit: %.*s"
	         "  fast audit: %.*s",
	         what, slow->rc, fast->rc, slow->result, fast->result, (int)slow->rlen,
	         slow->resp ? slow->resp : "", (int)fast->rlen, fast->resp ? fast->resp : "",
	         (int)slow->alen, slow->al ? slow->al : "", (int)fast->alen,
	         fast->al ? fast->al : "");
}

int fastdiff_run(const char *line, size_t len, const fastdiff_opts *o, bool *ret_taken, char *msg,
                 size_t msglen)
{
	fd_out slow, fast, ex;
	int r = 0;

	fastdiff_init();
	run_one(0, line, len, o, &slow);
	run_one(1, line, len, o, &fast);
	run_one(2, line, len, o, &ex);
	*ret_taken = fast.rc == 0;
	if (fast.rc != 0 && fast.rc != PROTO_FAST_DECLINED) {
		describe("the fast path failed", &slow, &fast, msg, msglen);
		r = -1;
	} else if (fast.rc == 0 && !same(&slow, &fast)) {
		describe("the fast path differs", &slow, &fast, msg, msglen);
		r = -1;
	} else if (!same(&slow, &ex)) {
		describe("proto_handle_ex differs", &slow, &ex, msg, msglen);
		r = -1;
	}
	out_free(&slow);
	out_free(&fast);
	out_free(&ex);
	return r;
}

void fastdiff_opts_from_byte(unsigned char b, fastdiff_opts *o)
{
	static const int fails[] = {P11J_E_TOKEN_UNAVAILABLE, P11J_E_UNKNOWN_KEY, FD_FAIL_SHORT,
	                            P11J_E_PKCS11};

	memset(o, 0, sizeof(*o));
	o->peer = (b & 7) < FD__PEERS ? (b & 7) : FD_OWNER;
	if (b & 0x20)
		o->sign_fail = fails[(b >> 3) & 3];
	else if (((b >> 3) & 3) == 3)
		o->no_audit = true;
	o->rescan = (b & 0x40) != 0;
	o->no_fields = (b & 0x80) != 0;
}
