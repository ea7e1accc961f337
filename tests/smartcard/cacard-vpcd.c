/* SPDX-License-Identifier: MIT */
/* A test card for the PC/SC stack: libcacard's CAC emulation of an NSS
 * database's certificates and keys, plugged into vsmartcard's vpcd driver
 * in pcscd. vpcd listens (on every interface: the test runs pcscd and this
 * program in a network namespace of their own, where there is only
 * loopback) and we connect to it, as a card reader's card would be put in.
 *
 *   cacard-vpcd --db DIR [--port N] [--reader NAME] [--log FILE] NICK...
 *
 * NICK... are the NSS nicknames of the certificates (with their keys) the
 * card carries. Prints "inserted" once connected. Commands on stdin, one
 * per line: "remove" closes the connection, which vpcd reports as the card
 * taken out; "insert" connects again; each is answered with the new state
 * ("removed", "inserted") once it holds. EOF ends the program. The log gets
 * one line per APDU (class, instruction, parameters and status word, never
 * data) and "verify sw=XXXX" for each PIN verification that carries a PIN,
 * so a test can count what reached the card.
 *
 * vpcd's protocol: each message is a 2-byte big-endian length and the
 * bytes. A 1-byte message is a control: 0 power off, 1 power on, 2 reset,
 * 4 "send the ATR" (answered); anything longer is an APDU (answered with
 * the response APDU). */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libcacard.h>

#define VPCD_CTRL_OFF 0
#define VPCD_CTRL_ON 1
#define VPCD_CTRL_RESET 2
#define VPCD_CTRL_ATR 4
#define INS_VERIFY 0x20
#define BUF_MAX 65538

static FILE *apdu_log;

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
	va_list ap;

	if (!apdu_log)
		return;
	va_start(ap, fmt);
	vfprintf(apdu_log, fmt, ap);
	va_end(ap);
	fputc('\n', apdu_log);
	fflush(apdu_log);
}

/* libcacard queues an event for every reader and card change; nobody else
 * reads them here, so drain the queue. */
static gpointer drain_events(gpointer unused)
{
	VEvent *ev;

	(void)unused;
	while ((ev = vevent_wait_next_vevent()) != NULL) {
		bool last = ev->type == VEVENT_LAST;

		vevent_delete(ev);
		if (last)
			break;
	}
	return NULL;
}

static int connect_to(unsigned short port)
{
	struct sockaddr_in sa;
	int fd, one = 1;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static int read_full(int fd, unsigned char *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

/* Length and bytes in one send: in two, Nagle's algorithm and the peer's
 * delayed ACK cost some 40 ms per APDU. */
static int send_msg(int fd, const unsigned char *data, size_t len)
{
	static unsigned char msg[BUF_MAX + 2];

	msg[0] = (unsigned char)(len >> 8);
	msg[1] = (unsigned char)len;
	memcpy(msg + 2, data, len);
	return send(fd, msg, len + 2, MSG_NOSIGNAL) == (ssize_t)(len + 2) ? 0 : -1;
}

/* One message from vpcd; -1 when the connection is gone. */
static int serve_one(int fd, VReader *reader)
{
	static unsigned char in[BUF_MAX], out[BUF_MAX];
	unsigned char hdr[2];
	size_t len;
	int outlen, one = 1;

	if (read_full(fd, hdr, 2) < 0)
		return -1;
	/* Debian's vpcd (0.8) sends the length and the bytes in two sends,
	 * with Nagle on: the bytes wait for our ACK of the length, which the
	 * kernel would delay by 40 ms. ACK now. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	len = ((size_t)hdr[0] << 8) | hdr[1];
	if (read_full(fd, in, len) < 0)
		return -1;
	if (len == 1) {
		switch (in[0]) {
		case VPCD_CTRL_OFF:
			(void)vreader_power_off(reader);
			return 0;
		case VPCD_CTRL_ON:
		case VPCD_CTRL_RESET:
			outlen = BUF_MAX;
			(void)vreader_power_on(reader, out, &outlen);
			return 0;
		case VPCD_CTRL_ATR:
			outlen = 64;
			vcard_emul_get_atr(NULL, out, &outlen);
			return send_msg(fd, out, (size_t)outlen);
		default:
			logmsg("unknown control %u", in[0]);
			return 0;
		}
	}
	outlen = BUF_MAX - 2;
	if (vreader_xfr_bytes(reader, in, (int)len, out, &outlen) != VREADER_OK) {
		/* answer anyway: a status word the host understands */
		out[0] = 0x6f;
		out[1] = 0x00;
		outlen = 2;
	}
	if (len >= 4 && outlen >= 2) {
		unsigned sw = ((unsigned)out[outlen - 2] << 8) | out[outlen - 1];

		logmsg("apdu cla=%02x ins=%02x p1=%02x p2=%02x sw=%04x", in[0], in[1], in[2], in[3],
		       sw);
		/* a VERIFY with a body is a PIN sent to the card; without one
		 * it only asks for the login state */
		if (in[1] == INS_VERIFY && len > 5)
			logmsg("verify sw=%04x", sw);
	}
	return send_msg(fd, out, (size_t)outlen);
}

static void usage(void)
{
	fprintf(stderr, "usage: cacard-vpcd --db DIR [--port N] [--reader NAME] [--log FILE] "
	                "NICKNAME...\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"db", required_argument, NULL, 'd'},
	    {"port", required_argument, NULL, 'p'},
	    {"reader", required_argument, NULL, 'r'},
	    {"log", required_argument, NULL, 'l'},
	    {NULL, 0, NULL, 0},
	};
	const char *db = NULL, *reader_name = "p11jwt-cac", *logpath = NULL;
	unsigned short port = 0x8c7b; /* vpcd's default, 35963 */
	int cfd = -1, c, rc = 1;
	bool inserted = true, told = false;
	GString *args = NULL;
	VCardEmulOptions *eopts;
	VReader *reader = NULL;
	char line[64];
	size_t linelen = 0;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			db = optarg;
			break;
		case 'p':
			port = (unsigned short)strtoul(optarg, NULL, 10);
			break;
		case 'r':
			reader_name = optarg;
			break;
		case 'l':
			logpath = optarg;
			break;
		default:
			usage();
		}
	}
	if (!db || optind >= argc)
		usage();
	if (logpath && !(apdu_log = fopen(logpath, "ae"))) {
		perror(logpath);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);

	/* soft=(NSS slot, reader name, card type, type params, certs...):
	 * an empty slot name is NSS's internal key slot, the database's */
	args = g_string_new(NULL);
	g_string_printf(args, "db=\"sql:%s\" use_hw=no soft=(,%s,CAC,", db, reader_name);
	for (int i = optind; i < argc; i++)
		g_string_append_printf(args, ",%s", argv[i]);
	g_string_append(args, ")");
	(void)g_thread_new("cacard-events", drain_events, NULL);
	eopts = vcard_emul_options(args->str);
	if (!eopts || vcard_emul_init(eopts) != VCARD_EMUL_OK) {
		fprintf(stderr, "cacard-vpcd: libcacard could not start on %s\n", db);
		goto out;
	}
	reader = vreader_get_reader_by_name(reader_name);
	if (!reader || vreader_card_is_present(reader) != VREADER_OK) {
		fprintf(stderr,
		        "cacard-vpcd: no card in reader %s (certificates %s... not in %s?)\n",
		        reader_name, argv[optind], db);
		goto out;
	}

	for (;;) {
		struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = -1, .events = POLLIN}};
		int timeout = -1;

		if (inserted && cfd < 0) {
			cfd = connect_to(port);
			if (cfd >= 0) {
				logmsg("connected to vpcd on 127.0.0.1:%u", port);
			} else {
				timeout = 100; /* pcscd not up yet, or between polls */
			}
		}
		if (cfd >= 0 && !told) {
			printf("inserted\n");
			fflush(stdout);
			told = true;
		}
		p[1].fd = cfd;
		if (poll(p, 2, timeout) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[0].revents) {
			ssize_t r = read(0, line + linelen, sizeof(line) - 1 - linelen);
			char *nl;

			if (r <= 0) {
				rc = 0;
				break;
			}
			linelen += (size_t)r;
			line[linelen] = '\0';
			while ((nl = strchr(line, '\n')) != NULL) {
				*nl = '\0';
				if (strcmp(line, "remove") == 0) {
					if (cfd >= 0)
						close(cfd);
					cfd = -1;
					inserted = false;
					logmsg("removed");
					printf("removed\n");
					fflush(stdout);
				} else if (strcmp(line, "insert") == 0 && !inserted) {
					inserted = true;
					told = false; /* "inserted" once connected */
					logmsg("inserting");
				}
				linelen -= (size_t)(nl + 1 - line);
				memmove(line, nl + 1, linelen + 1);
			}
			if (linelen == sizeof(line) - 1)
				linelen = 0; /* a line too long for any command */
			continue;
		}
		if (cfd >= 0 && p[1].revents && serve_one(cfd, reader) < 0) {
			/* vpcd went away (pcscd stopped): try again, as a card
			 * left in a reader would be seen by the next pcscd */
			close(cfd);
			cfd = -1;
			logmsg("vpcd closed the connection");
		}
	}
out:
	if (cfd >= 0)
		close(cfd);
	if (reader)
		vreader_free(reader);
	if (args)
		g_string_free(args, TRUE);
	return rc;
}
