/* SPDX-License-Identifier: MIT */
/* Command-line JSON building: `k=v` sets a string, `k:=JSON` a JSON value
 * (the HTTPie convention), and JSON-object files. */
#ifndef P11J_KV_H
#define P11J_KV_H

#include <jansson.h>

#define KV_FILE_MAX (1024 * 1024)

/* Parse one pair into obj. The name ends at the first '='; a ':' right
 * before it makes the rest JSON. Later pairs replace earlier ones.
 * P11J_E_BAD_REQUEST with a message quoting the pair when there is no '=',
 * the name is empty, or the JSON is invalid (Jansson's reason included). */
int kv_parse(json_t *obj, const char *arg);

/* Load a file holding one JSON object (at most KV_FILE_MAX bytes). Errors:
 * P11J_E_NOT_FOUND / P11J_E_SYSTEM (cannot open or read),
 * P11J_E_REQUEST_TOO_LARGE, P11J_E_BAD_REQUEST ("FILE:LINE:COL: ..." for
 * invalid JSON, or not an object). */
int kv_load_file(const char *path, json_t **ret);

#endif
