/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * args: [--v6 | --mapped] [--bytes N] [--expect-closed] ;
 * what: a loopback TCP listener and one established connection (both ends
 *       in the task) with data queued both ways, options set (NODELAY,
 *       keepalive knobs, linger, TOS/TTL, buffer sizes, a non-blocking
 *       end), an unbound TCP socket and a bound + a connected UDP socket;
 *       after restore every byte arrives once, in order, the options are
 *       as set, the pair still talks and the listener still accepts.
 *       --expect-closed (restored with --disable sk_inet): every inet fd is
 *       a socket of its type that is connected to nothing, the rest intact */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include "target.h"

static int family = AF_INET, mapped;
static socklen_t alen;
static struct sockaddr_storage lo;

static void loopback(void)
{
	memset(&lo, 0, sizeof(lo));
	if (family == AF_INET) {
		struct sockaddr_in *a = (void *)&lo;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		alen = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (void *)&lo;
		a->sin6_family = AF_INET6;
		if (mapped)
			inet_pton(AF_INET6, "::ffff:127.0.0.1", &a->sin6_addr);
		else
			a->sin6_addr = in6addr_loopback;
		alen = sizeof(*a);
	}
}

static int port_of(int fd)
{
	struct sockaddr_storage a;
	socklen_t l = sizeof(a);

	getsockname(fd, (void *)&a, &l);
	return ntohs(a.ss_family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port
					    : ((struct sockaddr_in6 *)&a)->sin6_port);
}

static void set_port(struct sockaddr_storage *a, int port)
{
	if (a->ss_family == AF_INET)
		((struct sockaddr_in *)a)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)a)->sin6_port = htons(port);
}

static int getint(int fd, int level, int opt)
{
	int v = -1;
	socklen_t l = sizeof(v);

	getsockopt(fd, level, opt, &v, &l);
	return v;
}

static void setint(int fd, int level, int opt, int v)
{
	if (setsockopt(fd, level, opt, &v, sizeof(v)))
		tgt_die("setsockopt %d/%d: %m", level, opt);
}

static int send_some(int fd, const char *buf, int n)
{
	int sent = 0;

	while (sent < n) {
		int r = send(fd, buf + sent, n - sent, MSG_DONTWAIT);
		if (r < 0 && errno == EAGAIN) {
			/* Let loopback move what it can, then stop at a full queue. */
			tgt_msleep(20);
			r = send(fd, buf + sent, n - sent, MSG_DONTWAIT);
			if (r < 0 && errno == EAGAIN)
				break;
		}
		if (r < 0)
			tgt_die("send: %m");
		sent += r;
	}
	return sent;
}

static void fill(char *buf, int n, int seed)
{
	for (int i = 0; i < n; i++)
		buf[i] = (char)(i * 7 + seed + i / 251);
}

int main(int argc, char **argv)
{
	int bytes = 5000, expect_closed = 0;
	struct linger lg = {.l_onoff = 1, .l_linger = 7};

	tgt_init(argc, argv);
	for (int i = 1; i < tgt_argc; i++) {
		if (!strcmp(tgt_argv[i], "--v6"))
			family = AF_INET6;
		else if (!strcmp(tgt_argv[i], "--mapped"))
			family = AF_INET6, mapped = 1;
		else if (!strcmp(tgt_argv[i], "--expect-closed"))
			expect_closed = 1;
		else if (!strcmp(tgt_argv[i], "--bytes") && i + 1 < tgt_argc)
			bytes = atoi(tgt_argv[++i]);
	}
	loopback();
	char *c2s = malloc(bytes), *s2c = malloc(bytes), *buf = malloc(bytes + 16);
	fill(c2s, bytes, 1);
	fill(s2c, bytes, 2);

	int l = socket(family, SOCK_STREAM, 0);
	setint(l, SOL_SOCKET, SO_REUSEADDR, 1);
	if (bind(l, (void *)&lo, alen) || listen(l, 5))
		tgt_die("listen: %m");
	struct sockaddr_storage srv = lo;
	set_port(&srv, port_of(l));
	int c = socket(family, SOCK_STREAM, 0);
	setint(c, SOL_SOCKET, SO_SNDBUF, 1 << 20);
	setint(c, SOL_SOCKET, SO_RCVBUF, 1 << 20);
	if (connect(c, (void *)&srv, alen))
		tgt_die("connect: %m");
	int s = accept(l, NULL, NULL);
	if (s < 0)
		tgt_die("accept: %m");
	setint(c, IPPROTO_TCP, TCP_NODELAY, 1);
	setint(s, SOL_SOCKET, SO_KEEPALIVE, 1);
	setint(s, IPPROTO_TCP, TCP_KEEPIDLE, 33);
	setint(s, IPPROTO_TCP, TCP_KEEPINTVL, 11);
	setint(s, IPPROTO_TCP, TCP_KEEPCNT, 4);
	if (setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)))
		tgt_die("linger: %m");
	if (family == AF_INET) {
		setint(c, IPPROTO_IP, IP_TOS, 0x10);
		setint(c, IPPROTO_IP, IP_TTL, 33);
	}
	fcntl(s, F_SETFL, O_NONBLOCK);
	/* Queue both ways, as much as fits (with a big --bytes the send queues
	 * fill too); the peer does not read yet. */
	int n_c2s = send_some(c, c2s, bytes), n_s2c = send_some(s, s2c, bytes);

	int unbound = socket(family, SOCK_STREAM, 0);
	int ub = socket(family, SOCK_DGRAM, 0), uc = socket(family, SOCK_DGRAM, 0);
	setint(ub, SOL_SOCKET, SO_REUSEPORT, 1);
	if (bind(ub, (void *)&lo, alen))
		tgt_die("udp bind: %m");
	if (family == AF_INET)
		setint(ub, IPPROTO_IP, IP_PKTINFO, 1);
	struct sockaddr_storage udst = lo;
	set_port(&udst, port_of(ub));
	if (connect(uc, (void *)&udst, alen))
		tgt_die("udp connect: %m");
	int ub_port = port_of(ub), uc_port = port_of(uc), l_port = port_of(l);
	/* What the handshake negotiated: TCP_REPAIR_OPTIONS must give it back. */
	struct tcp_info ti_c, ti_s;
	socklen_t til = sizeof(ti_c);
	getsockopt(c, IPPROTO_TCP, TCP_INFO, &ti_c, &til);
	til = sizeof(ti_s);
	getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti_s, &til);
	int mss_c = getint(c, IPPROTO_TCP, TCP_MAXSEG);
	tgt_info("port=%d", l_port);
	tgt_info("c2s=%d", n_c2s);
	tgt_info("s2c=%d", n_s2c);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	if (expect_closed) {
		struct sockaddr_storage peer;
		socklen_t pl = sizeof(peer);
		int fds[] = {l, c, s, unbound, ub, uc};

		signal(SIGPIPE, SIG_IGN);
		for (int i = 0; i < 6; i++)
			tgt_check(getint(fds[i], SOL_SOCKET, SO_DOMAIN) == family &&
				  getint(fds[i], SOL_SOCKET, SO_TYPE) == (i < 4 ? SOCK_STREAM : SOCK_DGRAM),
				  "fd %d is not a socket of its family and type", fds[i]);
		tgt_check(getpeername(c, (void *)&peer, &pl) < 0 && errno == ENOTCONN,
			  "client still connected");
		tgt_check(write(c, "x", 1) < 0 && read(s, buf, 1) < 0, "closed sockets carry data");
		tgt_check(port_of(l) == 0 && port_of(ub) == 0, "sockets bound again");
		fill(buf, bytes, 1);
		tgt_check(!memcmp(buf, c2s, bytes), "memory changed");
		tgt_finish();
	}
	tgt_check(tgt_read_all(s, buf, n_c2s) == n_c2s && !memcmp(buf, c2s, n_c2s),
		  "client->server data lost or changed (%d bytes sent)", n_c2s);
	tgt_check(tgt_read_all(c, buf, n_s2c) == n_s2c && !memcmp(buf, s2c, n_s2c),
		  "server->client data lost or changed (%d bytes sent)", n_s2c);
	tgt_check(recv(s, buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "extra data on server");
	tgt_check(recv(c, buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "extra data on client");
	tgt_check(write(c, "again", 5) == 5 && tgt_read_all(s, buf, 5) == 5 &&
		  !memcmp(buf, "again", 5), "c->s after restore");
	tgt_check(write(s, "back!", 5) == 5 && tgt_read_all(c, buf, 5) == 5 &&
		  !memcmp(buf, "back!", 5), "s->c after restore");
	tgt_check(getint(c, IPPROTO_TCP, TCP_NODELAY) == 1, "TCP_NODELAY lost");
	tgt_check(getint(s, SOL_SOCKET, SO_KEEPALIVE) == 1, "SO_KEEPALIVE lost");
	tgt_check(getint(s, IPPROTO_TCP, TCP_KEEPIDLE) == 33, "TCP_KEEPIDLE lost");
	tgt_check(getint(s, IPPROTO_TCP, TCP_KEEPINTVL) == 11, "TCP_KEEPINTVL lost");
	tgt_check(getint(s, IPPROTO_TCP, TCP_KEEPCNT) == 4, "TCP_KEEPCNT lost");
	tgt_check(getint(l, SOL_SOCKET, SO_REUSEADDR) == 1, "SO_REUSEADDR lost");
	/* Inherited from the listener; leaving repair mode must not clear it. */
	tgt_check(getint(s, SOL_SOCKET, SO_REUSEADDR) == 1, "accepted socket's SO_REUSEADDR lost");
	tgt_check(getint(c, SOL_SOCKET, SO_REUSEADDR) == 0, "client's SO_REUSEADDR appeared");
	tgt_check(getint(c, SOL_SOCKET, SO_SNDBUF) == 2 << 20, "SO_SNDBUF %d", getint(c, SOL_SOCKET, SO_SNDBUF));
	tgt_check(fcntl(s, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
	tgt_check(!(fcntl(c, F_GETFL) & O_NONBLOCK), "O_NONBLOCK appeared");
	struct linger got;
	socklen_t gl = sizeof(got);
	getsockopt(s, SOL_SOCKET, SO_LINGER, &got, &gl);
	tgt_check(got.l_onoff && got.l_linger == 7, "SO_LINGER lost");
	if (family == AF_INET) {
		tgt_check(getint(c, IPPROTO_IP, IP_TOS) == 0x10, "IP_TOS lost");
		tgt_check(getint(c, IPPROTO_IP, IP_TTL) == 33, "IP_TTL lost");
		tgt_check(getint(ub, IPPROTO_IP, IP_PKTINFO) == 1, "IP_PKTINFO lost");
	}
	tgt_check(port_of(l) == l_port && port_of(ub) == ub_port && port_of(uc) == uc_port,
		  "ports changed");
	tgt_check(getint(ub, SOL_SOCKET, SO_REUSEPORT) == 1, "SO_REUSEPORT lost");
	struct tcp_info now;
	socklen_t nl = sizeof(now);
	getsockopt(c, IPPROTO_TCP, TCP_INFO, &now, &nl);
	tgt_check(now.tcpi_options == ti_c.tcpi_options && now.tcpi_snd_wscale == ti_c.tcpi_snd_wscale &&
		  now.tcpi_rcv_wscale == ti_c.tcpi_rcv_wscale,
		  "client options %#x wscale %d/%d, were %#x %d/%d", now.tcpi_options,
		  now.tcpi_snd_wscale, now.tcpi_rcv_wscale, ti_c.tcpi_options,
		  ti_c.tcpi_snd_wscale, ti_c.tcpi_rcv_wscale);
	tgt_check((ti_c.tcpi_options & (TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE)) ==
		  (TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE), "loopback negotiated less");
	nl = sizeof(now);
	getsockopt(s, IPPROTO_TCP, TCP_INFO, &now, &nl);
	tgt_check(now.tcpi_options == ti_s.tcpi_options, "server options changed");
	/* Not the 536-byte default: what it was, or what TCP_MAXSEG can give
	 * (at most 32767, less the timestamp option) on loopback. */
	int mss_want = mss_c < 32767 - 12 ? mss_c : 32767 - 12;
	tgt_check(getint(c, IPPROTO_TCP, TCP_MAXSEG) >= mss_want, "MSS %d, was %d",
		  getint(c, IPPROTO_TCP, TCP_MAXSEG), mss_c);
	tgt_check(getint(unbound, SOL_SOCKET, SO_TYPE) == SOCK_STREAM && port_of(unbound) == 0,
		  "unbound socket");
	/* The listener accepts a new connection. */
	int n = socket(family, SOCK_STREAM, 0);
	tgt_check(connect(n, (void *)&srv, alen) == 0, "connect to restored listener: %s",
		  strerror(errno));
	int a = accept(l, NULL, NULL);
	tgt_check(a >= 0 && write(n, "new", 3) == 3 && tgt_read_all(a, buf, 3) == 3, "new connection");
	/* UDP: the connected socket reaches the bound one. */
	tgt_check(send(uc, "dgram", 5, 0) == 5, "udp send: %s", strerror(errno));
	struct pollfd p = {.fd = ub, .events = POLLIN};
	tgt_check(poll(&p, 1, 20000) == 1 && recv(ub, buf, 16, 0) == 5 && !memcmp(buf, "dgram", 5),
		  "udp datagram");
	tgt_finish();
}
