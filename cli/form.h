/* SPDX-License-Identifier: MIT */
/* An application/x-www-form-urlencoded body as an ordered list of fields,
 * and the ${...} templates that presets and profiles use. Values are
 * treated as secrets: they are wiped when replaced or cleared. */
#ifndef P11J_FORM_H
#define P11J_FORM_H

#include <stddef.h>

typedef struct {
	char *name;
	char *value;
} form_field;

typedef struct {
	form_field *v;
	size_t n, cap;
} form;

/* Replace the value of the first field called name, or append it. */
int form_set(form *f, const char *name, const char *value);
/* Remove every field called name; returns how many were removed. */
size_t form_del(form *f, const char *name);
const char *form_get(const form *f, const char *name);
/* Encode as name=value&... (RFC 3986 unreserved kept, space as %20,
 * everything else %XX). The result is a secret: freezero_str() it. */
int form_encode(const form *f, char **ret);
void form_clear(form *f);

/* Expand ${name} in s. lookup(name, ud) returns the value or NULL when the
 * name is unknown; ${env:NAME} reads the environment. A value that is set
 * but empty expands to "". P11J_E_BAD_REQUEST names an unknown variable,
 * an unset environment variable or an unterminated "${". "$$" is "$". */
typedef const char *(*form_tmpl_lookup)(const char *name, void *ud);
int form_tmpl_expand(const char *s, form_tmpl_lookup lookup, void *ud, char **ret);

#endif
