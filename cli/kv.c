/* SPDX-License-Identifier: MIT */
#include "cli/kv.h"
#include "common/err.h"
#include "common/util.h"

#include <stdlib.h>
#include <string.h>

int kv_parse(json_t *obj, const char *arg)
{
	const char *eq = strchr(arg, '=');
	size_t klen;
	bool raw_json;
	char *key;
	json_t *v;
	json_error_t jerr;

	if (eq == NULL)
		return err_set(P11J_E_BAD_REQUEST,
			       "'%s' is not NAME=VALUE or NAME:=JSON (no '=')", arg);
	raw_json = eq > arg && eq[-1] == ':';
	klen = (size_t)(eq - arg) - (raw_json ? 1 : 0);
	if (klen == 0)
		return err_set(P11J_E_BAD_REQUEST, "empty name in '%s'", arg);
	if (raw_json) {
		v = json_loads(eq + 1, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
		if (v == NULL)
			return err_set(P11J_E_BAD_REQUEST, "'%s': the value after := is not JSON: %s", arg,
				       jerr.text);
	} else {
		v = json_string(eq + 1);
		if (v == NULL)
			return err_set(P11J_E_BAD_REQUEST, "'%s': value is not valid UTF-8", arg);
	}
	key = strndup(arg, klen);
	if (key == NULL) {
		json_decref(v);
		return err_nomem();
	}
	if (json_object_set_new(obj, key, v) < 0) {
		free(key);
		return err_set(P11J_E_BAD_REQUEST, "'%s': name is not valid UTF-8", arg);
	}
	free(key);
	return 0;
}

int kv_load_file(const char *path, json_t **ret)
{
	char *buf = NULL;
	size_t len = 0;
	json_error_t jerr;
	json_t *v;
	int r;

	if ((r = util_read_file(path, KV_FILE_MAX, false, &buf, &len)) < 0)
		return r;
	v = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	free(buf);
	if (v == NULL)
		return err_set(P11J_E_BAD_REQUEST, "%s:%d:%d: not valid JSON: %s", path, jerr.line,
			       jerr.column, jerr.text);
	if (!json_is_object(v)) {
		json_decref(v); /* json_loadb only returns objects and arrays */
		return err_set(P11J_E_BAD_REQUEST, "%s: must hold a JSON object, not an array",
			       path);
	}
	*ret = v;
	return 0;
}
