/* engine-target: variants=dynamic-pie ; flags=-O2 ; args: [--shared] ;
 * what: the two ends of a loopback TCP connection in two tasks (the child
 *       holds the client, the parent the listener and the accepted end),
 *       data queued both ways; after restore the child, woken through a
 *       pipe, reads its bytes and answers; the parent reads its bytes and
 *       the answer, and reaps the child with status 0. --shared: the child
 *       keeps the listener and the accepted end too (one socket, two tasks) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include "target.h"

int main(int argc, char **argv)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int wake[2];
	char buf[64];

	tgt_init(argc, argv);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(l, (void *)&a, sizeof(a)) || listen(l, 1) || getsockname(l, (void *)&a, &al))
		tgt_die("listen: %m");
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (void *)&a, sizeof(a)) || pipe(wake))
		tgt_die("connect: %m");
	int s = accept(l, NULL, NULL);
	if (s < 0 || write(s, "from-parent", 11) != 11)
		tgt_die("accept/write: %m");
	pid_t child = fork();
	if (child < 0)
		tgt_die("fork: %m");
	if (child == 0) {
		if (!(tgt_argc > 1 && !strcmp(tgt_argv[1], "--shared"))) {
			close(s);
			close(l);
		}
		close(wake[1]);
		if (write(c, "from-child", 10) != 10)
			_exit(10);
		/* Sleep in read until the parent, SIGTERMed after restore, wakes us. */
		if (read(wake[0], buf, 1) != 1)
			_exit(11);
		if (tgt_read_all(c, buf, 11) != 11 || memcmp(buf, "from-parent", 11))
			_exit(12);
		if (write(c, "child-ok", 8) != 8)
			_exit(13);
		_exit(0);
	}
	close(c);
	close(wake[0]);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	int status = -1;
	tgt_check(write(wake[1], "x", 1) == 1, "wake child");
	tgt_check(tgt_read_all(s, buf, 10) == 10 && !memcmp(buf, "from-child", 10), "child's bytes");
	tgt_check(tgt_read_all(s, buf, 8) == 8 && !memcmp(buf, "child-ok", 8), "child's answer");
	tgt_check(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
		  WEXITSTATUS(status) == 0, "child status %#x", status);
	tgt_finish();
}
