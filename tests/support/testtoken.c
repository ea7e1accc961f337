/* SPDX-License-Identifier: MIT */
#include "support/testtoken.h"
#include "common/err.h"

#include <stdarg.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int testtoken_make(const char *name, char *tokdir, size_t tokdir_len, char *pinfile,
		   size_t pinfile_len, char *pin, size_t pin_len)
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

int testtoken_keypairgen(const char *pin, const char *args)
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

tok_ctx *testtoken_open_ok(const tok_config *c)
{
	tok_ctx *ctx = NULL;
	int r = tok_open(c, &ctx);

	if (r != 0)
		fail_msg("tok_open: %d %s", r, err_msg());
	assert_non_null(ctx);
	return ctx;
}
