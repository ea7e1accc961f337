/* SPDX-License-Identifier: MIT */
/*
 * Test-only: a fresh SoftHSM token made by softhsm-conf/mktoken in the build
 * directory, shared by the unit tests that need a real token (tok, pin,
 * admin).
 */
#ifndef P11J_TEST_TESTTOKEN_H
#define P11J_TEST_TESTTOKEN_H

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TESTTOKEN_MODULE "/usr/lib/softhsm/libsofthsm2.so"

/* Make BUILDDIR/tests/NAME (replacing an old one), point SoftHSM at it and
 * clear P11JWT_PIN. tokdir gets the directory, pinfile its PIN file and,
 * when pin is not NULL, pin its PIN. SoftHSM is pinned in memory at one
 * address for the whole run, so that LeakSanitizer can still attribute its
 * leaks to libsofthsm2.so after p11-kit has unloaded and reloaded it. */
static inline int testtoken_make(const char *name, char *tokdir, size_t tokdir_len,
				 char *pinfile, size_t pinfile_len, char *pin, size_t pin_len)
{
	const char *src = getenv("P11JWT_SRCDIR"), *build = getenv("P11JWT_BUILDDIR");
	char cmd[4096], conf[1100];
	FILE *f;

	if (dlopen(TESTTOKEN_MODULE, RTLD_NOW | RTLD_NODELETE) == NULL) {
		fprintf(stderr, "# cannot load %s: %s\n", TESTTOKEN_MODULE, dlerror());
		return -1;
	}
	if (src == NULL)
		src = "..";
	if (build == NULL)
		build = ".";
	snprintf(tokdir, tokdir_len, "%s/tests/%s", build, name);
	snprintf(pinfile, pinfile_len, "%s/pin", tokdir);
	snprintf(cmd, sizeof(cmd), "'%s/softhsm-conf/mktoken' --force '%s' >/dev/null", src,
		 tokdir);
	if (system(cmd) != 0) {
		fprintf(stderr, "# mktoken failed: %s\n", cmd);
		return -1;
	}
	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", tokdir);
	setenv("SOFTHSM2_CONF", conf, 1);
	unsetenv("P11JWT_PIN");
	if (pin == NULL)
		return 0;
	f = fopen(pinfile, "r");
	if (f == NULL)
		return -1;
	if (fgets(pin, (int)pin_len, f) == NULL) {
		fclose(f);
		return -1;
	}
	fclose(f);
	pin[strcspn(pin, "\n")] = '\0';
	return 0;
}

/* Add a key with pkcs11-tool (PIN passed through the environment, never
 * in argv): args are its --keypairgen options, e.g. "--key-type
 * EC:prime256v1 --label unsafe-ec --id 0f --usage-sign --extractable". */
static inline int testtoken_keypairgen(const char *pin, const char *args)
{
	char cmd[1024];
	int r;

	setenv("P11JWT_TEST_PIN", pin, 1);
	snprintf(cmd, sizeof(cmd),
		 "pkcs11-tool --module %s --token-label p11jwt-test --login "
		 "--pin env:P11JWT_TEST_PIN --keypairgen %s >/dev/null 2>&1",
		 TESTTOKEN_MODULE, args);
	r = system(cmd);
	unsetenv("P11JWT_TEST_PIN");
	return r == 0 ? 0 : -1;
}

#endif
