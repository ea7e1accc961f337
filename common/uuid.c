/* SPDX-License-Identifier: MIT */
/* util_random() and util_uuid4(): kept apart from util.c because they need
 * libcrypto (RAND_bytes), which the rest of util.c does not. */
#include "common/util.h"
#include "common/err.h"

#include <pthread.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

/* Random bytes for jti values (JWTs' UUIDs, DPoP proofs' jti), drawn from
 * RAND_bytes 4 KiB at a time per thread: one DRBG call (and its locks) per
 * 256 JWTs instead of one per JWT. Each byte is used once and wiped as it
 * is taken; a forked child
 * starts with an empty buffer so it never repeats its parent's values. */
#define UUID_POOL 4096
static _Thread_local struct {
	uint8_t b[UUID_POOL];
	size_t off; /* bytes used; UUID_POOL when empty */
	unsigned gen;
} uuid_pool = { .off = UUID_POOL };
static _Atomic unsigned uuid_fork_gen;
static int (*random_override)(uint8_t *out, size_t n);

void util_set_random(int (*fn)(uint8_t *out, size_t n))
{
	random_override = fn;
}
static pthread_once_t uuid_once = PTHREAD_ONCE_INIT;

static void uuid_on_fork(void)
{
	uuid_fork_gen++;
}

static void uuid_register(void)
{
	pthread_atfork(NULL, NULL, uuid_on_fork);
}

int util_random(uint8_t *out, size_t n)
{
	unsigned gen;

	if (n > UTIL_RANDOM_MAX)
		return err_set(P11J_E_INTERNAL, "util_random: %zu bytes asked, at most %d", n,
			       UTIL_RANDOM_MAX);
	if (random_override != NULL)
		return random_override(out, n);
	pthread_once(&uuid_once, uuid_register);
	gen = uuid_fork_gen;
	if (uuid_pool.gen != gen || uuid_pool.off + n > UUID_POOL) {
		if (RAND_bytes(uuid_pool.b, UUID_POOL) != 1) {
			OPENSSL_cleanse(uuid_pool.b, UUID_POOL);
			uuid_pool.off = UUID_POOL;
			return err_set_ossl(P11J_E_CRYPTO, "RAND_bytes");
		}
		uuid_pool.off = 0;
		uuid_pool.gen = gen;
	}
	memcpy(out, uuid_pool.b + uuid_pool.off, n);
	OPENSSL_cleanse(uuid_pool.b + uuid_pool.off, n);
	uuid_pool.off += n;
	return 0;
}

int util_uuid4(char out[37])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t b[16];
	size_t o = 0;
	int r;

	if ((r = util_random(b, sizeof(b))) < 0)
		return r;
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	for (size_t i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[b[i] >> 4];
		out[o++] = hex[b[i] & 15];
	}
	out[o] = '\0';
	OPENSSL_cleanse(b, sizeof(b));
	return 0;
}
