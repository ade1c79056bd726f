/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: AF_UNIX stream, dgram and seqpacket socketpairs with messages
 *       queued both ways (boundaries kept for dgram and seqpacket), one end
 *       non-blocking, a larger send buffer; after restore every message is
 *       there once, in order, and the pairs still talk */
#include <sys/socket.h>
#include "target.h"

static void check_recv(int fd, const char *want, int len, const char *what)
{
	char buf[256];
	int n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

	tgt_check(n == len && !memcmp(buf, want, len), "%s: got %d bytes, want %d", what, n, len);
}

int main(int argc, char **argv)
{
	int s[2], d[2], q[2], sndbuf = 300000, got;
	socklen_t l = sizeof(got);

	tgt_init(argc, argv);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || socketpair(AF_UNIX, SOCK_DGRAM, 0, d) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q))
		tgt_die("socketpair: %m");
	setsockopt(s[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	fcntl(d[1], F_SETFL, O_NONBLOCK);
	if (write(s[0], "ping", 4) != 4 || write(s[1], "pong!", 5) != 5 ||
	    send(d[0], "m1", 2, 0) != 2 || send(d[0], "msg2", 4, 0) != 4 ||
	    send(d[1], "back", 4, 0) != 4 || send(q[0], "seq-1", 5, 0) != 5 ||
	    send(q[0], "seq-22", 6, 0) != 6)
		tgt_die("send: %m");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	check_recv(s[1], "ping", 4, "stream a->b");
	check_recv(s[0], "pong!", 5, "stream b->a");
	check_recv(d[1], "m1", 2, "dgram 1");
	check_recv(d[1], "msg2", 4, "dgram 2");
	check_recv(d[0], "back", 4, "dgram back");
	check_recv(q[1], "seq-1", 5, "seqpacket 1");
	check_recv(q[1], "seq-22", 6, "seqpacket 2");
	tgt_check(recv(d[1], &got, 1, MSG_DONTWAIT) < 0, "an extra datagram appeared");
	tgt_check(fcntl(d[1], F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
	getsockopt(s[0], SOL_SOCKET, SO_SNDBUF, &got, &l);
	tgt_check(got == 2 * sndbuf, "sndbuf %d, want %d", got, 2 * sndbuf);
	tgt_check(write(s[0], "again", 5) == 5, "stream write after restore");
	check_recv(s[1], "again", 5, "stream after restore");
	tgt_finish();
}
