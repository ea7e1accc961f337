/* SPDX-License-Identifier: MIT */
#include "agent/config.h"
#include "common/err.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <ini.h>

/* Where a scalar setting was first seen, to report a second one. */
enum {
	S_SOCKET, S_MAXCONN, S_WORKERS, S_LINETO, S_IDLETO, S_MAXUID, S_SIGNPROC,   /* [agent] */
	S_MODULE, S_TURI, S_PINFILE, S_UNSAFE, S_INITARGS,              /* [token] */
	S_KURI, S_TOKEN, S_OBJECT, S_ALG, S_KID, S_MAXLIFE, S_DENY, S_INC, S_INCAUTO, S_DPOP, /* [key] */
	S__COUNT
};

typedef enum { SEC_NONE, SEC_AGENT, SEC_TOKEN, SEC_KEY, SEC_BAD } sec_kind;

typedef struct {
	const char *name;
	/* the text: read by the reader line by line */
	const char *text;
	size_t len, pos;
	unsigned line;      /* line being parsed (1-based) */
	bool prev_value;    /* a name = value was seen in this section (continuation lines) */
	/* the result */
	cfg_config *cfg;
	char *errs;
	size_t errs_len;
	unsigned nerrs;
	bool oom;
	/* the section being filled */
	char *section;      /* as inih reports it */
	sec_kind kind;
	unsigned agent_line;
	unsigned seen[S__COUNT];
	bool have_algs, have_uids, have_gids;
} cfg_parser;

static void perr(cfg_parser *p, unsigned line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void perr(cfg_parser *p, unsigned line, const char *fmt, ...)
{
	char msg[512];
	char *n;
	int len;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	p->nerrs++;
	len = snprintf(NULL, 0, "%s:%u: %s\n", p->name, line, msg);
	if (len < 0 || p->nerrs > 1000)
		return;
	n = realloc(p->errs, p->errs_len + (size_t)len + 1);
	if (n == NULL) {
		p->oom = true;
		return;
	}
	p->errs = n;
	snprintf(p->errs + p->errs_len, (size_t)len + 1, "%s:%u: %s\n", p->name, line, msg);
	p->errs_len += (size_t)len;
}

static char *xstrdup(cfg_parser *p, const char *s)
{
	char *d = strdup(s);

	if (d == NULL)
		p->oom = true;
	return d;
}

static void begin_section(cfg_parser *p, const char *section);

/* inih reads through this, so that we know the line it is parsing, and can
 * report every syntax error (inih itself reports only the first). */
static char *reader(char *str, int num, void *stream)
{
	cfg_parser *p = stream;
	const char *start, *nl, *s;
	size_t n;

	if (p->pos >= p->len)
		return NULL;
	start = p->text + p->pos;
	nl = memchr(start, '\n', p->len - p->pos);
	n = nl ? (size_t)(nl - start) + 1 : p->len - p->pos;
	p->pos += n;
	p->line++;
	if (memchr(start, '\0', n) != NULL) {
		perr(p, p->line, "line contains a NUL byte");
		strcpy(str, "\n");
		return str;
	}
	if (n >= (size_t)num) {
		perr(p, p->line, "line is longer than %d characters; continue a list on an "
		     "indented next line", num - 2);
		strcpy(str, "\n");
		return str;
	}
	memcpy(str, start, n);
	str[n] = '\0';
	/* the syntax, as inih sees it */
	s = str;
	if (p->line == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3;
	for (; *s == ' ' || *s == '\t' || *s == '\r'; s++)
		;
	if (*s == '\0' || *s == '\n' || *s == ';' || *s == '#')
		return str;
	if (s > str && p->prev_value)
		return str; /* continuation of the previous value */
	if (*s == '[') {
		const char *rb = strchr(s, ']');
		char sec[INI_MAX_LINE];

		p->prev_value = false;
		if (rb == NULL) {
			perr(p, p->line, "missing ']' after the section name");
			p->kind = SEC_BAD;
			return str;
		}
		/* sections are tracked here rather than in the handler, which
		 * sees neither empty sections nor two equal headers in a row */
		memcpy(sec, s + 1, (size_t)(rb - s - 1));
		sec[rb - s - 1] = '\0';
		begin_section(p, sec);
		return str;
	}
	if (strchr(s, '=') == NULL && strchr(s, ':') == NULL) {
		perr(p, p->line, "expected '[section]' or 'name = value'");
		return str;
	}
	p->prev_value = true;
	return str;
}

static bool valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > CFG_MAX_NAME)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
			return false;
	return true;
}

static void begin_section(cfg_parser *p, const char *section)
{
	const char *sp = strchr(section, ' ');
	char kind[16];
	const char *name;
	size_t kl = sp ? (size_t)(sp - section) : strlen(section);

	free(p->section);
	p->section = xstrdup(p, section);
	memset(p->seen, 0, sizeof(p->seen));
	p->have_algs = p->have_uids = p->have_gids = false;
	p->kind = SEC_BAD;
	name = sp ? sp + 1 : "";
	while (*name == ' ')
		name++;
	if (kl >= sizeof(kind)) {
		perr(p, p->line, "unknown section [%.64s] (agent, token NAME, key NAME)", section);
		return;
	}
	memcpy(kind, section, kl);
	kind[kl] = '\0';
	if (strcmp(kind, "agent") == 0) {
		if (*name) {
			perr(p, p->line, "[agent] takes no name");
			return;
		}
		if (p->agent_line) {
			perr(p, p->line, "duplicate [agent] (first at line %u)", p->agent_line);
			return;
		}
		p->agent_line = p->line;
		p->kind = SEC_AGENT;
		return;
	}
	if (strcmp(kind, "token") != 0 && strcmp(kind, "key") != 0) {
		perr(p, p->line, "unknown section [%.64s] (agent, token NAME, key NAME)", section);
		return;
	}
	if (!valid_name(name)) {
		perr(p, p->line, "[%s] needs a name of 1 to %d letters, digits, '-', '_' or '.'",
		     kind, CFG_MAX_NAME);
		return;
	}
	if (kind[0] == 't') {
		cfg_token *n;

		for (size_t i = 0; i < p->cfg->ntokens; i++)
			if (strcmp(p->cfg->tokens[i].name, name) == 0) {
				perr(p, p->line, "duplicate [token %s] (first at line %u)", name,
				     p->cfg->tokens[i].line);
				return;
			}
		n = realloc(p->cfg->tokens, (p->cfg->ntokens + 1) * sizeof(*n));
		if (n == NULL) {
			p->oom = true;
			return;
		}
		p->cfg->tokens = n;
		memset(&n[p->cfg->ntokens], 0, sizeof(*n));
		n[p->cfg->ntokens].name = xstrdup(p, name);
		n[p->cfg->ntokens].line = p->line;
		p->cfg->ntokens++;
		p->kind = SEC_TOKEN;
	} else {
		cfg_key *n;

		for (size_t i = 0; i < p->cfg->nkeys; i++)
			if (strcmp(p->cfg->keys[i].name, name) == 0) {
				perr(p, p->line, "duplicate [key %s] (first at line %u)", name,
				     p->cfg->keys[i].line);
				return;
			}
		n = realloc(p->cfg->keys, (p->cfg->nkeys + 1) * sizeof(*n));
		if (n == NULL) {
			p->oom = true;
			return;
		}
		p->cfg->keys = n;
		memset(&n[p->cfg->nkeys], 0, sizeof(*n));
		n[p->cfg->nkeys].name = xstrdup(p, name);
		n[p->cfg->nkeys].line = p->line;
		pol_key_init(&n[p->cfg->nkeys].pol);
		p->cfg->nkeys++;
		p->kind = SEC_KEY;
	}
}

/* A scalar given twice is an error (lists add up instead). */
static bool once(cfg_parser *p, int which, const char *name)
{
	if (p->seen[which]) {
		perr(p, p->line, "'%s' given twice in [%s] (first at line %u)", name, p->section,
		     p->seen[which]);
		return false;
	}
	p->seen[which] = p->line;
	return true;
}

static bool parse_ulong(cfg_parser *p, const char *name, const char *v, unsigned long min,
			unsigned long max, unsigned long *ret)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(v, &end, 10);
	if (errno || *end || !isdigit((unsigned char)v[0]) || n < min || n > max) {
		perr(p, p->line, "'%s' must be a whole number from %lu to %lu, not '%.64s'", name, min,
		     max, v);
		return false;
	}
	*ret = n;
	return true;
}

static bool parse_bool(cfg_parser *p, const char *name, const char *v, bool *ret)
{
	if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "on") || !strcmp(v, "1"))
		*ret = true;
	else if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "off") || !strcmp(v, "0"))
		*ret = false;
	else {
		perr(p, p->line, "'%s' must be yes or no, not '%.64s'", name, v);
		return false;
	}
	return true;
}

static bool set_path(cfg_parser *p, const char *name, const char *v, char **dst)
{
	if (v[0] != '/') {
		perr(p, p->line, "'%s' must be an absolute path, not '%.200s'", name, v);
		return false;
	}
	free(*dst);
	*dst = xstrdup(p, v);
	return true;
}

static bool set_uri(cfg_parser *p, const char *name, const char *v, char **dst)
{
	if (strncmp(v, "pkcs11:", 7) != 0) {
		perr(p, p->line, "'%s' must be a PKCS#11 URI (pkcs11:...), not '%.200s'", name, v);
		return false;
	}
	free(*dst);
	*dst = xstrdup(p, v);
	return true;
}

/* Split a list value: items separated by blanks (and commas when commas
 * is set); "double quotes" keep blanks and commas inside an item. Calls
 * fn for each item. */
static void each_item(cfg_parser *p, const char *v, bool commas,
		      void (*fn)(cfg_parser *p, const char *item, void *ud), void *ud)
{
	char item[256];

	while (*v) {
		size_t n = 0;

		while (*v == ' ' || *v == '\t' || (commas && *v == ','))
			v++;
		if (*v == '\0')
			break;
		if (*v == '"') {
			v++;
			while (*v && *v != '"' && n < sizeof(item) - 1)
				item[n++] = *v++;
			if (*v != '"') {
				perr(p, p->line, "unterminated \" in a list");
				return;
			}
			v++;
		} else {
			while (*v && *v != ' ' && *v != '\t' && !(commas && *v == ',') &&
			       n < sizeof(item) - 1)
				item[n++] = *v++;
		}
		item[n] = '\0';
		fn(p, item, ud);
	}
}

static void list_add(cfg_parser *p, pol_list *l, const char *s)
{
	char **n = realloc(l->v, (l->n + 1) * sizeof(*n));

	if (n == NULL) {
		p->oom = true;
		return;
	}
	l->v = n;
	if ((l->v[l->n] = xstrdup(p, s)) != NULL)
		l->n++;
}

static void add_path(cfg_parser *p, const char *item, void *ud)
{
	if (item[0] != '/') {
		perr(p, p->line, "'module_allow' entries must be absolute paths, not '%.200s'", item);
		return;
	}
	list_add(p, ud, item);
}

/* fnmatch(3) has no compile step: catch what would never match as meant. */
static bool glob_ok(const char *s)
{
	for (; *s; s++) {
		if (*s == '\\') {
			if (*++s == '\0')
				return false;
		} else if (*s == '[') {
			const char *e = s + 1;

			if (*e == '!' || *e == '^')
				e++;
			if (*e == ']')
				e++;
			e = strchr(e, ']');
			if (e == NULL)
				return false;
			s = e;
		}
	}
	return true;
}

static void add_claim(cfg_parser *p, const char *item, void *ud)
{
	if (!glob_ok(item)) {
		perr(p, p->line, "bad glob '%.200s' (an unclosed '[' or a trailing '\\')", item);
		return;
	}
	list_add(p, ud, item);
}

static void add_header(cfg_parser *p, const char *item, void *ud)
{
	pol_list *l = ud;

	if (strcmp(item, "alg") == 0) {
		perr(p, p->line, "'alg' cannot be denied: the agent sets it");
		return;
	}
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i], item) == 0)
			return;
	list_add(p, l, item);
}

static void add_alg(cfg_parser *p, const char *item, void *ud)
{
	unsigned *algs = ud;
	jwa_alg a = jwa_from_name(item);

	if (a == JWA_NONE) {
		perr(p, p->line, "unknown alg '%.32s' (RS256, RS384, RS512, PS256, PS384, PS512, "
		     "ES256, ES384, ES512, EdDSA)", item);
		return;
	}
	*algs |= JWA_BIT(a);
}

static void add_include(cfg_parser *p, const char *item, void *ud)
{
	unsigned *mask = ud;

	if (strcmp(item, "x5t") == 0)
		*mask |= POL_INC_X5T;
	else if (strcmp(item, "x5t#S256") == 0)
		*mask |= POL_INC_X5T_S256;
	else if (strcmp(item, "x5c") == 0)
		*mask |= POL_INC_X5C;
	else if (strcmp(item, "none") != 0)
		perr(p, p->line, "unknown certificate member '%.32s' (x5t, x5t#S256, x5c, none)",
		     item);
}

static bool all_digits(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return false;
	return true;
}

/* A user or group, by name or number, for a key's uids/gids rule. */
static bool parse_id(cfg_parser *p, const char *item, bool group, unsigned long *ret)
{
	const char *what = group ? "gid" : "uid";

	if (all_digits(item)) {
		errno = 0;
		*ret = strtoul(item, NULL, 10);
		/* (uid_t)-1 and (gid_t)-1 mean "no id" to the kernel */
		if (errno || *ret >= (unsigned long)(uid_t)-1) {
			perr(p, p->line, "%s %.32s is out of range", what, item);
			return false;
		}
		return true;
	}
	if (group) {
		struct group *gr = getgrnam(item);

		if (gr != NULL) {
			*ret = gr->gr_gid;
			return true;
		}
	} else {
		struct passwd *pw = getpwnam(item);

		if (pw != NULL) {
			*ret = pw->pw_uid;
			return true;
		}
	}
	perr(p, p->line, "unknown %s '%.64s'", group ? "group" : "user", item);
	return false;
}

/* uid_t and gid_t are both unsigned int in glibc: one list-append for the
 * uids and gids rules. */
_Static_assert(sizeof(uid_t) == sizeof(gid_t) && (uid_t)-1 > 0 && (gid_t)-1 > 0,
	       "uid_t and gid_t differ");

static void add_id(cfg_parser *p, const char *item, pol_key *k, bool group)
{
	uid_t **ids = group ? (uid_t **)&k->gids : &k->uids;
	size_t *n = group ? &k->ngids : &k->nuids;
	unsigned long id;
	uid_t *grown;

	if (!parse_id(p, item, group, &id))
		return;
	grown = realloc(*ids, (*n + 1) * sizeof(**ids));
	if (grown == NULL) {
		p->oom = true;
		return;
	}
	*ids = grown;
	grown[(*n)++] = (uid_t)id;
}

static void add_uid(cfg_parser *p, const char *item, void *ud)
{
	add_id(p, item, ud, false);
}

static void add_gid(cfg_parser *p, const char *item, void *ud)
{
	add_id(p, item, ud, true);
}

static void agent_setting(cfg_parser *p, const char *name, const char *v)
{
	cfg_config *c = p->cfg;

	if (strcmp(name, "socket") == 0) {
		if (once(p, S_SOCKET, name) && set_path(p, name, v, &c->socket) &&
		    strlen(v) >= 108) {
			perr(p, p->line, "'socket' is longer than a socket path may be (107 bytes)");
		}
	} else if (strcmp(name, "max_connections") == 0) {
		if (once(p, S_MAXCONN, name))
			parse_ulong(p, name, v, 1, 65536, &c->max_connections);
	} else if (strcmp(name, "workers") == 0) {
		if (once(p, S_WORKERS, name))
			parse_ulong(p, name, v, 1, 64, &c->workers);
	} else if (strcmp(name, "sign_processes") == 0) {
		if (once(p, S_SIGNPROC, name))
			parse_ulong(p, name, v, 1, 64, &c->sign_processes);
	} else if (strcmp(name, "line_timeout") == 0) {
		if (once(p, S_LINETO, name))
			parse_ulong(p, name, v, 1, 3600, &c->line_timeout);
	} else if (strcmp(name, "idle_timeout") == 0) {
		if (once(p, S_IDLETO, name))
			parse_ulong(p, name, v, 1, 86400, &c->idle_timeout);
	} else if (strcmp(name, "max_connections_per_uid") == 0) {
		if (once(p, S_MAXUID, name))
			parse_ulong(p, name, v, 1, 65536, &c->max_connections_per_uid);
	} else {
		perr(p, p->line, "unknown setting '%.64s' in [agent] (socket, max_connections, "
		     "max_connections_per_uid, workers, sign_processes, line_timeout, idle_timeout)",
		     name);
	}
}

/* A module's initialisation parameters: printable text (an empty value is
 * refused before, and the line length bounds it). */
static void set_init_args(cfg_parser *p, const char *name, const char *v, cfg_token *t)
{
	size_t n = strlen(v);

	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) {
			perr(p, p->line, "'%s' must not hold control characters", name);
			return;
		}
	free(t->module_init_args);
	t->module_init_args = xstrdup(p, v);
	t->init_args_line = p->line;
}

static void token_setting(cfg_parser *p, const char *name, const char *v)
{
	cfg_token *t = &p->cfg->tokens[p->cfg->ntokens - 1];

	if (strcmp(name, "module") == 0) {
		if (once(p, S_MODULE, name))
			set_path(p, name, v, &t->module);
	} else if (strcmp(name, "uri") == 0) {
		if (once(p, S_TURI, name))
			set_uri(p, name, v, &t->uri);
	} else if (strcmp(name, "pin_file") == 0) {
		if (once(p, S_PINFILE, name))
			set_path(p, name, v, &t->pin_file);
	} else if (strcmp(name, "module_allow") == 0) {
		each_item(p, v, false, add_path, &t->module_allow);
	} else if (strcmp(name, "allow_unsafe_keys") == 0) {
		if (once(p, S_UNSAFE, name))
			parse_bool(p, name, v, &t->allow_unsafe_keys);
	} else if (strcmp(name, "module_init_args") == 0) {
		if (once(p, S_INITARGS, name))
			set_init_args(p, name, v, t);
	} else {
		perr(p, p->line, "unknown setting '%.64s' in [%s] (module, uri, pin_file, "
		     "module_allow, module_init_args, allow_unsafe_keys)", name, p->section);
	}
}

/* state = active|next|retiring and retire_after = DATE (rotation). */
static void key_rotation_setting(cfg_parser *p, cfg_key *k, const char *name, const char *v)
{
	bool is_state = strcmp(name, "state") == 0;
	unsigned *seen = is_state ? &k->state_line : &k->retire_line;
	int st;

	if (*seen != 0) {
		perr(p, p->line, "'%s' given twice in [%s] (first at line %u)", name, p->section,
		     *seen);
		return;
	}
	*seen = p->line;
	if (is_state) {
		if ((st = pol_state_from_name(v)) < 0)
			perr(p, p->line, "unknown state '%.32s' (active, next, retiring)", v);
		else
			k->pol.state = st;
	} else if (pol_parse_time(v, &k->pol.retire_after) < 0) {
		perr(p, p->line, "retire_after: %s", err_msg());
	}
}

static void key_setting(cfg_parser *p, const char *name, const char *v)
{
	cfg_key *k = &p->cfg->keys[p->cfg->nkeys - 1];
	unsigned long n;

	if (strcmp(name, "uri") == 0) {
		if (once(p, S_KURI, name))
			set_uri(p, name, v, &k->uri);
	} else if (strcmp(name, "token") == 0) {
		if (once(p, S_TOKEN, name)) {
			k->token_line = p->line;
			free(k->token);
			k->token = xstrdup(p, v);
		}
	} else if (strcmp(name, "object") == 0) {
		if (once(p, S_OBJECT, name)) {
			free(k->object);
			k->object = xstrdup(p, v);
		}
	} else if (strcmp(name, "algs") == 0) {
		p->have_algs = true;
		each_item(p, v, true, add_alg, &k->pol.algs);
	} else if (strcmp(name, "alg") == 0) {
		if (once(p, S_ALG, name)) {
			k->alg = jwa_from_name(v);
			if (k->alg == JWA_NONE)
				perr(p, p->line, "unknown alg '%.32s' (RS256, RS384, RS512, PS256, "
				     "PS384, PS512, ES256, ES384, ES512, EdDSA)", v);
		}
	} else if (strcmp(name, "kid") == 0) {
		if (!once(p, S_KID, name))
			return;
		if (strcmp(v, "thumbprint") == 0) {
			k->kid_mode = CFG_KID_THUMBPRINT;
		} else if (strcmp(v, "id") == 0) {
			k->kid_mode = CFG_KID_ID;
		} else {
			const char *fixed = strncmp(v, "fixed:", 6) == 0 ? v + 6 : v;

			if (*fixed == '\0' || strlen(fixed) > 256) {
				perr(p, p->line, "'kid' must be thumbprint, id, or 1 to 256 characters");
				return;
			}
			k->kid_mode = CFG_KID_FIXED;
			free(k->kid);
			k->kid = xstrdup(p, fixed);
		}
	} else if (strcmp(name, "uids") == 0) {
		p->have_uids = true;
		each_item(p, v, true, add_uid, &k->pol);
	} else if (strcmp(name, "gids") == 0) {
		p->have_gids = true;
		each_item(p, v, true, add_gid, &k->pol);
	} else if (strcmp(name, "max_lifetime") == 0) {
		if (once(p, S_MAXLIFE, name) &&
		    parse_ulong(p, name, v, 1, POL_MAX_LIFETIME, &n))
			k->pol.max_lifetime = (int64_t)n;
	} else if (strcmp(name, "iss") == 0) {
		each_item(p, v, false, add_claim, &k->pol.iss);
	} else if (strcmp(name, "sub") == 0) {
		each_item(p, v, false, add_claim, &k->pol.sub);
	} else if (strcmp(name, "aud") == 0) {
		each_item(p, v, false, add_claim, &k->pol.aud);
	} else if (strcmp(name, "deny_header") == 0) {
		if (!once(p, S_DENY, name))
			return;
		k->pol.deny_header.v = NULL; /* the defaults are static */
		k->pol.deny_header.n = 0;
		if (strcmp(v, "none") != 0)
			each_item(p, v, true, add_header, &k->pol.deny_header);
	} else if (strcmp(name, "include") == 0) {
		if (!once(p, S_INC, name))
			return;
		k->pol.include = 0;
		each_item(p, v, true, add_include, &k->pol.include);
	} else if (strcmp(name, "include_auto") == 0) {
		if (!once(p, S_INCAUTO, name))
			return;
		k->pol.include_auto = 0;
		each_item(p, v, true, add_include, &k->pol.include_auto);
	} else if (strcmp(name, "dpop") == 0) {
		if (once(p, S_DPOP, name))
			parse_bool(p, name, v, &k->pol.dpop);
	} else if (strcmp(name, "state") == 0 || strcmp(name, "retire_after") == 0) {
		key_rotation_setting(p, k, name, v);
	} else {
		perr(p, p->line, "unknown setting '%.64s' in [%s] (uri, token, object, algs, alg, "
		     "kid, uids, gids, max_lifetime, iss, sub, aud, deny_header, include, "
		     "include_auto, dpop, state, retire_after)", name, p->section);
	}
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
	cfg_parser *p = user;

	(void)section; /* the reader saw the header line first: p->kind */
	if (p->kind == SEC_NONE) {
		perr(p, p->line, "setting '%.64s' outside a section", name);
		return 1;
	}
	if (p->kind == SEC_BAD) /* reported at the section line */
		return 1;
	if (value[0] == '\0') {
		perr(p, p->line, "'%.64s' has no value", name);
		return 1;
	}
	switch (p->kind) {
	case SEC_AGENT: agent_setting(p, name, value); break;
	case SEC_TOKEN: token_setting(p, name, value); break;
	case SEC_KEY: key_setting(p, name, value); break;
	default: break;
	}
	return 1;
}

static const cfg_token *find_token(const cfg_config *c, const char *name)
{
	for (size_t i = 0; i < c->ntokens; i++)
		if (strcmp(c->tokens[i].name, name) == 0)
			return &c->tokens[i];
	return NULL;
}

/* What needs the whole file: references and combinations. */
static void check_keys(cfg_parser *p)
{
	cfg_config *c = p->cfg;

	/* Registered modules take theirs from p11-kit (x-init-reserved). */
	for (size_t i = 0; i < c->ntokens; i++) {
		const cfg_token *t = &c->tokens[i];

		if (t->module_init_args != NULL && t->module == NULL &&
		    (t->uri == NULL || strstr(t->uri, "module-path=") == NULL))
			perr(p, t->init_args_line, "[token %s]: 'module_init_args' needs 'module' "
			     "(a module registered with p11-kit takes its parameters from the "
			     "registration's x-init-reserved)", t->name);
	}

	for (size_t i = 0; i < c->nkeys; i++) {
		cfg_key *k = &c->keys[i];

		if (k->uri == NULL && k->object == NULL)
			perr(p, k->line, "[key %s] needs 'uri' or 'object'", k->name);
		if (k->uri != NULL && k->object != NULL)
			perr(p, k->line, "[key %s] has both 'uri' and 'object'; give one", k->name);
		if (k->uri != NULL && strstr(k->uri, "object=") == NULL && strstr(k->uri, "id=") == NULL)
			perr(p, k->line, "[key %s]: 'uri' names no object= or id=", k->name);
		if (k->token != NULL && find_token(c, k->token) == NULL)
			perr(p, k->token_line, "[key %s] names token '%.64s', which has no [token] "
			     "section", k->name, k->token);
		if (k->token == NULL && c->ntokens > 1 &&
		    (k->uri == NULL || strstr(k->uri, "token=") == NULL))
			perr(p, k->line, "[key %s]: %zu tokens are defined; name one with 'token'",
			     k->name, c->ntokens);
		if (k->alg != JWA_NONE && k->pol.algs != 0 && !(k->pol.algs & JWA_BIT(k->alg)))
			perr(p, k->line, "[key %s]: 'alg' %s is not in 'algs'", k->name,
			     jwa_name(k->alg));
		if (k->pol.state == POL_STATE_RETIRING && k->retire_line == 0)
			perr(p, k->state_line, "[key %s]: state = retiring needs retire_after = DATE "
			     "(when it stops signing)", k->name);
		if (k->retire_line != 0 && k->pol.state != POL_STATE_RETIRING)
			perr(p, k->retire_line, "[key %s]: retire_after is only for state = retiring",
			     k->name);
	}
}

void cfg_free(cfg_config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	free(cfg->socket);
	for (size_t i = 0; i < cfg->ntokens; i++) {
		cfg_token *t = &cfg->tokens[i];

		free(t->name);
		free(t->module);
		free(t->uri);
		free(t->pin_file);
		free(t->module_init_args);
		for (size_t j = 0; j < t->module_allow.n; j++)
			free(t->module_allow.v[j]);
		free(t->module_allow.v);
	}
	free(cfg->tokens);
	for (size_t i = 0; i < cfg->nkeys; i++) {
		cfg_key *k = &cfg->keys[i];

		free(k->name);
		free(k->uri);
		free(k->token);
		free(k->object);
		free(k->kid);
		pol_key_clear(&k->pol);
	}
	free(cfg->keys);
	free(cfg);
}

int cfg_load_string(const char *name, const char *text, size_t len, cfg_config **ret,
		    char **ret_errors)
{
	cfg_parser p = { .name = name, .text = text, .len = len };
	int r;

	if (ret_errors != NULL)
		*ret_errors = NULL;
	p.cfg = calloc(1, sizeof(*p.cfg));
	if (p.cfg == NULL || (p.cfg->path = strdup(name)) == NULL) {
		free(p.cfg);
		return err_nomem();
	}
	r = ini_parse_stream(reader, &p, handler, &p);
	if (r == -2)
		p.oom = true;
	check_keys(&p);
	free(p.section);
	if (p.oom) {
		free(p.errs);
		cfg_free(p.cfg);
		return err_set(P11J_E_NOMEM, "out of memory reading %s", name);
	}
	if (r > 0 && p.nerrs == 0) /* inih saw what our reader did not */
		perr(&p, (unsigned)r, "syntax error");
	if (p.nerrs > 0) {
		r = err_set(P11J_E_BAD_REQUEST, "%s: %u error%s", name, p.nerrs,
			    p.nerrs == 1 ? "" : "s");
		if (ret_errors != NULL)
			*ret_errors = p.errs;
		else
			free(p.errs);
		cfg_free(p.cfg);
		return r;
	}
	free(p.errs);
	*ret = p.cfg;
	return 0;
}

int cfg_load(const char *path, cfg_config **ret, char **ret_errors)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	ssize_t n;
	int fd, r;

	if (ret_errors != NULL)
		*ret_errors = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		r = err_set(errno == ENOENT ? P11J_E_NOT_FOUND : P11J_E_SYSTEM, "%s: %s", path,
			    strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = err_set(P11J_E_BAD_REQUEST, "%s: not a regular file", path);
		goto out;
	}
	if (st.st_size > CFG_MAX_FILE) {
		r = err_set(P11J_E_REQUEST_TOO_LARGE, "%s: larger than %d bytes", path, CFG_MAX_FILE);
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		r = err_nomem();
		goto out;
	}
	while (len < (size_t)st.st_size) {
		n = read(fd, buf + len, (size_t)st.st_size - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = err_set(P11J_E_SYSTEM, "%s: %s", path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	r = cfg_load_string(path, buf, len, ret, ret_errors);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

const cfg_key *cfg_find_key(const cfg_config *cfg, const char *name)
{
	for (size_t i = 0; cfg != NULL && i < cfg->nkeys; i++)
		if (strcmp(cfg->keys[i].name, name) == 0)
			return &cfg->keys[i];
	return NULL;
}

static bool streq(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

bool cfg_token_same(const cfg_token *a, const cfg_token *b)
{
	if (!streq(a->name, b->name) || !streq(a->module, b->module) || !streq(a->uri, b->uri) ||
	    !streq(a->pin_file, b->pin_file) || a->allow_unsafe_keys != b->allow_unsafe_keys ||
	    !streq(a->module_init_args, b->module_init_args) ||
	    a->module_allow.n != b->module_allow.n)
		return false;
	for (size_t i = 0; i < a->module_allow.n; i++)
		if (strcmp(a->module_allow.v[i], b->module_allow.v[i]) != 0)
			return false;
	return true;
}
