/* engine-target: variants=dynamic-pie ; flags=-O2 ; args: [--connect PORT | --fill] ;
 * what: a half-closed loopback TCP connection: the client sent "bye" and
 *       shut its side (FIN_WAIT2), the server has not read (CLOSE_WAIT, the
 *       bytes and the FIN queued); after restore the server reads "bye"
 *       then end of file, still sends to the client, and the client sees
 *       the server's end of file after the server shuts down.
 *       --fill: the client first fills the queues, so its FIN waits behind
 *       unsent bytes (FIN_WAIT1); the server reads them all, then end of file.
 *       --connect PORT: only a client of 127.0.0.1:PORT (a peer outside the
 *       tree, for the test of what is refused) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include "target.h"

static int read_some(int fd, char *buf, int n)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	if (poll(&p, 1, 20000) != 1)
		return -2;
	return read(fd, buf, n);
}

static int state_of(int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);

	return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) ? -1 : ti.tcpi_state;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	char buf[64];

	tgt_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	if (tgt_argc > 2 && !strcmp(tgt_argv[1], "--connect")) {
		int c = socket(AF_INET, SOCK_STREAM, 0);
		a.sin_port = htons(atoi(tgt_argv[2]));
		if (connect(c, (void *)&a, sizeof(a)))
			tgt_die("connect: %m");
		tgt_ready();
		while (!tgt_stop)
			tgt_msleep(5);
		tgt_finish();
	}
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(l, (void *)&a, sizeof(a)) || listen(l, 1) || getsockname(l, (void *)&a, &al))
		tgt_die("listen: %m");
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (void *)&a, sizeof(a)))
		tgt_die("connect: %m");
	int s = accept(l, NULL, NULL);
	if (s < 0)
		tgt_die("accept: %m");
	if (tgt_argc > 1 && !strcmp(tgt_argv[1], "--fill")) {
		static char big[16 << 20], got[16 << 20];
		int sent = 0, r;
		for (int i = 0; i < (int)sizeof(big); i++)
			big[i] = (char)(i * 5 + i / 509);
		while ((r = send(c, big + sent, sizeof(big) - sent, MSG_DONTWAIT)) > 0)
			sent += r;
		if (shutdown(c, SHUT_WR))
			tgt_die("shutdown: %m");
		tgt_info("sent=%d", sent);
		tgt_info("state=%d", state_of(c));
		tgt_ready();
		while (!tgt_stop)
			tgt_msleep(5);
		int n = 0;
		while (n < sent && (r = read_some(s, got + n, sent - n)) > 0)
			n += r;
		tgt_check(n == sent && !memcmp(got, big, sent), "server read %d of %d", n, sent);
		tgt_check(read_some(s, got, 1) == 0, "no end of file after the bytes");
		tgt_finish();
	}
	if (write(c, "bye", 3) != 3 || shutdown(c, SHUT_WR))
		tgt_die("write/shutdown: %m");
	for (int i = 0; i < 200 && (state_of(c) != TCP_FIN_WAIT2 || state_of(s) != TCP_CLOSE_WAIT); i++)
		tgt_msleep(5);
	if (state_of(c) != TCP_FIN_WAIT2 || state_of(s) != TCP_CLOSE_WAIT)
		tgt_die("states %d/%d", state_of(c), state_of(s));
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	int n = read_some(s, buf, sizeof(buf));
	tgt_check(n == 3 && !memcmp(buf, "bye", 3), "server read %d, want bye", n);
	n = read_some(s, buf, sizeof(buf));
	tgt_check(n == 0, "server read %d after bye, want end of file", n);
	tgt_check(write(c, "x", 1) < 0 && errno == EPIPE, "client could write after shutdown");
	tgt_check(write(s, "reply", 5) == 5, "server write: %s", strerror(errno));
	n = read_some(c, buf, sizeof(buf));
	tgt_check(n == 5 && !memcmp(buf, "reply", 5), "client read %d, want reply", n);
	tgt_check(shutdown(s, SHUT_WR) == 0, "server shutdown: %s", strerror(errno));
	n = read_some(c, buf, sizeof(buf));
	tgt_check(n == 0, "client read %d, want end of file", n);
	tgt_finish();
}
