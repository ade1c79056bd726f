/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a parent with three children: one in the parent's session and
 *       group, one leading its own session (and a grandchild in that
 *       session and group), one leading its own process group; after
 *       restore the parent checks every pid, parent, session and group,
 *       then kills and reaps the children (so they are still its own) */
#include <sys/wait.h>
#include "target.h"

static pid_t spawn(int kind)
{
	pid_t pid = fork();

	if (pid < 0)
		tgt_die("fork: %m");
	if (pid)
		return pid;
	signal(SIGTERM, SIG_DFL);
	if (kind == 1) {
		setsid();
		if (fork() == 0) {      /* grandchild: same session, same group */
			for (;;)
				pause();
		}
	}
	if (kind == 2)
		setpgid(0, 0);
	for (;;)
		pause();
}

static pid_t ppid_of(pid_t pid)
{
	char buf[512];
	const char *f = tgt_proc_stat(pid, 4, buf, sizeof(buf));

	return f ? atoi(f) : -1;
}

static pid_t child_of(pid_t parent)
{
	/* The grandchild: the one process whose parent is `parent`. */
	char path[64];
	int pid;

	for (pid = 2; pid < 4194304; pid++) {
		snprintf(path, sizeof(path), "/proc/%d", pid);
		if (access(path, F_OK) == 0 && ppid_of(pid) == parent)
			return pid;
		if (pid > 100000)
			break;
	}
	return -1;
}

int main(int argc, char **argv)
{
	pid_t kids[3], grandchild, me, sid, pgid;
	pid_t k_sid[3], k_pgid[3], g_sid, g_pgid;
	int i, status;

	tgt_init(argc, argv);
	for (i = 0; i < 3; i++)
		kids[i] = spawn(i);
	tgt_msleep(100);
	grandchild = child_of(kids[1]);
	if (grandchild < 0)
		tgt_die("no grandchild");
	me = getpid();
	sid = getsid(0);
	pgid = getpgid(0);
	for (i = 0; i < 3; i++) {
		k_sid[i] = getsid(kids[i]);
		k_pgid[i] = getpgid(kids[i]);
	}
	g_sid = getsid(grandchild);
	g_pgid = getpgid(grandchild);
	tgt_check(k_sid[1] == kids[1] && k_pgid[2] == kids[2], "setup: sessions not as planned");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);

	tgt_check(getpid() == me && getsid(0) == sid && getpgid(0) == pgid,
		  "own ids %d/%d/%d, want %d/%d/%d", getpid(), getsid(0), getpgid(0), me, sid, pgid);
	for (i = 0; i < 3; i++) {
		tgt_check(ppid_of(kids[i]) == me, "child %d: parent %d, want %d",
			  kids[i], ppid_of(kids[i]), me);
		tgt_check(getsid(kids[i]) == k_sid[i], "child %d: session %d, want %d",
			  kids[i], getsid(kids[i]), k_sid[i]);
		tgt_check(getpgid(kids[i]) == k_pgid[i], "child %d: group %d, want %d",
			  kids[i], getpgid(kids[i]), k_pgid[i]);
	}
	tgt_check(ppid_of(grandchild) == kids[1], "grandchild %d: parent %d, want %d",
		  grandchild, ppid_of(grandchild), kids[1]);
	tgt_check(getsid(grandchild) == g_sid && getpgid(grandchild) == g_pgid,
		  "grandchild %d: session/group %d/%d, want %d/%d", grandchild,
		  getsid(grandchild), getpgid(grandchild), g_sid, g_pgid);
	kill(grandchild, SIGKILL);
	for (i = 0; i < 3; i++) {
		kill(kids[i], SIGKILL);
		tgt_check(waitpid(kids[i], &status, 0) == kids[i], "waitpid child %d: %m", kids[i]);
	}
	tgt_finish();
}
