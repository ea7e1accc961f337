/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for what the CLI takes from outside during a token exchange:
 * the token endpoint's answer (xch_parse_token, then xch_hint on its error),
 * a profile (xch_check_options + xch_resolve) and ${...} templates.
 * The first byte chooses; the second is the HTTP status for answers.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/exchange.h"
#include "cli/form.h"
#include "common/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *fuzz_lookup(const char *name, void *ud)
{
	(void)ud;
	return strcmp(name, "client_id") == 0 ? "cid" : strcmp(name, "empty") == 0 ? "" : NULL;
}

static void fuzz_answer(const uint8_t *data, size_t size, long status)
{
	static const char cli[] = "{\"key\":\"k\",\"client_id\":\"c\","
				  "\"token_url\":\"https://as.example/token\"}";
	xch_token tok;
	xch_req req;
	char *error = NULL, buf[1024];
	json_t *c = json_loads(cli, 0, NULL);
	json_t *body;

	if (xch_parse_token(status, (const char *)data, size, &tok, &error) == 0)
		xch_token_clear(&tok);
	body = json_loadb((const char *)data, size, 0, NULL);
	if (c && xch_resolve(NULL, c, NULL, 1700000000, &req) == 0) {
		xch_hint(&req, error, json_string_value(json_object_get(body, "error_description")),
			 body, body, 1700000000, buf, sizeof(buf));
		xch_req_clear(&req);
	}
	json_decref(body);
	json_decref(c);
	free(error);
}

static void fuzz_profile(const uint8_t *data, size_t size)
{
	json_t *p = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	json_t *cli = json_pack("{s:s}", "key", "k");
	xch_req req;
	char key[65];

	if (p && cli && xch_check_options(p, "fuzz") == 0) {
		/* no files: a fuzzer must not read the disk by name */
		json_object_del(p, "header_file");
		json_object_del(p, "claims_file");
		json_object_del(p, "client_secret_file");
		if (xch_resolve(p, cli, "s3cret", 1700000000, &req) == 0) {
			json_t *sreq = NULL;
			form f;
			bool needs;

			if (xch_sign_request(&req, &sreq) == 0)
				json_decref(sreq);
			xch_cache_key(&req, key);
			if (req.exchange && xch_refresh_form(&req, "rt", &f, &needs) == 0)
				form_clear(&f);
			xch_req_clear(&req);
		}
	}
	json_decref(p);
	json_decref(cli);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s, *out = NULL;

	if (size < 2)
		return 0;
	switch (data[0] % 3) {
	case 0:
		fuzz_answer(data + 2, size - 2, 100 + data[1] * 2);
		break;
	case 1:
		fuzz_profile(data + 1, size - 1);
		break;
	default:
		s = strndup((const char *)data + 1, size - 1);
		if (s && form_tmpl_expand(s, fuzz_lookup, NULL, &out) == 0)
			freezero_str(out);
		free(s);
		break;
	}
	return 0;
}
