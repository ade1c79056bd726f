/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a small rich tree for the fuzz test: a parent and a child sharing a
 *       pipe with bytes in it, a bound unix dgram socket with a datagram
 *       queued to itself, and a file deleted while open; after restore the
 *       child drains the pipe and the parent finds its datagram and its
 *       deleted file's bytes */
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include "target.h"

int main(int argc, char **argv)
{
	char path[PATH_MAX + 16], buf[64];
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int p[2], go[2], sk, fd, n, status;
	pid_t kid;

	tgt_init(argc, argv);
	if (pipe(p) || pipe(go) || write(p[1], "piped:7919", 10) != 10)
		tgt_die("pipe: %m");
	kid = fork();
	if (kid == 0) {
		char c;

		signal(SIGTERM, SIG_DFL);
		if (read(go[0], &c, 1) != 1)
			_exit(10);
		if (read(p[0], buf, 10) != 10 || memcmp(buf, "piped:7919", 10))
			_exit(11);
		_exit(0);
	}
	strcpy(a.sun_path, "mix.sock");              /* relative: in the cwd */
	sk = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (sk < 0 || bind(sk, (struct sockaddr *)&a, sizeof(a)) ||
	    sendto(sk, "dgram:31337", 11, 0, (struct sockaddr *)&a, sizeof(a)) != 11)
		tgt_die("unix socket: %m");
	snprintf(path, sizeof(path), "%s.ghost", tgt_result_path);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (fd < 0 || write(fd, "ghost:4242", 10) != 10 || unlink(path))
		tgt_die("ghost file: %m");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(write(go[1], "g", 1) == 1, "go: %m");
	tgt_check(waitpid(kid, &status, 0) == kid, "waitpid: %m");
	tgt_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %#x", status);
	n = recv(sk, buf, sizeof(buf), MSG_DONTWAIT);
	tgt_check(n == 11 && !memcmp(buf, "dgram:31337", 11), "datagram: %d bytes", n);
	n = pread(fd, buf, 10, 0);
	tgt_check(n == 10 && !memcmp(buf, "ghost:4242", 10), "deleted file: %d bytes", n);
	tgt_finish();
}
