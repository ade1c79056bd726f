/* engine-target: variants=dynamic-pie ; flags=-O2 ; needs=root ;
 * what: a loopback TCP connection whose client socket was made under
 *       setfsuid(1337) (its owner, sk_uid, is 1337; the server end is
 *       root's); after restore /proc/net/tcp still shows uid 1337 for the
 *       client and 0 for the server, and the client still sends (the test
 *       counts its packets with an nft `meta skuid 1337` rule) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/fsuid.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include "target.h"

/* The uid column of /proc/net/tcp for the socket on `fd`, or -1. */
static long owner(int fd)
{
	struct stat st;
	char line[512];
	long found = -1;
	FILE *f = fopen("/proc/net/tcp", "r");

	if (fstat(fd, &st) || !f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long uid, ino;
		if (sscanf(line, "%*s %*s %*s %*s %*s %*s %*s %lu %*s %lu", &uid, &ino) == 2 &&
		    ino == st.st_ino)
			found = uid;
	}
	fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	char buf[16];

	tgt_init(argc, argv);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(l, (void *)&a, sizeof(a)) || listen(l, 1) || getsockname(l, (void *)&a, &al))
		tgt_die("listen: %m");
	setfsuid(1337);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	setfsuid(0);
	if (c < 0 || connect(c, (void *)&a, sizeof(a)))
		tgt_die("connect: %m");
	int s = accept(l, NULL, NULL);
	if (s < 0 || write(c, "before", 6) != 6)
		tgt_die("accept/write: %m");
	if (owner(c) != 1337)
		tgt_die("client owner is %ld before the dump", owner(c));
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(owner(c) == 1337, "client socket owner is %ld, want 1337", owner(c));
	tgt_check(owner(s) == 0, "server socket owner is %ld, want 0", owner(s));
	tgt_check(read(s, buf, sizeof(buf)) == 6 && !memcmp(buf, "before", 6), "queued data");
	tgt_check(write(c, "after", 5) == 5 && read(s, buf, sizeof(buf)) == 5 &&
		  !memcmp(buf, "after", 5), "data after restore");
	tgt_finish();
}
