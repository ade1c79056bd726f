/* engine-target: needs=root ; flags=-O2 -pthread ;
 * args: --nested 1 (A unshares CLONE_NEWPID before forking A1, which is
 *       then pid 1 of a namespace below I's: pid 200 in I's, 1 in its own),
 *       --thread 1 (I starts a thread) or --outside 1 (I stays in the
 *       session of the process that started it): refused at dump ;
 * what: the init of a pid namespace of its own, as a container's: the
 *       started process unshares CLONE_NEWPID and forks I (pid 1 there),
 *       reports I's host pid (init=) and waits for it. I makes its own
 *       session, forks A at pid 100 (ns_last_pid 99), which makes its own
 *       group and forks A1 at pid 200, then forks Z at pid 300, which exits
 *       with 7 and stays a zombie. After restore (SIGTERM to I) each checks
 *       its own pid, parent, group and session in the namespace; I reaps
 *       A's verdict (its exit status, A1's in it) and Z's status 7. */
#include "target.h"
#include <pthread.h>
#include <sched.h>
#include <sys/wait.h>

#define PID_A 100
#define PID_A1 200
#define PID_Z 300
#define ZOMBIE_STATUS 7

static void set_last_pid(int last)
{
	char buf[16];
	int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY);

	snprintf(buf, sizeof(buf), "%d", last);
	if (fd < 0 || write(fd, buf, strlen(buf)) < 0)
		tgt_die("ns_last_pid: %m");
	close(fd);
}

static pid_t fork_at(int pid)
{
	pid_t got;

	set_last_pid(pid - 1);
	got = fork();
	if (got < 0)
		tgt_die("fork: %m");
	if (got > 0 && got != pid)
		tgt_die("fork gave pid %d, not %d", got, pid);
	return got;
}

static int nested, thread, outside;

static void *idle(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

static void wait_term(void)
{
	while (!tgt_stop)
		tgt_msleep(5);
}

/* A task under I: exits 0 when its ids are as made, else 1. */
static int ids_ok(pid_t pid, pid_t ppid, pid_t pgid, pid_t sid)
{
	return getpid() == pid && getppid() == ppid && getpgrp() == pgid && getsid(0) == sid;
}

/* Its NSpid ends with its pid in I's namespace and in its own. */
static int nspid_ends(const char *want)
{
	char status[4096], *line;
	int fd, n;

	fd = open("/proc/self/status", O_RDONLY);
	n = read(fd, status, sizeof(status) - 1);
	close(fd);
	status[n > 0 ? n : 0] = 0;
	line = strstr(status, "NSpid:");
	if (!line)
		return 0;
	line[strcspn(line, "\n")] = 0;
	n = strlen(line) - strlen(want);
	return n > 0 && !strcmp(line + n, want);
}

static void __attribute__((noreturn)) run_a1(int ready)
{
	int ok;

	close(ready);
	if (nested) {
		/* Its own stdio: a restore cannot pass a file into a namespace
		 * from a task outside it (plugins/pidns). */
		int fd = open("/dev/null", O_RDWR);

		dup2(fd, 0), dup2(fd, 1), dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	wait_term();
	if (nested)	/* its parent, group and session lie outside its namespace */
		ok = ids_ok(1, 0, 0, 0) && nspid_ends("\t200\t1");
	else
		ok = ids_ok(PID_A1, PID_A, PID_A, 1) && nspid_ends("\t200");
	_exit(ok ? 0 : 1);
}

static void __attribute__((noreturn)) run_a(int ready)
{
	int status, ok;
	pid_t a1;

	if (setpgid(0, 0))
		_exit(2);
	if (nested && unshare(CLONE_NEWPID))
		_exit(3);
	a1 = fork_at(PID_A1);
	if (a1 == 0)
		run_a1(ready);
	close(ready);                      /* I goes on once both exist */
	wait_term();
	kill(a1, SIGTERM);
	ok = waitpid(a1, &status, 0) == a1 && WIFEXITED(status) && !WEXITSTATUS(status);
	_exit(ok && ids_ok(PID_A, 1, PID_A, 1) ? 0 : 1);
}

static void __attribute__((noreturn)) run_init(void)
{
	char self[32] = "";
	int pipefd[2], status;
	pid_t a, z;

	if (!outside && setsid() < 0)
		tgt_die("setsid: %m");
	if (thread) {
		pthread_t t;

		if (pthread_create(&t, NULL, idle, NULL))
			tgt_die("pthread_create failed");
	}
	if (pipe(pipefd))
		tgt_die("pipe: %m");
	a = fork_at(PID_A);
	if (a == 0) {
		close(pipefd[0]);
		run_a(pipefd[1]);
	}
	close(pipefd[1]);
	read(pipefd[0], self, 1);          /* EOF: A and A1 are there */
	close(pipefd[0]);
	z = fork_at(PID_Z);
	if (z == 0)
		_exit(ZOMBIE_STATUS);
	{	/* a zombie before the dump starts, left unreaped */
		siginfo_t info;

		if (waitid(P_PID, z, &info, WEXITED | WNOWAIT))
			tgt_die("waitid: %m");
	}
	/* /proc is the host's: its "self" is our host pid. */
	if (readlink("/proc/self", self, sizeof(self) - 1) < 0)
		tgt_die("readlink /proc/self: %m");
	tgt_info("init=%s", self);
	tgt_ready();
	wait_term();

	tgt_check(getpid() == 1, "init: getpid() %d, not 1", getpid());
	tgt_check(getppid() == 0, "init: getppid() %d, not 0 (outside)", getppid());
	tgt_check(getsid(0) == 1 && getpgrp() == 1, "init: session %d group %d, not 1 1",
		  getsid(0), getpgrp());
	tgt_check(getpgid(a) == PID_A && getsid(a) == 1, "A: group %d session %d, not %d 1",
		  getpgid(a), getsid(a), PID_A);
	tgt_check(waitpid(z, &status, WNOHANG) == z && WIFEXITED(status) &&
		  WEXITSTATUS(status) == ZOMBIE_STATUS, "zombie %d: not reaped with status %d",
		  PID_Z, ZOMBIE_STATUS);
	kill(a, SIGTERM);
	tgt_check(waitpid(a, &status, 0) == a && WIFEXITED(status) && !WEXITSTATUS(status),
		  "A or A1: their pid, parent, group or session changed (status %#x)", status);
	tgt_finish();
}

int main(int argc, char **argv)
{
	pid_t init;
	int status;

	tgt_init(argc, argv);
	nested = tgt_arg_long("nested", 0);
	thread = tgt_arg_long("thread", 0);
	outside = tgt_arg_long("outside", 0);
	if (unshare(CLONE_NEWPID))
		tgt_die("unshare(CLONE_NEWPID): %m");
	init = fork();
	if (init < 0)
		tgt_die("fork: %m");
	if (init == 0)
		run_init();
	/* Gone with the dump: I's end is ours to reap, then we go too. A
	 * SIGTERM of our own (a run without a dump) is I's to judge. */
	while (waitpid(init, &status, 0) < 0 && errno == EINTR)
		if (tgt_stop)
			kill(init, SIGTERM), tgt_stop = 0;
	return 0;
}
