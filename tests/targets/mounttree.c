/* engine-target: needs=root ;
 * args: --dir DIR (a directory of the host's root filesystem, made by the
 *       test, holding rosrc/file), --self (the target itself builds the
 *       tree and checks it: no child) ;
 * what: a container-like mount tree: child C unshares its mount namespace,
 *       binds the host's "/" on DIR/root, mounts under it proc, sysfs, a
 *       tmpfs /dev with a null node, devpts (newinstance, ptmxmode=0666),
 *       mqueue, an external bind (DIR/ext: a subdirectory of a tmpfs of its
 *       own), a read-only bind (DIR/robind of DIR/rosrc), a shared tmpfs
 *       (DIR/shared) with a slave bind of it (DIR/slave), a masked path
 *       (DIR/masked and /proc/timer_list: binds of /dev/null), /proc/sys
 *       read-only, cgroup2 on /sys/fs/cgroup, then pivot_roots into it. After
 *       restore C checks its mountinfo (types, flags, propagation) and the
 *       files, and writes its verdict on a pipe for the parent */
#include "target.h"
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

static char dir[PATH_MAX / 2], root[PATH_MAX];

static void must(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "mounttree: %s: %m\n", what);
		exit(3);
	}
}

static void at(char *buf, const char *base, const char *rel)
{
	snprintf(buf, PATH_MAX, "%s%s/%s", base, dir, rel);
}

static void put(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	must(f && fputs(text, f) >= 0 && fclose(f) == 0, path);
}

static void build(void)
{
	char p[PATH_MAX], q[PATH_MAX];

	must(!unshare(CLONE_NEWNS), "unshare");
	must(!mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), "private");
	snprintf(root, sizeof(root), "%s/root", dir);
	must(!mkdir(root, 0755) || errno == EEXIST, "mkdir root");
	must(!mount("/", root, NULL, MS_BIND, NULL), "bind /");
	snprintf(p, sizeof(p), "%s/proc", root);
	must(!mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "proc");
	snprintf(p, sizeof(p), "%s/sys", root);
	must(!mount("sysfs", p, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL),
	     "sysfs");
	/* As runc: /proc/sys read-only, cgroup2 on the read-only sysfs. */
	snprintf(p, sizeof(p), "%s/proc/sys", root);
	must(!mount(p, p, NULL, MS_BIND, NULL), "bind /proc/sys");
	must(!mount(NULL, p, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV |
		    MS_NOEXEC, NULL), "ro /proc/sys");
	snprintf(p, sizeof(p), "%s/sys/fs/cgroup", root);
	must(!mount("cgroup2", p, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL),
	     "cgroup2");
	snprintf(p, sizeof(p), "%s/dev", root);
	must(!mount("tmpfs", p, "tmpfs", MS_NOSUID, "mode=755,size=65536k"), "dev");
	snprintf(p, sizeof(p), "%s/dev/null", root);
	must(!mknod(p, S_IFCHR | 0666, makedev(1, 3)) && !chmod(p, 0666), "mknod null");
	snprintf(p, sizeof(p), "%s/dev/pts", root);
	must(!mkdir(p, 0755), "mkdir pts");
	must(!mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC,
		    "newinstance,ptmxmode=0666,mode=620"), "devpts");
	snprintf(p, sizeof(p), "%s/dev/mqueue", root);
	must(!mkdir(p, 0755), "mkdir mqueue");
	must(!mount("mqueue", p, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "mqueue");
	/* External: a subdirectory of a tmpfs left behind with the old root. */
	at(p, "", "extsrc");
	must(!mount("extfs", p, "tmpfs", 0, "size=1m"), "extsrc");
	at(p, "", "extsrc/sub");
	must(!mkdir(p, 0755), "mkdir sub");
	at(p, "", "extsrc/sub/file");
	put(p, "outside");
	at(p, "", "extsrc/sub");
	at(q, root, "ext");
	must(!mount(p, q, NULL, MS_BIND, NULL), "bind ext");
	at(p, root, "rosrc");
	at(q, root, "robind");
	must(!mount(p, q, NULL, MS_BIND, NULL), "bind ro");
	must(!mount(NULL, q, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NODEV, NULL), "ro");
	at(p, root, "shared");
	must(!mount("sharedfs", p, "tmpfs", MS_NOEXEC, "size=2m,mode=711"), "shared");
	at(q, root, "shared/kept");
	put(q, "shared-data");
	must(!mount(NULL, p, NULL, MS_SHARED, NULL), "make shared");
	at(q, root, "slave");
	must(!mount(p, q, NULL, MS_BIND, NULL), "bind slave");
	must(!mount(NULL, q, NULL, MS_SLAVE, NULL), "make slave");
	snprintf(p, sizeof(p), "%s/dev/null", root);
	at(q, root, "masked");
	must(!mount(p, q, NULL, MS_BIND, NULL), "mask");
	snprintf(q, sizeof(q), "%s/proc/timer_list", root);
	must(!mount(p, q, NULL, MS_BIND, NULL), "mask timer_list");
	must(!chdir(root), "chdir root");
	must(!syscall(SYS_pivot_root, ".", "."), "pivot_root");
	must(!umount2(".", MNT_DETACH), "umount old root");
	must(!chdir("/"), "chdir /");
}

/* The mountinfo line whose mount point is DIR/rel (or rel itself when it
 * starts with '/'), the last one (the top of a stack). */
static int line_of(const char *rel, char *out, size_t size)
{
	char want[PATH_MAX], line[4096], mp[PATH_MAX];
	FILE *f = fopen("/proc/self/mountinfo", "r");
	int found = 0;

	if (rel[0] == '/')
		snprintf(want, sizeof(want), "%s", rel);
	else
		at(want, "", rel);
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%*d %*d %*s %*s %4095s", mp) == 1 && !strcmp(mp, want)) {
			snprintf(out, size, "%s", line);
			found = 1;
		}
	if (f)
		fclose(f);
	return found;
}

static void expect(const char *rel, const char *has1, const char *has2)
{
	char line[4096];

	if (!tgt_check(line_of(rel, line, sizeof(line)), "no mount at %s", rel))
		return;
	tgt_check(strstr(line, has1) != NULL, "%s: no '%s' in %s", rel, has1, line);
	tgt_check(!has2 || strstr(line, has2) != NULL, "%s: no '%s' in %s", rel, has2, line);
}

static void expect_file(const char *rel, const char *text)
{
	char p[PATH_MAX], buf[64] = "";
	FILE *f;

	at(p, "", rel);
	f = fopen(p, "r");
	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	tgt_check(!strcmp(buf, text), "%s: '%s', not '%s'", rel, buf, text);
}

static void check(void)
{
	char line[4096], sid[32];
	struct stat st;
	char *s;

	expect("/", " / / ", NULL);
	expect("/proc", "nosuid,nodev,noexec", "- proc proc");
	expect("/sys", "ro,nosuid,nodev,noexec", "- sysfs sysfs");
	expect("/proc/sys", "ro,nosuid,nodev,noexec", " /sys /proc/sys ");
	expect("/proc/timer_list", " /null ", "- tmpfs tmpfs");
	expect("/sys/fs/cgroup", "ro,nosuid,nodev,noexec", "- cgroup2 cgroup2");
	expect("/dev", "rw,nosuid", "- tmpfs tmpfs rw,size=65536k,mode=755");
	expect("/dev/pts", "- devpts devpts", "ptmxmode=666");
	expect("/dev/mqueue", "- mqueue mqueue", NULL);
	expect("ext", " - ", NULL);  /* what --external gave: any filesystem */
	expect("robind", "ro,nodev", NULL);
	expect("shared", "shared:", "noexec");
	expect("slave", "master:", NULL);
	expect("masked", " /null ", "- tmpfs tmpfs");
	tgt_check(!stat("/dev/null", &st) && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3),
		  "/dev/null is not the null device");
	expect_file("ext/file", "outside");
	expect_file("rosrc/file", "ro-data");
	expect_file("robind/file", "ro-data");
	expect_file("shared/kept", "shared-data");
	expect_file("slave/kept", "shared-data");
	/* The slave's master is the shared mount's group. */
	if (line_of("shared", line, sizeof(line)) && (s = strstr(line, "shared:"))) {
		snprintf(sid, sizeof(sid), "master:%d", atoi(s + 7));
		expect("slave", sid, NULL);
	}
	/* Propagation works: a mount in shared shows in slave. */
	{
		char p[PATH_MAX], q[PATH_MAX];

		at(p, "", "shared/sub");
		at(q, "", "slave/sub/x");
		if (tgt_check(!mkdir(p, 0755) && !mount("sub", p, "tmpfs", 0, NULL),
			      "mount in shared: %m")) {
			at(p, "", "shared/sub/x");
			put(p, "x");
			tgt_check(!access(q, F_OK), "a mount in shared did not reach slave");
		}
	}
	tgt_check(access("/work", F_OK) == 0 || access("/tmp", F_OK) == 0, "no host root");
}

int main(int argc, char **argv)
{
	int fds[2], status;
	char verdict[1100] = "";
	pid_t c;

	tgt_init(argc, argv);
	snprintf(dir, sizeof(dir), "%s", tgt_arg("dir", ""));
	if (!dir[0]) {
		/* No --dir (a run untouched): make one here, as the test does. */
		static const char *subs[] = {"", "/root", "/ext", "/extsrc", "/rosrc", "/robind",
					     "/shared", "/slave"};
		char p[PATH_MAX];
		unsigned i;

		if (!getcwd(dir, sizeof(dir) - 8))
			tgt_die("getcwd: %m");
		strcat(dir, "/tree");
		for (i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
			snprintf(p, sizeof(p), "%s%s", dir, subs[i]);
			must(!mkdir(p, 0755) || errno == EEXIST, p);
		}
		at(p, "", "rosrc/file");
		put(p, "ro-data");
		at(p, "", "masked");
		put(p, "");
	}
	if (tgt_flag("self")) {
		/* The tree's root in the container, as runc's init. */
		build();
		tgt_ready();
		while (!tgt_stop)
			pause();
		check();
		tgt_finish();
	}
	if (pipe(fds))
		tgt_die("pipe: %m");
	c = fork();
	if (c == 0) {
		close(fds[0]);
		build();
		write(fds[1], "R", 1);
		while (!tgt_stop)
			pause();
		check();
		snprintf(verdict, sizeof(verdict), "%s", tgt_failed() ? tgt_failmsg : "ok");
		write(fds[1], verdict, strlen(verdict));
		_exit(0);
	}
	close(fds[1]);
	if (read(fds[0], verdict, 1) != 1)
		tgt_die("the child could not build its tree");
	tgt_info("c=%d", c);
	tgt_ready();
	while (!tgt_stop)
		pause();
	kill(c, SIGTERM);
	memset(verdict, 0, sizeof(verdict));
	tgt_read_all(fds[0], verdict, sizeof(verdict) - 1);
	waitpid(c, &status, 0);
	tgt_check(!strcmp(verdict, "ok"), "child: %s", verdict[0] ? verdict : "no verdict");
	tgt_finish();
}
