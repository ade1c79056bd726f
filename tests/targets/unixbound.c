/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: named AF_UNIX sockets: a stream listener on a relative path with an
 *       accepted connection (data queued both ways) and a connection not yet
 *       accepted; a seqpacket listener on an abstract name with a pending
 *       connection; a dgram server (SO_PASSCRED, bigger SO_RCVBUF) with a
 *       connected client and an unconnected one queueing to it, and a named
 *       client holding the server's reply; a dgram socket
 *       whose path was deleted after bind, with a queued message; a stream
 *       pair shut down for writing one way; a pair whose peer was closed with
 *       bytes left; a dgram pair with SO_PEEK_OFF moved. After restore names,
 *       peers, queues, boundaries, options and shutdowns are as they were and
 *       every connection still talks (the pending ones once accepted). */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <stddef.h>
#include "target.h"

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (abstract) {
		memcpy(a->sun_path + 1, name, strlen(name));
		return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
	}
	strcpy(a->sun_path, name);
	return offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1;
}

static int sock(int type, const char *name, int abstract)
{
	struct sockaddr_un a;
	int fd = socket(AF_UNIX, type, 0);

	if (fd < 0)
		tgt_die("socket: %m");
	if (name && bind(fd, (struct sockaddr *)&a, mkaddr(&a, name, abstract)))
		tgt_die("bind %s: %m", name);
	return fd;
}

static void conn(int fd, const char *name, int abstract)
{
	struct sockaddr_un a;

	if (connect(fd, (struct sockaddr *)&a, mkaddr(&a, name, abstract)))
		tgt_die("connect %s: %m", name);
}

static void check_recv(int fd, const char *want, const char *what)
{
	char buf[256];
	int len = strlen(want), n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

	tgt_check(n == len && !memcmp(buf, want, len), "%s: got %d bytes (%.*s), want %s",
		  what, n, n > 0 ? n : 0, buf, want);
}

static void check_name(int fd, int peer, const char *want, int abstract, const char *what)
{
	struct sockaddr_un a, w;
	socklen_t l = sizeof(a), wl = mkaddr(&w, want, abstract);

	memset(&a, 0, sizeof(a));
	if (peer ? getpeername(fd, (struct sockaddr *)&a, &l) : getsockname(fd, (struct sockaddr *)&a, &l)) {
		tgt_check(0, "%s: %m", what);
		return;
	}
	/* A path name may come back with or without its trailing NUL. */
	tgt_check((l == wl || (!abstract && l == wl - 1)) && !memcmp(&a, &w, l),
		  "%s: name %.*s (len %u), want %s", what, (int)(l - 2), a.sun_path + abstract,
		  l, want);
}

static int getopt_int(int fd, int opt)
{
	int v = -7;
	socklen_t l = sizeof(v);

	getsockopt(fd, SOL_SOCKET, opt, &v, &l);
	return v;
}

static void talk(int a, int b, const char *what)
{
	char buf[64];

	tgt_check(send(a, "x-talk", 6, 0) == 6, "%s: send: %m", what);
	tgt_check(recv(b, buf, sizeof(buf), 0) == 6 && !memcmp(buf, "x-talk", 6), "%s: recv", what);
}

int main(int argc, char **argv)
{
	char abstract[64], dgram_path[PATH_MAX], gone_path[PATH_MAX], buf[64];
	int lst, c1, a1, c2, alst, c3, srv, d1, d2, cli, gone, g2, sh[2], dead[2], pk[2];
	int one = 1, rcvbuf = 123456, zero = 0;
	struct sockaddr_un a;

	tgt_init(argc, argv);
	snprintf(abstract, sizeof(abstract), "engine-unixbound-%d", getpid());
	if (!getcwd(dgram_path, sizeof(dgram_path) - 16))
		tgt_die("getcwd: %m");
	strcpy(gone_path, dgram_path);
	strcat(dgram_path, "/dgram.sock");
	strcat(gone_path, "/gone.sock");

	lst = sock(SOCK_STREAM, "listen.sock", 0);          /* relative name */
	if (listen(lst, 7))
		tgt_die("listen: %m");
	c1 = sock(SOCK_STREAM, NULL, 0);
	conn(c1, "listen.sock", 0);
	a1 = accept(lst, NULL, NULL);
	c2 = sock(SOCK_STREAM, NULL, 0);
	conn(c2, "listen.sock", 0);                         /* left pending */
	fcntl(c2, F_SETFL, O_NONBLOCK);
	if (send(c1, "to-server", 9, 0) != 9 || send(a1, "to-client", 9, 0) != 9)
		tgt_die("send: %m");

	alst = sock(SOCK_SEQPACKET, abstract, 1);
	if (listen(alst, 3))
		tgt_die("listen: %m");
	c3 = sock(SOCK_SEQPACKET, NULL, 0);
	conn(c3, abstract, 1);                              /* left pending */

	srv = sock(SOCK_DGRAM, dgram_path, 0);
	setsockopt(srv, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
	setsockopt(srv, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	d1 = sock(SOCK_DGRAM, NULL, 0);
	conn(d1, dgram_path, 0);
	d2 = sock(SOCK_DGRAM, NULL, 0);
	if (send(d1, "d1-a", 4, 0) != 4 || send(d1, "d1-bb", 5, 0) != 5 ||
	    sendto(d2, "d2", 2, 0, (struct sockaddr *)&a, mkaddr(&a, dgram_path, 0)) != 2)
		tgt_die("dgram send: %m");

	/* a named client the server answered: its queue is refilled by the server */
	cli = sock(SOCK_DGRAM, "cli.sock", 0);
	conn(cli, dgram_path, 0);
	if (sendto(srv, "reply", 5, 0, (struct sockaddr *)&a, mkaddr(&a, "cli.sock", 0)) != 5)
		tgt_die("reply: %m");

	gone = sock(SOCK_DGRAM, gone_path, 0);
	g2 = sock(SOCK_DGRAM, NULL, 0);
	conn(g2, gone_path, 0);
	if (send(g2, "ghost", 5, 0) != 5 || unlink(gone_path))
		tgt_die("gone: %m");

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sh) || socketpair(AF_UNIX, SOCK_STREAM, 0, dead) ||
	    socketpair(AF_UNIX, SOCK_DGRAM, 0, pk))
		tgt_die("socketpair: %m");
	if (send(sh[0], "last", 4, 0) != 4 || shutdown(sh[0], SHUT_WR))
		tgt_die("shutdown: %m");
	if (send(dead[0], "bye", 3, 0) != 3)
		tgt_die("send: %m");
	close(dead[0]);
	setsockopt(pk[1], SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero));
	if (send(pk[0], "abc", 3, 0) != 3 || send(pk[0], "defg", 4, 0) != 4 ||
	    recv(pk[1], buf, sizeof(buf), MSG_PEEK) != 3)
		tgt_die("peek: %m");
	tgt_info("srv=%d", srv);
	tgt_info("pending=%d", c2);
	tgt_ready();

	tgt_wait_stop();
	/* names */
	check_name(lst, 0, "listen.sock", 0, "listener name");
	check_name(a1, 0, "listen.sock", 0, "accepted name");
	check_name(c1, 1, "listen.sock", 0, "client peer name");
	check_name(alst, 0, abstract, 1, "abstract listener name");
	check_name(srv, 0, dgram_path, 0, "dgram server name");
	check_name(d1, 1, dgram_path, 0, "dgram client peer name");
	check_name(gone, 0, gone_path, 0, "deleted name");
	tgt_check(access(gone_path, F_OK) && errno == ENOENT, "deleted path is back");
	tgt_check(getopt_int(lst, SO_ACCEPTCONN) == 1, "listener does not listen");
	/* queues */
	check_recv(a1, "to-server", "accepted queue");
	check_recv(c1, "to-client", "client queue");
	talk(c1, a1, "accepted pair");
	talk(a1, c1, "accepted pair back");
	check_recv(srv, "d1-a", "dgram 1");
	check_recv(srv, "d1-bb", "dgram 2");
	check_recv(srv, "d2", "dgram 3");
	talk(d1, srv, "dgram client");
	check_recv(cli, "reply", "named client queue");
	check_name(cli, 1, dgram_path, 0, "named client peer name");
	check_recv(gone, "ghost", "deleted socket queue");
	talk(g2, gone, "deleted socket");
	/* pending connections, accepted now */
	a1 = accept(lst, NULL, NULL);
	tgt_check(a1 >= 0, "accept pending: %m");
	tgt_check(fcntl(c2, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
	talk(a1, c2, "pending stream");
	talk(c2, a1, "pending stream back");
	a1 = accept(alst, NULL, NULL);
	tgt_check(a1 >= 0, "accept pending seqpacket: %m");
	talk(c3, a1, "pending seqpacket");
	/* options */
	tgt_check(getopt_int(srv, SO_PASSCRED) == 1, "SO_PASSCRED lost");
	tgt_check(getopt_int(srv, SO_RCVBUF) == 2 * rcvbuf, "rcvbuf %d", getopt_int(srv, SO_RCVBUF));
	tgt_check(getopt_int(pk[1], SO_PEEK_OFF) == 3, "peek off %d", getopt_int(pk[1], SO_PEEK_OFF));
	check_recv(pk[1], "abc", "peek pair 1");
	check_recv(pk[1], "defg", "peek pair 2");
	/* shutdowns */
	check_recv(sh[1], "last", "shut pair data");
	tgt_check(recv(sh[1], buf, sizeof(buf), MSG_DONTWAIT) == 0, "no EOF after shutdown");
	tgt_check(send(sh[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "shut end still writes");
	talk(sh[1], sh[0], "shut pair other way");
	check_recv(dead[1], "bye", "closed peer data");
	tgt_check(recv(dead[1], buf, sizeof(buf), MSG_DONTWAIT) == 0, "no EOF from closed peer");
	tgt_finish();
}
