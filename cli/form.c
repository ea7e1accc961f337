/* SPDX-License-Identifier: MIT */
#include "cli/form.h"
#include "common/err.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int form_set(form *f, const char *name, const char *value)
{
	char *v = strdup(value), *n;

	if (v == NULL)
		return err_nomem();
	for (size_t i = 0; i < f->n; i++) {
		if (strcmp(f->v[i].name, name) == 0) {
			freezero_str(f->v[i].value);
			f->v[i].value = v;
			return 0;
		}
	}
	if (f->n == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 8;
		form_field *nv = realloc(f->v, cap * sizeof(*nv));

		if (nv == NULL) {
			freezero_str(v);
			return err_nomem();
		}
		f->v = nv;
		f->cap = cap;
	}
	n = strdup(name);
	if (n == NULL) {
		freezero_str(v);
		return err_nomem();
	}
	f->v[f->n++] = (form_field){ n, v };
	return 0;
}

size_t form_del(form *f, const char *name)
{
	size_t out = 0, removed = 0;

	for (size_t i = 0; i < f->n; i++) {
		if (strcmp(f->v[i].name, name) == 0) {
			free(f->v[i].name);
			freezero_str(f->v[i].value);
			removed++;
		} else {
			f->v[out++] = f->v[i];
		}
	}
	f->n = out;
	return removed;
}

const char *form_get(const form *f, const char *name)
{
	for (size_t i = 0; i < f->n; i++)
		if (strcmp(f->v[i].name, name) == 0)
			return f->v[i].value;
	return NULL;
}

static size_t enc(char *out, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '~') {
			if (out)
				out[n] = (char)c;
			n++;
		} else {
			if (out) {
				out[n] = '%';
				out[n + 1] = hex[c >> 4];
				out[n + 2] = hex[c & 15];
			}
			n += 3;
		}
	}
	return n;
}

int form_encode(const form *f, char **ret)
{
	size_t len = 1, n = 0;
	char *s;

	for (size_t i = 0; i < f->n; i++)
		len += enc(NULL, f->v[i].name) + enc(NULL, f->v[i].value) + 2;
	s = malloc(len);
	if (s == NULL)
		return err_nomem();
	for (size_t i = 0; i < f->n; i++) {
		if (i)
			s[n++] = '&';
		n += enc(s + n, f->v[i].name);
		s[n++] = '=';
		n += enc(s + n, f->v[i].value);
	}
	s[n] = '\0';
	*ret = s;
	return 0;
}

void form_clear(form *f)
{
	for (size_t i = 0; i < f->n; i++) {
		free(f->v[i].name);
		freezero_str(f->v[i].value);
	}
	free(f->v);
	memset(f, 0, sizeof(*f));
}

/* A growing string whose old copies are wiped: values may be secrets. */
struct sbuf {
	char *s;
	size_t len, cap;
};

static int sb_add(struct sbuf *b, const char *p, size_t n)
{
	int r = util_secret_reserve(&b->s, &b->cap, b->len, n);

	if (r < 0)
		return r;
	memcpy(b->s + b->len, p, n);
	b->len += n;
	b->s[b->len] = '\0';
	return 0;
}

int form_tmpl_expand(const char *s, form_tmpl_lookup lookup, void *ud, char **ret)
{
	struct sbuf b = { 0 };
	const char *p = s;
	int r = 0;

	while (r == 0 && *p) {
		const char *d = strchr(p, '$');
		const char *e, *v;
		char name[128];

		if (d == NULL) {
			r = sb_add(&b, p, strlen(p));
			break;
		}
		if ((r = sb_add(&b, p, (size_t)(d - p))) < 0)
			break;
		if (d[1] == '$') {
			r = sb_add(&b, "$", 1);
			p = d + 2;
			continue;
		}
		if (d[1] != '{') {
			r = sb_add(&b, "$", 1);
			p = d + 1;
			continue;
		}
		e = strchr(d + 2, '}');
		if (e == NULL) {
			r = err_set(P11J_E_BAD_REQUEST, "'%s': unterminated '${'", s);
			break;
		}
		if ((size_t)(e - d - 2) >= sizeof(name) || e == d + 2) {
			r = err_set(P11J_E_BAD_REQUEST, "'%s': bad variable name", s);
			break;
		}
		memcpy(name, d + 2, (size_t)(e - d - 2));
		name[e - d - 2] = '\0';
		if (strncmp(name, "env:", 4) == 0) {
			v = getenv(name + 4);
			if (v == NULL) {
				r = err_set(P11J_E_BAD_REQUEST,
					    "'%s': environment variable %s is not set", s, name + 4);
				break;
			}
		} else {
			v = lookup ? lookup(name, ud) : NULL;
			if (v == NULL) {
				r = err_set(P11J_E_BAD_REQUEST,
					    "'%s': unknown variable ${%s} (known: ${client_id}, "
					    "${token_url}, ${env:NAME})",
					    s, name);
				break;
			}
		}
		r = sb_add(&b, v, strlen(v));
		p = e + 1;
	}
	if (r == 0 && b.s == NULL)
		r = sb_add(&b, "", 0);
	if (r < 0) {
		if (b.s)
			freezero_buf(b.s, b.cap);
		return r;
	}
	*ret = b.s;
	return 0;
}
