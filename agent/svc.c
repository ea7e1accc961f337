/* SPDX-License-Identifier: MIT */
#include "agent/svc.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>

int svc_listen_fd(int *ret_fd, char *path, size_t len)
{
	struct sockaddr_un sa = {0};
	socklen_t salen = sizeof(sa);
	int n = sd_listen_fds(1), fd = SD_LISTEN_FDS_START;

	if (n < 0)
		return err_set(P11J_E_SYSTEM, "socket activation: %s", strerror(-n));
	if (n == 0)
		return 0;
	if (n != 1)
		return err_set(P11J_E_BAD_REQUEST,
		               "socket activation passed %d sockets; the agent takes one", n);
	if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0)
		return err_set(P11J_E_BAD_REQUEST,
		               "socket activation: fd %d is not a listening Unix stream socket",
		               fd);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	if (len > 0) {
		path[0] = '\0';
		if (getsockname(fd, (struct sockaddr *)&sa, &salen) == 0 &&
		    salen > offsetof(struct sockaddr_un, sun_path) && sa.sun_path[0] != '\0')
			snprintf(path, len, "%.*s",
			         (int)(salen - offsetof(struct sockaddr_un, sun_path)),
			         sa.sun_path);
	}
	*ret_fd = fd;
	return 1;
}

void svc_notify(const char *state)
{
	(void)sd_notify(0, state);
}

#else

int svc_listen_fd(int *ret_fd, char *path, size_t len)
{
	(void)ret_fd;
	(void)path;
	(void)len;
	return 0;
}

void svc_notify(const char *state)
{
	(void)state;
}

#endif
