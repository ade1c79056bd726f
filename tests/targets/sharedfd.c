/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a file opened once and inherited by a child (one open file
 *       description: one offset for both), and a pipe inherited by the
 *       child with unread bytes in it; after restore the child reads from
 *       both, and the parent sees the shared offset move and the pipe drained */
#include <sys/wait.h>
#include "target.h"

int main(int argc, char **argv)
{
	char path[PATH_MAX + 16], buf[256];
	int fd, p[2], i, status, go[2];
	pid_t kid;

	tgt_init(argc, argv);
	snprintf(path, sizeof(path), "%s.data", tgt_result_path);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	for (i = 0; i < 256; i++)
		buf[i] = (char)i;
	if (fd < 0 || write(fd, buf, 256) != 256 || lseek(fd, 100, SEEK_SET) != 100)
		tgt_die("data file: %m");
	if (pipe(p) || pipe(go) || write(p[1], "queued!", 7) != 7)
		tgt_die("pipe: %m");
	kid = fork();
	if (kid == 0) {
		char c;

		signal(SIGTERM, SIG_DFL);
		/* Wait for the parent's go, after the restore. */
		if (read(go[0], &c, 1) != 1)
			_exit(10);
		if (read(fd, buf, 10) != 10 || buf[0] != 100)
			_exit(11);
		if (read(p[0], buf, 7) != 7 || memcmp(buf, "queued!", 7))
			_exit(12);
		_exit(0);
	}
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(write(go[1], "g", 1) == 1, "go: %m");
	tgt_check(waitpid(kid, &status, 0) == kid, "waitpid: %m");
	tgt_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed: status %#x", status);
	tgt_check(lseek(fd, 0, SEEK_CUR) == 110, "offset %ld: not shared with the child",
		  (long)lseek(fd, 0, SEEK_CUR));
	tgt_finish();
}
