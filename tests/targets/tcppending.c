/* engine-target: variants=dynamic-pie ; flags=-O2 ; args: [--v6] ;
 * what: a listener with two connections not yet accepted, both clients in
 *       the task: one sent 3000 bytes, the other nothing; after restore
 *       the listener accepts both, the bytes arrive once and in order on the
 *       right one, and both talk both ways */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include "target.h"

static int port_of(int fd, int peer)
{
	struct sockaddr_storage a;
	socklen_t l = sizeof(a);

	if (peer ? getpeername(fd, (void *)&a, &l) : getsockname(fd, (void *)&a, &l))
		return -1;
	return ntohs(a.ss_family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port
					    : ((struct sockaddr_in6 *)&a)->sin6_port);
}

int main(int argc, char **argv)
{
	int family = AF_INET;
	struct sockaddr_storage a;
	socklen_t al;
	char pat[3000], buf[4000];

	tgt_init(argc, argv);
	if (tgt_argc > 1 && !strcmp(tgt_argv[1], "--v6"))
		family = AF_INET6;
	memset(&a, 0, sizeof(a));
	if (family == AF_INET) {
		((struct sockaddr_in *)&a)->sin_family = AF_INET;
		((struct sockaddr_in *)&a)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		al = sizeof(struct sockaddr_in);
	} else {
		((struct sockaddr_in6 *)&a)->sin6_family = AF_INET6;
		((struct sockaddr_in6 *)&a)->sin6_addr = in6addr_loopback;
		al = sizeof(struct sockaddr_in6);
	}
	for (int i = 0; i < (int)sizeof(pat); i++)
		pat[i] = (char)(i * 3 + i / 101);
	int c1 = socket(family, SOCK_STREAM, 0), c2 = socket(family, SOCK_STREAM, 0);
	int l = socket(family, SOCK_STREAM, 0);
	if (bind(l, (void *)&a, al) || listen(l, 8) || getsockname(l, (void *)&a, &al))
		tgt_die("listen: %m");
	if (connect(c1, (void *)&a, al) || connect(c2, (void *)&a, al))
		tgt_die("connect: %m");
	if (write(c1, pat, sizeof(pat)) != sizeof(pat))
		tgt_die("write: %m");
	tgt_info("port=%d", port_of(l, 0));
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	int s1 = -1, s2 = -1;
	for (int i = 0; i < 2; i++) {
		int s = accept(l, NULL, NULL);
		tgt_check(s >= 0, "accept %d: %s", i, strerror(errno));
		if (s >= 0 && port_of(s, 1) == port_of(c1, 0))
			s1 = s;
		else if (s >= 0 && port_of(s, 1) == port_of(c2, 0))
			s2 = s;
	}
	tgt_check(s1 >= 0 && s2 >= 0, "accepted connections are not the clients'");
	if (s1 >= 0 && s2 >= 0) {
		tgt_check(tgt_read_all(s1, buf, sizeof(pat)) == sizeof(pat) && !memcmp(buf, pat, sizeof(pat)),
			  "queued bytes lost or changed");
		tgt_check(recv(s1, buf, 1, MSG_DONTWAIT) < 0 && recv(s2, buf, 1, MSG_DONTWAIT) < 0,
			  "extra bytes");
		tgt_check(write(s1, "one", 3) == 3 && tgt_read_all(c1, buf, 3) == 3, "s1 -> c1");
		tgt_check(write(c2, "two", 3) == 3 && tgt_read_all(s2, buf, 3) == 3, "c2 -> s2");
		tgt_check(write(s2, "2", 1) == 1 && tgt_read_all(c2, buf, 1) == 1, "s2 -> c2");
	}
	tgt_finish();
}
