/* engine-target: variants=dynamic-pie ; flags=-O2 ; args: --kib N --dgram ;
 * what: a socketpair whose queue holds N KiB (default 1024) of a known pattern,
 *       in 64 KiB writes (datagrams with --dgram), with a send buffer set big
 *       enough (within net.core.wmem_max); after restore every byte is back
 *       in order, the datagram boundaries kept, and nothing more */
#include <sys/socket.h>
#include "target.h"

#define CHUNK 65536

static unsigned char pattern(long i)
{
	return (i * 7 + i / 4096) & 0xff;
}

int main(int argc, char **argv)
{
	static unsigned char buf[CHUNK];
	long total, done = 0, i;
	int s[2], sndbuf, dgram, n;

	tgt_init(argc, argv);
	total = tgt_arg_long("kib", 1024) * 1024;
	dgram = tgt_flag("dgram");
	if (socketpair(AF_UNIX, dgram ? SOCK_DGRAM : SOCK_STREAM, 0, s))
		tgt_die("socketpair: %m");
	sndbuf = total;                     /* the kernel doubles it: room for overheads */
	if (setsockopt(s[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)))
		tgt_die("SO_SNDBUF: %m");
	while (done < total) {
		for (i = 0; i < CHUNK; i++)
			buf[i] = pattern(done + i);
		n = send(s[0], buf, CHUNK, MSG_DONTWAIT);
		if (n != CHUNK)
			tgt_die("send at %ld: %d: %m", done, n);
		done += n;
	}
	tgt_info("receiver=%d", s[1]);
	tgt_ready();

	tgt_wait_stop();
	for (done = 0; done < total && !tgt_failed(); done += n) {
		n = recv(s[1], buf, CHUNK, MSG_DONTWAIT);
		if (!tgt_check(n > 0, "queue ends at %ld of %ld bytes", done, total))
			break;
		tgt_check(!dgram || n == CHUNK, "datagram of %d bytes at %ld", n, done);
		for (i = 0; i < n; i++)
			if (!tgt_check(buf[i] == pattern(done + i), "byte %ld differs", done + i))
				break;
	}
	tgt_check(recv(s[1], buf, 1, MSG_DONTWAIT) < 0, "more bytes than were queued");
	tgt_finish();
}
