/* engine-target: variants=dynamic-pie ; flags=-O2 ; args: [--conns N] [--bytes B] ;
 * what: N established loopback TCP connections (both ends in the task), each
 *       with up to B bytes queued client->server; after restore every
 *       connection delivers its bytes once, in order, and still talks
 *       (bench/tcp.py times it) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include "target.h"

#define MAXC 1024

int main(int argc, char **argv)
{
	int conns = 100, bytes = 65536, c[MAXC], s[MAXC], sent[MAXC];
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);

	tgt_init(argc, argv);
	for (int i = 1; i + 1 < tgt_argc; i++) {
		if (!strcmp(tgt_argv[i], "--conns"))
			conns = atoi(tgt_argv[++i]);
		else if (!strcmp(tgt_argv[i], "--bytes"))
			bytes = atoi(tgt_argv[++i]);
	}
	if (conns > MAXC)
		tgt_die("at most %d connections", MAXC);
	char *pat = malloc(bytes + 1), *buf = malloc(bytes + 1);
	for (int i = 0; i < bytes; i++)
		pat[i] = (char)(i * 13 + i / 253);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(l, (void *)&a, sizeof(a)) || listen(l, 128) || getsockname(l, (void *)&a, &al))
		tgt_die("listen: %m");
	for (int i = 0; i < conns; i++) {
		c[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(c[i], (void *)&a, sizeof(a)))
			tgt_die("connect: %m");
		s[i] = accept(l, NULL, NULL);
		if (s[i] < 0)
			tgt_die("accept: %m");
		sent[i] = 0;
		while (sent[i] < bytes) {
			int r = send(c[i], pat + sent[i], bytes - sent[i], MSG_DONTWAIT);
			if (r <= 0)
				break;
			sent[i] += r;
		}
	}
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	for (int i = 0; i < conns; i++) {
		int got = tgt_read_all(s[i], buf, sent[i]);
		tgt_check(got == sent[i] && !memcmp(buf, pat, got), "connection %d: %d of %d bytes",
			  i, got, sent[i]);
		tgt_check(write(s[i], "ok", 2) == 2 && read(c[i], buf, 2) == 2, "connection %d talks", i);
	}
	tgt_finish();
}
