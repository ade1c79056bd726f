/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a parent with eight children, two of them leading a group of
 *       their own; after restore each child is still the parent's
 *       (its ppid, and the parent's SIGCHLD and waitpid when it is
 *       killed), in the parent's session and in its dumped group */
#include <sys/wait.h>
#include "target.h"

#define KIDS 8

static long stat_field(pid_t pid, int n)
{
	char buf[512];
	const char *f = tgt_proc_stat(pid, n, buf, sizeof(buf));

	return f ? atol(f) : -1;
}

int main(int argc, char **argv)
{
	pid_t kids[KIDS];
	int i, status;

	tgt_init(argc, argv);
	for (i = 0; i < KIDS; i++) {
		kids[i] = fork();
		if (kids[i] < 0)
			tgt_die("fork: %m");
		if (kids[i] == 0) {
			signal(SIGTERM, SIG_DFL);
			if (i % 4 == 3)
				setpgid(0, 0);
			for (;;)
				pause();
		}
	}
	for (i = 0; i < KIDS; i++)     /* each has run its setpgid */
		while (stat_field(kids[i], 5) != (i % 4 == 3 ? kids[i] : getpgrp()))
			tgt_msleep(1);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	for (i = 0; i < KIDS; i++) {
		pid_t want_pgid = i % 4 == 3 ? kids[i] : getpgrp();

		tgt_check(stat_field(kids[i], 4) == getpid(), "child %d: ppid %ld, want %d",
			  kids[i], stat_field(kids[i], 4), getpid());
		tgt_check(stat_field(kids[i], 5) == want_pgid, "child %d: pgid %ld, want %d",
			  kids[i], stat_field(kids[i], 5), want_pgid);
		tgt_check(stat_field(kids[i], 6) == getsid(0), "child %d: sid %ld, want %d",
			  kids[i], stat_field(kids[i], 6), getsid(0));
		kill(kids[i], SIGKILL);
		tgt_check(waitpid(kids[i], &status, 0) == kids[i], "waitpid %d: %m", kids[i]);
		tgt_check(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
			  "child %d: status %#x", kids[i], status);
	}
	tgt_finish();
}
