/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the agent's request handler: arbitrary bytes as one
 * request line, with a keyring of software keys (one per kind, and a
 * certificate on the RSA key), as a local client of the agent's uid.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "agent/keyring.h"
#include "agent/audit.h"
#include "agent/proto.h"
#include "support/softsign.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static keyring fuzz_kr;
static proto_env fuzz_env;
static EVP_PKEY *fuzz_pk[5];

static void fuzz_proto_fini(void)
{
	kr_free(&fuzz_kr);
	for (int i = 0; i < 5; i++)
		EVP_PKEY_free(fuzz_pk[i]);
}

static void fuzz_proto_init(void)
{
	static const char *const names[] = { "rsa", "p256", "p384", "p521", "ed" };
	EVP_PKEY **pk = fuzz_pk;
	X509 *x;
	uint8_t *der = NULL;
	int dlen;

	if (fuzz_env.kr != NULL)
		return;
	pk[0] = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	pk[1] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	pk[2] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	pk[3] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
	pk[4] = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	x = X509_new();
	X509_set_pubkey(x, pk[0]);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 60);
	X509_sign(x, pk[0], EVP_sha256());
	dlen = i2d_X509(x, &der);
	for (int i = 0; i < 5; i++)
		if (pk[i] == NULL || kr_add(&fuzz_kr, names[i], "pkcs11:", pk[i], i ? NULL : der,
					    i ? 0 : (size_t)dlen, 0, softsign_fn, pk[i]) < 0)
			abort();
	X509_free(x);
	atexit(fuzz_proto_fini);
	OPENSSL_free(der);
	fuzz_env.kr = &fuzz_kr;
	fuzz_env.owner_uid = 1000;
	fuzz_env.version = "fuzz";
	fuzz_env.dpop_default = true; /* reach proof signing, not only the policy check */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const proto_peer peer = { .uid = 1000, .gid = 1000, .pid = 1 };
	char *resp = NULL;
	size_t rlen = 0;

	fuzz_proto_init();
	proto_audit aud = { 0 };
	char *al = NULL;
	size_t alen = 0;

	if (proto_handle_ex(&fuzz_env, &peer, (const char *)data, size, &aud, &resp, &rlen) == 0) {
		/* every answer is exactly one line */
		if (rlen == 0 || resp[rlen - 1] != '\n' || memchr(resp, '\n', rlen - 1) != NULL)
			abort();
		/* and so is every audit line, which never holds a JWT */
		if (proto_audit_has_record(&aud) &&
		    audit_line(&aud, &peer, 1700000000000LL, &al, &alen) == 0 &&
		    (alen == 0 || al[alen - 1] != '\n' || memchr(al, '\n', alen - 1) != NULL ||
		     (strstr(resp, "\"jwt\":\"eyJ") != NULL && memmem(al, alen, "eyJ", 3) != NULL &&
		      memmem(data, size, "eyJ", 3) == NULL)))
			abort();
	}
	free(al);
	proto_audit_clear(&aud);
	free(resp);
	return 0;
}
