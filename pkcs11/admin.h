/* SPDX-License-Identifier: MIT */
/*
 * Key lifecycle on the token, for the administrator (p11jwt keygen, csr,
 * cert): key pairs generated on the token, PKCS#10 requests and self-signed
 * certificates built with OpenSSL and signed by the token key with C_Sign,
 * certificates stored next to their key. Talks to the token directly, not
 * through the agent. Like the rest of pkcs11/, it reads public attributes
 * only: no private key material ever leaves the token.
 */
#ifndef P11J_ADMIN_H
#define P11J_ADMIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>
#include "pkcs11/tok.h"

typedef enum {
	ADM_KT_NONE = 0,
	ADM_KT_RSA2048,
	ADM_KT_RSA3072,
	ADM_KT_RSA4096,
	ADM_KT_P256,
	ADM_KT_P384,
	ADM_KT_P521,
	ADM_KT_ED25519,
} adm_keytype;

#define ADM_KEYTYPES "rsa:2048 rsa:3072 rsa:4096 ec:P-256 ec:P-384 ec:P-521 ed25519"
#define ADM_ID_MAX 64 /* bytes of a CKA_ID given with --id */

/* "rsa:2048", "ec:P-256", "ed25519", ... (one of ADM_KEYTYPES);
 * P11J_E_BAD_REQUEST naming the accepted types otherwise. */
int adm_keytype_parse(const char *s, adm_keytype *ret);
const char *adm_keytype_name(adm_keytype t);

/* tok_open() for administration: a token holding no usable key yet (the
 * one keygen is about to fill) is not an error. tok_close() it. */
int adm_open(const tok_config *cfg, tok_ctx **ret);

/* Hex (upper or lower case, even length, 1 to ADM_ID_MAX bytes) to bytes. */
int adm_id_parse(const char *hex, uint8_t **ret_id, size_t *ret_len);

/* A key pair made by adm_keygen. */
typedef struct {
	char *uri;   /* pkcs11:token=...;id=...;object=...;type=private */
	uint8_t *id; /* CKA_ID */
	size_t id_len;
	EVP_PKEY *pub; /* read back from the public key object */
	char *warning; /* what the token did otherwise than asked, or NULL */
} adm_key;

void adm_key_clear(adm_key *k);

/* Whether the module (CK_INFO manufacturer, description) or the token
 * (CK_TOKEN_INFO manufacturer, model) says "TPM": tpm2-pkcs11 reports
 * "tpm2-software.github.io" / "TPM2.0 Cryptoki", a token by the TPM's
 * vendor and model ("IBM", "SW   TPM" for swtpm). Either may be NULL. */
bool adm_info_says_tpm(const CK_INFO *mi, const CK_TOKEN_INFO *ti);

/* Generate a key pair on the token (ctx from adm_open): private key
 * token, private, sensitive, never extractable, sign only; public key
 * token, public, verify only; both with CKA_LABEL label and CKA_ID id (8
 * random bytes when id is NULL). The label: 1 to 128 characters, no control
 * characters. P11J_E_BAD_REQUEST when an object with
 * that label or that CKA_ID exists already. The flags the token applied
 * are read back; a pair that is not as asked is destroyed again.
 * On a TPM token (adm_info_says_tpm) the public template has no
 * CKA_VERIFY/CKA_ENCRYPT, which tpm2-pkcs11 would map onto the TPM key's
 * decrypt and sign attributes (docs/tpm.md); the private key is still
 * checked to be sign-only, and ret->warning says what the token made of the
 * public key object's usage. */
int adm_keygen(tok_ctx *ctx, adm_keytype type, const char *label, const uint8_t *id, size_t id_len,
               adm_key *ret);

/* Boolean attributes of a private key, as the token reports them. */
typedef struct {
	bool token, private_, sensitive, extractable, always_sensitive, never_extractable;
	bool sign, decrypt, unwrap, derive;
} adm_priv_flags;

/* The flags of the one private key labelled label (P11J_E_NOT_FOUND if
 * none). */
int adm_priv_flags_get(tok_ctx *ctx, const char *label, adm_priv_flags *ret);

/* "/CN=x/O=y" (OpenSSL's -subj form; "\/" is a literal slash) into a name.
 * P11J_E_BAD_REQUEST for an empty subject, an unknown attribute type or an
 * empty value. */
int adm_subject_parse(const char *s, X509_NAME **ret);

/* PKCS#10 request for key k with subject subj, signed on the token:
 * sha256WithRSAEncryption for RSA, ecdsa-with-SHA256/384/512 by curve,
 * Ed25519. */
int adm_csr(tok_ctx *ctx, const tok_key *k, const X509_NAME *subj, X509_REQ **ret);

/* Self-signed X.509 v3 certificate, signed the same way: random positive
 * 128-bit serial, valid from now for days days, basicConstraints critical
 * CA:FALSE, keyUsage critical digitalSignature, subjectKeyIdentifier. */
int adm_cert(tok_ctx *ctx, const tok_key *k, const X509_NAME *subj, int days, X509 **ret);

/* Store cert on the token as CKO_CERTIFICATE / CKC_X_509 with the key's
 * CKA_ID and CKA_LABEL. P11J_E_BAD_REQUEST when a certificate with that
 * CKA_ID exists; P11J_E_BAD_REQUEST when cert does not hold k's public key. */
int adm_cert_store(tok_ctx *ctx, const tok_key *k, X509 *cert);

#endif
