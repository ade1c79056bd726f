/* engine-target: variants=dynamic-pie ; flags=-O2 ; args: --peer PATH ;
 * what: a dgram socket connected to a named socket outside the dumped tree
 *       (dumped with --ext-unix-sk); after restore it is connected to that
 *       name again and what it sends arrives there. Without --peer it binds
 *       the peer itself (peer.sock), so it also runs alone. */
#include <sys/socket.h>
#include <sys/un.h>
#include "target.h"

int main(int argc, char **argv)
{
	struct sockaddr_un a, got;
	socklen_t l = sizeof(got);
	int fd, own = -1;

	tgt_init(argc, argv);
	memset(&a, 0, sizeof(a));
	a.sun_family = AF_UNIX;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", tgt_arg("peer", "peer.sock"));
	if (!tgt_arg("peer", NULL)) {
		own = socket(AF_UNIX, SOCK_DGRAM, 0);
		if (bind(own, (struct sockaddr *)&a, sizeof(a)))
			tgt_die("bind %s: %m", a.sun_path);
	}
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
		tgt_die("connect %s: %m", a.sun_path);
	if (send(fd, "before", 6, 0) != 6)
		tgt_die("send: %m");
	tgt_ready();

	tgt_wait_stop();
	memset(&got, 0, sizeof(got));
	tgt_check(!getpeername(fd, (struct sockaddr *)&got, &l) &&
		  !strcmp(got.sun_path, a.sun_path), "peer name %s", got.sun_path);
	tgt_check(send(fd, "after", 5, 0) == 5, "send after restore: %m");
	if (own >= 0)
		close(own);
	tgt_finish();
}
