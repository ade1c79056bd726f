/* engine-target: needs=root ;
 * args: --user 1 (A, A1 and B1 each first make a user namespace, maps 0
 *       100000 65536, 0 1000 1000, 0 100 100: P1 is owned by A's, P2 by A1's) ;
 * what: nested pid namespaces: child A unshares CLONE_NEWPID and forks A1,
 *       init of P1; A1 unshares CLONE_NEWPID and forks B1, init of P2,
 *       which forks B2 (pid 2 in P2). After restore every task compares its
 *       NSpid (its pid at every level), pid, parent and maps with before the
 *       dump, after its children did the same (tasks in a nested pid
 *       namespace report by exit status: they open their own stdio) */
#include "target.h"
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static int user;
static char before[1024];
static pid_t kid;

static void snapshot(char *buf, size_t size)
{
	char status[4096], *line, map[256] = "";
	int fd, n;

	fd = open("/proc/self/status", O_RDONLY);
	n = read(fd, status, sizeof(status) - 1);
	close(fd);
	status[n > 0 ? n : 0] = 0;
	line = strstr(status, "NSpid:");
	if (line)
		line[strcspn(line, "\n")] = 0;
	fd = open("/proc/self/uid_map", O_RDONLY);
	n = read(fd, map, sizeof(map) - 1);
	close(fd);
	map[n > 0 ? n : 0] = 0;
	snprintf(buf, size, "%s pid %d ppid %d map %s", line ? line : "no NSpid", getpid(),
		 getppid(), map);
}

/* Wait for SIGTERM, pass it on to our child, then judge ourselves. */
static void __attribute__((noreturn)) serve(void)
{
	char after[1024];
	int status, ok = 1;

	snapshot(before, sizeof(before));
	while (!tgt_stop)
		tgt_msleep(5);
	if (kid) {
		kill(kid, SIGTERM);
		ok = waitpid(kid, &status, 0) == kid && WIFEXITED(status) && !WEXITSTATUS(status);
	}
	snapshot(after, sizeof(after));
	if (strcmp(before, after)) {
		fprintf(stderr, "before: %s\nafter:  %s\n", before, after);
		ok = 0;
	}
	_exit(!ok);
}

/* In the child: its own user namespace (maps from the parent), then root. */
static void own_userns(int sync_w, int go_r)
{
	char c, self[32] = "";
	int procpid;

	/* Our pid as /proc (the initial namespace's) names it, for the maps. */
	if (readlink("/proc/self", self, sizeof(self) - 1) < 0)
		tgt_die("readlink /proc/self: %m");
	procpid = atoi(self);
	if (unshare(CLONE_NEWUSER) || write(sync_w, &procpid, sizeof(procpid)) != sizeof(procpid) ||
	    read(go_r, &c, 1) != 1)
		tgt_die("user namespace: %m");
	if (setresgid(0, 0, 0) || setresuid(0, 0, 0))
		tgt_die("root inside: %m");
	prctl(PR_SET_DUMPABLE, 1);
}

/* fork a child that first gets its own user namespace (with --user), then
 * runs fn; returns once the child reported ready. */
static pid_t spawn(void (*fn)(int), const char *map)
{
	int sync[2], go[2];
	pid_t pid;
	char c;

	if (pipe(sync) || pipe(go))
		tgt_die("pipe: %m");
	pid = fork();
	if (pid < 0)
		tgt_die("fork: %m");
	if (pid == 0) {
		close(sync[0]);
		close(go[1]);
		if (user)
			own_userns(sync[1], go[0]);
		close(go[0]);
		fn(sync[1]);
	}
	close(sync[1]);
	close(go[0]);
	if (user) {
		int procpid;

		if (read(sync[0], &procpid, sizeof(procpid)) != sizeof(procpid))
			tgt_die("child died before its user namespace");
		tgt_write_proc(procpid, "uid_map", map);
		tgt_write_proc(procpid, "gid_map", map);
		if (write(go[1], "g", 1) != 1)
			tgt_die("sync: %m");
	}
	close(go[1]);
	if (read(sync[0], &c, 1) != 1)
		tgt_die("child %d failed its setup", pid);
	close(sync[0]);
	return pid;
}

static void ready(int sync_w)
{
	if (write(sync_w, "r", 1) != 1)
		_exit(2);
	close(sync_w);
}

/* The first task of a pid namespace opens its own stdio: the engine shares
 * an open file only within a pid namespace (pidfd_open names no task
 * outside it). */
static void own_stdio(int keep)
{
	int fd;

	for (fd = 3; fd < 1024; fd++)
		if (fd != keep)
			close(fd);
	fd = open("/dev/null", O_RDWR);
	if (fd < 0 || dup2(fd, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
		_exit(3);
	if (fd > 2)
		close(fd);
}

static void b2(int sync_w)
{
	ready(sync_w);
	serve();
}

static void b1(int sync_w)
{
	int p[2];
	char c;

	own_stdio(sync_w);
	/* B2 without a user namespace of its own: plain fork. */
	if (pipe(p))
		tgt_die("pipe: %m");
	kid = fork();
	if (kid == 0) {
		close(p[0]);
		b2(p[1]);
	}
	close(p[1]);
	if (read(p[0], &c, 1) != 1)
		tgt_die("B2 failed");
	close(p[0]);
	ready(sync_w);
	serve();
}

static void a1(int sync_w)
{
	own_stdio(sync_w);
	if (unshare(CLONE_NEWPID))
		tgt_die("A1: unshare(CLONE_NEWPID): %m");
	kid = spawn(b1, "0 100 100\n");
	ready(sync_w);
	serve();
}

static void a(int sync_w)
{
	if (unshare(CLONE_NEWPID))
		tgt_die("A: unshare(CLONE_NEWPID): %m");
	kid = spawn(a1, "0 1000 1000\n");
	ready(sync_w);
	serve();
}

int main(int argc, char **argv)
{
	pid_t pid;
	int status;

	tgt_init(argc, argv);
	user = tgt_arg("user", NULL) != NULL;
	pid = spawn(a, "0 100000 65536\n");
	tgt_info("a=%d", pid);
	tgt_ready();
	tgt_wait_stop();
	kill(pid, SIGTERM);
	tgt_check(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status),
		  "a task failed (see target.log): status %#x", status);
	tgt_finish();
}
