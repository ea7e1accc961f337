/* SPDX-License-Identifier: MIT */
/*
 * Test support: a fresh SoftHSM token made by softhsm-conf/mktoken in the
 * build directory, for the component tests that need a real token (tok,
 * pin, admin), and the token-layer fixtures they share.
 */
#ifndef P11J_TEST_TESTTOKEN_H
#define P11J_TEST_TESTTOKEN_H

#include <stddef.h>
#include "pkcs11/tok.h"

#define TESTTOKEN_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define TESTTOKEN_URI "pkcs11:token=p11jwt-test"

/* Make BUILDDIR/tests/NAME (replacing an old one), point SoftHSM at it and
 * clear P11JWT_PIN. tokdir gets the directory, pinfile its PIN file and,
 * when pin is not NULL, pin its PIN. SoftHSM is pinned in memory at one
 * address for the whole run, so that LeakSanitizer can still attribute its
 * leaks to libsofthsm2.so after p11-kit has unloaded and reloaded it.
 * 0 or -1 (with a "# " line on stderr). */
int testtoken_make(const char *name, char *tokdir, size_t tokdir_len, char *pinfile,
		   size_t pinfile_len, char *pin, size_t pin_len);

/* Add a key with pkcs11-tool (PIN passed through the environment, never
 * in argv): args are its --keypairgen options, e.g. "--key-type
 * EC:prime256v1 --label unsafe-ec --id 0f --usage-sign --extractable".
 * 0 or -1. */
int testtoken_keypairgen(const char *pin, const char *args);

/* tok_open(c), failing the current test with the error when it fails. */
tok_ctx *testtoken_open_ok(const tok_config *c);

#endif
