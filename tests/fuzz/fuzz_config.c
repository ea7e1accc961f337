/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the agent's configuration file (p11jwt-agent.conf(5)):
 * cfg_load_string() over arbitrary text, with its error list. An operator
 * writes the file, but a reload reads whatever is there, and a parser bug
 * there is a crash of the daemon that holds the token session.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	cfg_config *cfg = NULL;
	char *errors = NULL;

	if (cfg_load_string("fuzz.conf", (const char *)data, size, &cfg, &errors) == 0) {
		/* a file that parses names each key once */
		if (cfg == NULL)
			abort();
		cfg_free(cfg);
	} else if (cfg != NULL) {
		abort(); /* nothing is returned on failure */
	}
	free(errors);
	return 0;
}
