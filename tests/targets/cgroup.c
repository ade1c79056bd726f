/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: joins the cgroups whose cgroup.procs files --join1..--join3 name
 *       (pids.max 77, a memory limit, a v2 directory: the test made them),
 *       forks a child that stays in them; after restore both are in the
 *       same cgroups (/proc/self/cgroup unchanged, or the line --expect-line
 *       present) and the property file --prop reads --want. */
#include "target.h"

static void read_text(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		tgt_die("open %s: %m", path);
	n = read(fd, buf, size - 1);
	if (n < 0)
		tgt_die("read %s: %m", path);
	buf[n] = 0;
	close(fd);
}

static void join(const char *procs)
{
	int fd = open(procs, O_WRONLY);

	if (fd < 0 || write(fd, "0", 1) != 1)
		tgt_die("join %s: %m", procs);
	close(fd);
}

int main(int argc, char **argv)
{
	static char before[4096], after[4096], kid[4096], value[256];
	const char *names[] = { "join1", "join2", "join3" };
	const char *prop, *want, *line;
	char path[64];
	pid_t child;
	unsigned i;

	tgt_init(argc, argv);
	for (i = 0; i < 3; i++)
		if (tgt_arg(names[i], NULL))
			join(tgt_arg(names[i], NULL));
	prop = tgt_arg("prop", NULL);
	want = tgt_arg("want", NULL);
	line = tgt_arg("expect-line", NULL);
	read_text("/proc/self/cgroup", before, sizeof(before));
	child = fork();
	if (child < 0)
		tgt_die("fork: %m");
	if (child == 0) {
		while (1)
			pause();
	}
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	read_text("/proc/self/cgroup", after, sizeof(after));
	snprintf(path, sizeof(path), "/proc/%d/cgroup", child);
	read_text(path, kid, sizeof(kid));
	if (line)
		tgt_check(strstr(after, line) != NULL, "no line %s in /proc/self/cgroup: %s", line, after);
	else
		tgt_check(!strcmp(before, after), "/proc/self/cgroup %s, was %s", after, before);
	tgt_check(!strcmp(kid, after), "the child's cgroups %s, its parent's %s", kid, after);
	if (prop) {
		read_text(prop, value, sizeof(value));
		value[strcspn(value, "\n")] = 0;
		tgt_check(!strcmp(value, want), "%s reads %s, want %s", prop, value, want);
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	tgt_finish();
}
