/* engine-target: needs=root ;
 * what: user namespaces: child A in its own user namespace (maps 0 200000
 *       65536, written by the parent), with a child A1 in a nested one (maps
 *       0 500 100 written by A) and a child A2 sharing A's; A then becomes
 *       uid/gid 1000 with groups 1000,27 inside; child B in another one with
 *       setgroups denied (maps 0 300000 10) and uids 1/2/3 inside. After
 *       restore every child compares what it sees of itself (ids, groups,
 *       maps, setgroups, capabilities) with before the dump and the parent
 *       checks, from outside, which namespace is whose parent */
#include "target.h"
#include <grp.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <linux/nsfs.h>

static char before[4096];
static pid_t a1, a2;            /* A's children, in A (and told to the parent) */
static int wait_kids(pid_t *kids, int n);

static void cat(char *buf, size_t size, const char *path)
{
	size_t used = strlen(buf);
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0) {
		snprintf(buf + used, size - used, "%s: %m\n", path);
		return;
	}
	n = read(fd, buf + used, size - used - 1);
	buf[used + (n > 0 ? n : 0)] = 0;
	close(fd);
}

/* What a task sees of its own credentials and user namespace. */
static void snapshot(char *buf, size_t size)
{
	uid_t r, e, s;
	gid_t rg, eg, sg, groups[32];
	int n, i;
	char line[256], status[4096] = "", *cap;

	getresuid(&r, &e, &s);
	getresgid(&rg, &eg, &sg);
	n = getgroups(32, groups);
	snprintf(buf, size, "uids %d %d %d gids %d %d %d groups", r, e, s, rg, eg, sg);
	for (i = 0; i < n; i++) {
		snprintf(line, sizeof(line), " %d", groups[i]);
		strncat(buf, line, size - strlen(buf) - 1);
	}
	strncat(buf, "\n", size - strlen(buf) - 1);
	cat(buf, size, "/proc/self/uid_map");
	cat(buf, size, "/proc/self/gid_map");
	cat(buf, size, "/proc/self/setgroups");
	cat(status, sizeof(status), "/proc/self/status");
	cap = strstr(status, "CapInh:");
	if (cap) {
		char *end = strstr(cap, "NoNewPrivs");

		if (end)
			*end = 0;               /* CapInh..CapAmb */
		strncat(buf, cap, size - strlen(buf) - 1);
	}
}

/* fork a child that unshares its user namespace; the caller writes its maps. */
static pid_t spawn_userns(int (*body)(void), const char *uid_map, const char *gid_map,
			  int deny, pid_t *kids)
{
	pid_t mine[2];

	int go[2], done[2];
	pid_t pid;
	char c;

	if (pipe(go) || pipe(done))
		tgt_die("pipe: %m");
	pid = fork();
	if (pid < 0)
		tgt_die("fork: %m");
	if (pid == 0) {
		close(go[1]);
		close(done[0]);
		if (unshare(CLONE_NEWUSER))
			tgt_die("unshare: %m");
		if (write(done[1], "u", 1) != 1 || read(go[0], &c, 1) != 1)
			tgt_die("sync: %m");
		close(go[0]);
		if (body())
			_exit(2);
		snapshot(before, sizeof(before));
		mine[0] = a1;
		mine[1] = a2;
		if (write(done[1], mine, sizeof(mine)) != sizeof(mine))
			_exit(2);
		close(done[1]);
		while (!tgt_stop)
			tgt_msleep(5);
		{
			char after[4096];

			/* The parent signals A's children (A cannot: other uids). */
			if (a1 && !wait_kids(mine, 2))
				_exit(1);
			snapshot(after, sizeof(after));
			if (strcmp(before, after)) {
				fprintf(stderr, "task %d: before:\n%s\nafter:\n%s\n", getpid(), before,
					after);
				_exit(1);
			}
		}
		_exit(0);
	}
	close(go[0]);
	close(done[1]);
	if (read(done[0], &c, 1) != 1)
		tgt_die("child %d died before unshare", pid);
	tgt_write_proc(pid, "uid_map", uid_map);
	if (deny)
		tgt_write_proc(pid, "setgroups", "deny");
	tgt_write_proc(pid, "gid_map", gid_map);
	if (write(go[1], "g", 1) != 1 || read(done[0], kids, 2 * sizeof(pid_t)) != 2 * sizeof(pid_t))
		tgt_die("child %d failed its setup", pid);
	close(go[1]);
	close(done[0]);
	return pid;
}

static int a1_body(void)
{
	gid_t g = 0;

	return setgroups(1, &g) || setresgid(0, 0, 0) || setresuid(0, 0, 0);
}

static int wait_kids(pid_t *kids, int n)
{
	int i, status, ok = 1;

	for (i = 0; i < n; i++) {
		if (waitpid(kids[i], &status, 0) != kids[i] || !WIFEXITED(status) ||
		    WEXITSTATUS(status)) {
			fprintf(stderr, "task %d: child %d: status %#x\n", getpid(), kids[i], status);
			ok = 0;
		}
	}
	return ok;
}

/* A2 shares A's namespace; it only waits. */
static int a2_main(void)
{
	snapshot(before, sizeof(before));
	return 0;
}

static int a_body(void)
{
	gid_t groups[] = { 1000, 27 };
	int sync[2];
	char c;

	pid_t none[2];

	/* Root inside first: a namespace is made only by a mapped euid. */
	if (setresgid(0, 0, 0) || setresuid(0, 0, 0))
		return 1;
	/* The uid change made us undumpable: /proc/A1 would be init root's. */
	prctl(PR_SET_DUMPABLE, 1);
	a1 = spawn_userns(a1_body, "0 500 100\n", "0 500 100\n", 0, none);
	if (pipe(sync))
		return 1;
	a2 = fork();
	if (a2 == 0) {
		close(sync[0]);
		a2_main();
		close(sync[1]);
		while (!tgt_stop)
			tgt_msleep(5);
		{
			char after[4096];

			snapshot(after, sizeof(after));
			if (strcmp(before, after))
				fprintf(stderr, "task %d: before:\n%s\nafter:\n%s\n", getpid(),
					before, after);
			_exit(strcmp(before, after) != 0);
		}
	}
	close(sync[1]);
	if (read(sync[0], &c, 1) != 0)
		return 1;
	close(sync[0]);
	return setgroups(2, groups) || setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000);
}

static int b_body(void)
{
	return setresgid(3, 3, 3) || setresuid(1, 2, 3);
}

static ino_t ns_of(pid_t pid, int parent)
{
	char path[64];
	struct stat st;
	int fd, up;

	snprintf(path, sizeof(path), "/proc/%d/ns/user", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	if (parent) {
		up = ioctl(fd, NS_GET_PARENT);
		close(fd);
		if (up < 0)
			return 0;
		fd = up;
	}
	fstat(fd, &st);
	close(fd);
	return st.st_ino;
}

int main(int argc, char **argv)
{
	pid_t a, b, ak[2], bk[2], all[4];
	int i;

	tgt_init(argc, argv);
	a = spawn_userns(a_body, "0 200000 65536\n", "0 200000 65536\n", 0, ak);
	b = spawn_userns(b_body, "0 300000 10\n", "0 300000 10\n", 1, bk);
	tgt_info("a=%d", a);
	tgt_info("a1=%d", ak[0]);
	tgt_info("a2=%d", ak[1]);
	tgt_info("b=%d", b);
	tgt_ready();
	tgt_wait_stop();

	tgt_check(ns_of(a, 1) == ns_of(getpid(), 0), "A's namespace is not a child of ours");
	tgt_check(ns_of(b, 1) == ns_of(getpid(), 0), "B's namespace is not a child of ours");
	tgt_check(ns_of(a, 0) != ns_of(b, 0), "A and B share a namespace");
	tgt_check(ns_of(ak[0], 1) == ns_of(a, 0), "A1's namespace is not a child of A's");
	tgt_check(ns_of(ak[1], 0) == ns_of(a, 0), "A2 is not in A's namespace");
	all[0] = ak[0];
	all[1] = ak[1];
	all[2] = a;
	all[3] = b;
	for (i = 0; i < 4; i++)
		kill(all[i], SIGTERM);
	tgt_check(wait_kids(all + 2, 2), "a child failed (see target.log)");
	tgt_finish();
}
