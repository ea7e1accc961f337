/* SPDX-License-Identifier: MIT */
#include "common/sockdir.h"
#include "common/err.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int sockdir_fallback_path(unsigned uid, char *buf, size_t len)
{
	int n = snprintf(buf, len, "/tmp/p11jwt-%u/agent.sock", uid);

	if (n < 0 || (size_t)n >= len)
		return err_set(P11J_E_BAD_REQUEST, "socket path does not fit %zu bytes", len);
	return 0;
}

static bool trusted_uid(uid_t uid, const uid_t *trusted, size_t ntrusted)
{
	if (uid == 0)
		return true;
	for (size_t i = 0; i < ntrusted; i++)
		if (trusted[i] == uid)
			return true;
	return false;
}

/* dir and its parent of socket path sock into the two buffers. */
static void split_dirs(const char *sock, char *dir, size_t len, char *parent, size_t plen)
{
	char *slash;

	snprintf(dir, len, "%s", sock);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		snprintf(dir, len, ".");
	else if (slash == dir)
		dir[1] = '\0'; /* "/agent.sock": the directory is / */
	else
		*slash = '\0';
	snprintf(parent, plen, "%s", dir);
	slash = strrchr(parent, '/');
	if (strcmp(parent, "/") == 0)
		return;
	if (slash == NULL)
		snprintf(parent, plen, "%s/..", dir);
	else if (slash == parent)
		parent[1] = '\0';
	else
		*slash = '\0';
}

int sockdir_check(const char *sock, const uid_t *trusted, size_t ntrusted)
{
	char dir[PATH_MAX], parent[PATH_MAX + 4];
	struct stat st, pst;
	unsigned mode;

	if (strlen(sock) >= sizeof(dir))
		return err_set(P11J_E_BAD_REQUEST, "socket path is too long");
	split_dirs(sock, dir, sizeof(dir), parent, sizeof(parent));
	if (lstat(dir, &st) < 0) {
		if (errno == ENOENT)
			return err_set(P11J_E_AGENT_UNAVAILABLE,
				       "socket directory '%s' does not exist", dir);
		return err_set(P11J_E_SYSTEM, "cannot stat socket directory '%s': %s", dir,
			       strerror(errno));
	}
	mode = (unsigned)(st.st_mode & 07777);
	if (S_ISLNK(st.st_mode))
		return err_set(P11J_E_INSECURE,
			       "socket directory '%s' is a symbolic link (owner uid %u); it must be "
			       "a real directory",
			       dir, (unsigned)st.st_uid);
	if (!S_ISDIR(st.st_mode))
		return err_set(P11J_E_INSECURE, "socket directory '%s' is not a directory", dir);
	if (!trusted_uid(st.st_uid, trusted, ntrusted))
		return err_set(P11J_E_INSECURE,
			       "socket directory '%s' is owned by uid %u (mode %04o), not by you "
			       "or root: another user may have made it",
			       dir, (unsigned)st.st_uid, mode);
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		return err_set(P11J_E_INSECURE,
			       "socket directory '%s' (owner uid %u) is writable by others (mode "
			       "%04o); only its owner may write to it",
			       dir, (unsigned)st.st_uid, mode);
	/* In /tmp (or any place anyone may write to) anyone could have made
	 * the directory first and handed it over: only 0700 is trusted there. */
	if (strcmp(dir, "/") != 0 && stat(parent, &pst) == 0 && (pst.st_mode & S_IWOTH) &&
	    mode != 0700)
		return err_set(P11J_E_INSECURE,
			       "socket directory '%s' (owner uid %u) is mode %04o; in '%s', which "
			       "anyone may write to, it must be 0700",
			       dir, (unsigned)st.st_uid, mode, parent);
	return 0;
}

int sockdir_check_peer(int fd, const char *sock, const uid_t *trusted, size_t ntrusted)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return err_set(P11J_E_SYSTEM, "cannot read who listens on %s: %s", sock,
			       strerror(errno));
	if (!trusted_uid(cr.uid, trusted, ntrusted))
		return err_set(P11J_E_INSECURE,
			       "the socket %s is served by uid %u, not by you or root: nothing was "
			       "sent (name the agent's user with --agent-uid or P11JWT_AGENT_UID "
			       "if it runs as a service user)",
			       sock, (unsigned)cr.uid);
	return 0;
}

int sockdir_parse_uid(const char *what, const char *s, uid_t *ret)
{
	struct passwd *pw;
	char *end = NULL;
	unsigned long v;

	if (s == NULL || *s == '\0')
		return err_set(P11J_E_BAD_REQUEST, "%s is empty", what);
	errno = 0;
	v = strtoul(s, &end, 10);
	if (*end == '\0' && errno == 0 && s[0] >= '0' && s[0] <= '9' && v < (uid_t)-1) {
		*ret = (uid_t)v;
		return 0;
	}
	pw = getpwnam(s);
	if (pw == NULL)
		return err_set(P11J_E_BAD_REQUEST, "%s '%.64s' is neither a user name nor a uid",
			       what, s);
	*ret = pw->pw_uid;
	return 0;
}
