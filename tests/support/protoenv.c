/* SPDX-License-Identifier: MIT */
#include "support/protoenv.h"
#include "common/util.h"

int64_t protoenv_now(void)
{
	return PROTOENV_NOW;
}

void protoenv_init(proto_env *env, const keyring *kr)
{
	env->kr = kr;
	env->owner_uid = PROTOENV_OWNER;
	env->version = "test";
	util_set_clock(protoenv_now);
}

void protoenv_fini(void)
{
	util_set_clock(NULL);
}
