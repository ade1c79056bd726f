/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a tree that never holds still: the root (a child subreaper) has a
 *       runner child that forks and exits without pause (its live pid
 *       changes each time: a listing of the tree is stale at once, as a
 *       daemonizing loop makes it), and forks children of its own, each
 *       forking a grandchild that exits 7 and exiting 0 once it saw that.
 *       The root reaps them all. After restore it goes on: everything it
 *       reaps exited 0 and more came. --join PROCS: first joins the cgroup
 *       of that cgroup.procs file. */
#include "target.h"
#include <sys/prctl.h>

static void child(void)
{
	int status;
	pid_t kid = fork();

	if (kid < 0)
		_exit(2);
	if (kid == 0)
		_exit(7);
	if (waitpid(kid, &status, 0) != kid || !WIFEXITED(status) || WEXITSTATUS(status) != 7)
		_exit(3);
	_exit(0);
}

static void runner(void)
{
	setpgid(0, 0);
	for (;;) {
		pid_t next = fork();

		if (next > 0)
			_exit(0);      /* the next generation goes on */
		if (next < 0)
			usleep(1000);
	}
}

/* One child (waiting for it), then every one already gone. */
static long reap(long *bad)
{
	long n = 0;
	int status, flags = 0;

	while (waitpid(-1, &status, flags) > 0) {
		n++;
		flags = WNOHANG;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			(*bad)++;
	}
	return n;
}

int main(int argc, char **argv)
{
	long made = 0, bad = 0, reaped = 0, at_ready = 0;
	pid_t pid, run;

	tgt_init(argc, argv);
	if (tgt_arg("join", NULL)) {
		int fd = open(tgt_arg("join", NULL), O_WRONLY);

		if (fd < 0 || write(fd, "0", 1) != 1)
			tgt_die("join %s: %m", tgt_arg("join", NULL));
		close(fd);
	}
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
		tgt_die("PR_SET_CHILD_SUBREAPER: %m");
	run = fork();
	if (run < 0)
		tgt_die("fork: %m");
	if (run == 0)
		runner();
	setpgid(run, run);
	while (!tgt_stop) {
		pid = fork();
		if (pid < 0)
			tgt_die("fork: %m");
		if (pid == 0)
			child();
		made++;
		reaped += reap(&bad);
		if (!at_ready && reaped >= 200) {
			at_ready = reaped;
			tgt_ready();
		}
	}
	kill(-run, SIGKILL);
	/* the runner's last generation may be killed: not counted as bad */
	while (waitpid(-1, NULL, 0) > 0)
		;
	tgt_check(bad == 0, "%ld of what it reaped did not exit 0", bad);
	tgt_check(reaped - at_ready > 100, "only %ld reaped after ready", reaped - at_ready);
	tgt_finish();
}
