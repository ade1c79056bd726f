/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ; needs=root ;
 * what: file owners for SIGIO (F_SETOWN_EX, F_SETSIG, O_ASYNC) kept per open file:
 *       a pipe read end owned by this process with O_ASYNC and SIGUSR1 (a
 *       write after restore delivers SIGUSR1 to us), a file owned by our
 *       process group, and a file whose owner was set while the effective
 *       uid was 1000 (F_GETOWNER_UIDS must still say 1000, not the root
 *       of the restore: its signals keep uid 1000's permission) */
#include "target.h"
#include <sys/stat.h>

#ifndef F_GETOWNER_UIDS
#define F_GETOWNER_UIDS 17
#endif

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1++;
}

static void own(int fd, int type, pid_t pid, const char *what)
{
	struct f_owner_ex o = { .type = type, .pid = pid };

	if (fcntl(fd, F_SETOWN_EX, &o))
		tgt_die("%s: F_SETOWN_EX: %m", what);
}

static void check_owner(int fd, int type, pid_t pid, uid_t uid, int sig, const char *what)
{
	struct f_owner_ex o = { 0 };
	unsigned int uids[2] = { 99, 99 };
	int s;

	tgt_check(!fcntl(fd, F_GETOWN_EX, &o) && o.type == type && o.pid == pid,
		  "%s: owner %d:%d, want %d:%d", what, o.type, o.pid, type, pid);
	tgt_check(!fcntl(fd, F_GETOWNER_UIDS, uids) && uids[0] == uid && uids[1] == uid,
		  "%s: owner uids %u/%u, want %u", what, uids[0], uids[1], uid);
	s = fcntl(fd, F_GETSIG);
	tgt_check(s == sig, "%s: F_GETSIG %d, want %d", what, s, sig);
}

int main(int argc, char **argv)
{
	char path[PATH_MAX + 16];
	int p[2], fd_grp, fd_uid, fl_grp, i;
	struct sigaction sa;

	tgt_init(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		tgt_die("sigaction: %m");
	if (pipe(p))
		tgt_die("pipe: %m");
	own(p[0], F_OWNER_PID, getpid(), "pipe");
	if (fcntl(p[0], F_SETSIG, SIGUSR1) ||
	    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_ASYNC | O_NONBLOCK))
		tgt_die("pipe: F_SETSIG / O_ASYNC: %m");
	snprintf(path, sizeof(path), "%s.data", tgt_result_path);
	fd_grp = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	fd_uid = open(path, O_RDONLY);
	if (fd_grp < 0 || fd_uid < 0)
		tgt_die("open: %m");
	own(fd_grp, F_OWNER_PGRP, getpgrp(), "file");
	/* A regular file may not keep O_ASYNC (no ->fasync): whatever F_GETFL
	 * says now, it must say after restore. */
	if (fcntl(fd_grp, F_SETFL, fcntl(fd_grp, F_GETFL) | O_ASYNC))
		tgt_die("file: O_ASYNC: %m");
	fl_grp = fcntl(fd_grp, F_GETFL);
	/* The owner's uids are the caller's at F_SETOWN time. */
	if (setresuid(1000, 1000, 0))
		tgt_die("setresuid 1000: %m");
	own(fd_uid, F_OWNER_TID, getpid(), "file as 1000");
	if (setresuid(0, 0, 0))
		tgt_die("setresuid back: %m");
	if (write(p[1], "x", 1) != 1)
		tgt_die("write: %m");
	for (i = 0; i < 100 && !got_usr1; i++)
		tgt_msleep(10);
	if (!got_usr1)
		tgt_die("no SIGUSR1 before the dump");
	{
		char c;

		if (read(p[0], &c, 1) != 1)
			tgt_die("read: %m");
	}

	tgt_ready();
	tgt_wait_stop();

	check_owner(p[0], F_OWNER_PID, getpid(), 0, SIGUSR1, "pipe");
	tgt_check(fcntl(p[0], F_GETFL) & O_ASYNC, "pipe: O_ASYNC lost");
	check_owner(fd_grp, F_OWNER_PGRP, getpgrp(), 0, 0, "file");
	tgt_check(fcntl(fd_grp, F_GETFL) == fl_grp, "file: F_GETFL %#x, was %#x",
		  fcntl(fd_grp, F_GETFL), fl_grp);
	tgt_check(!(fcntl(fd_uid, F_GETFL) & O_ASYNC), "file as 1000: O_ASYNC gained");
	check_owner(fd_uid, F_OWNER_TID, getpid(), 1000, 0, "file as 1000");
	got_usr1 = 0;
	tgt_check(write(p[1], "y", 1) == 1, "pipe: write: %m");
	for (i = 0; i < 500 && !got_usr1; i++)
		tgt_msleep(10);
	tgt_check(got_usr1, "pipe: no SIGUSR1 after a write (owner or O_ASYNC lost)");
	tgt_finish();
}
