/* engine-target: needs=root ;
 * args: --kinds uts,ipc,net,mnt (which namespaces C makes), --user 1 (C
 *       first makes a user namespace owning them, maps 0 100000 65536),
 *       --self-map 1 (with --user: maps only the caller's own uid and gid to
 *       0, setgroups denied, as an ordinary user may) ;
 * what: namespaces made by a task: child C unshares the kinds asked, sets
 *       hostname/domainname (uts), kernel.msgmax (ipc), brings lo up with
 *       10.7.7.1/24 as lo:1 and a route to 10.8.0.0/16 (net), mounts a
 *       private tmpfs holding a file (mnt), then forks G, which stays in
 *       them. After restore C and G check all of it from inside and the
 *       parent checks that none of it leaked into its own namespaces */
#include "target.h"
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <linux/magic.h>

static int has(const char *kinds, const char *kind)
{
	return strstr(kinds, kind) != NULL;
}

static const char *kinds;
static char mnt[PATH_MAX], file[PATH_MAX + 8];

static int sysctl_read(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY), n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

static int sysctl_write(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY), n;

	if (fd < 0)
		return -1;
	n = write(fd, value, strlen(value));
	close(fd);
	return n == (int)strlen(value) ? 0 : -1;
}

static void setup_net(void)
{
	struct ifreq ifr;
	struct rtentry rt;
	struct sockaddr_in *sin;
	int s = socket(AF_INET, SOCK_DGRAM, 0);

	if (s < 0)
		tgt_die("socket: %m");
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	ifr.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr))
		tgt_die("lo up: %m");
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo:1");
	sin = (struct sockaddr_in *)&ifr.ifr_addr;
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, "10.7.7.1", &sin->sin_addr);
	if (ioctl(s, SIOCSIFADDR, &ifr))
		tgt_die("lo:1 address: %m");
	inet_pton(AF_INET, "255.255.255.0", &sin->sin_addr);
	if (ioctl(s, SIOCSIFNETMASK, &ifr))
		tgt_die("lo:1 netmask: %m");
	memset(&rt, 0, sizeof(rt));
	sin = (struct sockaddr_in *)&rt.rt_dst;
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, "10.8.0.0", &sin->sin_addr);
	sin = (struct sockaddr_in *)&rt.rt_genmask;
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, "255.255.0.0", &sin->sin_addr);
	rt.rt_flags = RTF_UP;
	rt.rt_dev = "lo";
	if (ioctl(s, SIOCADDRT, &rt))
		tgt_die("route: %m");
	close(s);
}

static void setup(void)
{
	if (has(kinds, "uts") && (sethostname("nsmix-host", 10) || setdomainname("nsmix.dom", 9)))
		tgt_die("uts names: %m");
	if (has(kinds, "ipc") && sysctl_write("/proc/sys/kernel/msgmax", "12345"))
		tgt_die("msgmax: %m");
	if (has(kinds, "net"))
		setup_net();
	if (has(kinds, "mnt")) {
		int fd;

		if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
			tgt_die("make / private: %m");
		if (mount("nsmix", mnt, "tmpfs", 0, "size=1m,mode=0750"))
			tgt_die("mount tmpfs: %m");
		fd = open(file, O_WRONLY | O_CREAT, 0640);
		if (fd < 0 || write(fd, "tmpfs data", 10) != 10)
			tgt_die("write %s: %m", file);
		close(fd);
	}
}

/* From inside: 0 when everything C set up is there. */
static int check(void)
{
	char buf[256];
	struct ifreq ifr;
	struct ifaddrs *ifa, *i;
	struct statfs st;
	int s, found, fd;
	FILE *f;

	if (has(kinds, "uts")) {
		gethostname(buf, sizeof(buf));
		if (strcmp(buf, "nsmix-host"))
			return fprintf(stderr, "%d: hostname %s\n", getpid(), buf), 1;
		getdomainname(buf, sizeof(buf));
		if (strcmp(buf, "nsmix.dom"))
			return fprintf(stderr, "%d: domainname %s\n", getpid(), buf), 1;
	}
	if (has(kinds, "ipc") && (sysctl_read("/proc/sys/kernel/msgmax", buf, sizeof(buf)) ||
				  strcmp(buf, "12345")))
		return fprintf(stderr, "%d: msgmax %s\n", getpid(), buf), 1;
	if (has(kinds, "net")) {
		s = socket(AF_INET, SOCK_DGRAM, 0);
		memset(&ifr, 0, sizeof(ifr));
		strcpy(ifr.ifr_name, "lo");
		if (ioctl(s, SIOCGIFFLAGS, &ifr) || !(ifr.ifr_flags & IFF_UP))
			return fprintf(stderr, "%d: lo is down\n", getpid()), 1;
		close(s);
		found = 0;
		getifaddrs(&ifa);
		for (i = ifa; i; i = i->ifa_next) {
			if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
				continue;
			inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, buf, 64);
			if (!strcmp(buf, "10.7.7.1") && !strcmp(i->ifa_name, "lo:1")) {
				inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_netmask)->sin_addr,
					  buf, 64);
				found = !strcmp(buf, "255.255.255.0");
			}
		}
		freeifaddrs(ifa);
		if (!found)
			return fprintf(stderr, "%d: no 10.7.7.1/24 on lo:1\n", getpid()), 1;
		found = 0;
		f = fopen("/proc/net/route", "r");
		while (f && fgets(buf, sizeof(buf), f))
			if (!strncmp(buf, "lo\t0000080A\t00000000\t0001\t", 26) && strstr(buf, "0000FFFF"))
				found = 1;
		if (f)
			fclose(f);
		if (!found)
			return fprintf(stderr, "%d: no route to 10.8.0.0/16\n", getpid()), 1;
	}
	if (has(kinds, "mnt")) {
		if (statfs(mnt, &st) || st.f_type != TMPFS_MAGIC)
			return fprintf(stderr, "%d: %s is not a tmpfs\n", getpid(), mnt), 1;
		memset(buf, 0, sizeof(buf));
		fd = open(file, O_RDONLY);
		if (fd < 0 || read(fd, buf, sizeof(buf)) != 10 || strcmp(buf, "tmpfs data"))
			return fprintf(stderr, "%d: %s: '%s'\n", getpid(), file, buf), 1;
		close(fd);
	}
	return 0;
}

static int status_ok(pid_t pid)
{
	int status;

	return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
	int user, flags = 0, go[2], done[2];
	pid_t c, g = 0;
	char ch, host[256];

	tgt_init(argc, argv);
	kinds = tgt_arg("kinds", "uts,ipc,net,mnt");
	user = tgt_arg("user", NULL) != NULL;
	if (!getcwd(mnt, sizeof(mnt) - 4))
		tgt_die("getcwd: %m");
	strcat(mnt, "/mnt");
	snprintf(file, sizeof(file), "%s/hello", mnt);
	if (mkdir(mnt, 0755))
		tgt_die("mkdir %s: %m", mnt);
	flags |= has(kinds, "uts") ? CLONE_NEWUTS : 0;
	flags |= has(kinds, "ipc") ? CLONE_NEWIPC : 0;
	flags |= has(kinds, "net") ? CLONE_NEWNET : 0;
	flags |= has(kinds, "mnt") ? CLONE_NEWNS : 0;
	if (pipe(go) || pipe(done))
		tgt_die("pipe: %m");
	c = fork();
	if (c == 0) {
		close(go[1]);
		close(done[0]);
		if (user) {
			if (unshare(CLONE_NEWUSER) || write(done[1], "u", 1) != 1 ||
			    read(go[0], &ch, 1) != 1)
				tgt_die("user namespace: %m");
			if (setresgid(0, 0, 0) || setresuid(0, 0, 0))
				tgt_die("root inside: %m");
			prctl(PR_SET_DUMPABLE, 1);
		}
		if (unshare(flags))
			tgt_die("unshare %#x: %m", flags);
		setup();
		g = fork();
		if (g == 0) {
			close(done[1]);
			while (!tgt_stop)
				tgt_msleep(5);
			_exit(check());
		}
		if (write(done[1], &g, sizeof(g)) != sizeof(g))
			tgt_die("sync: %m");
		close(done[1]);
		close(go[0]);
		while (!tgt_stop)
			tgt_msleep(5);
		_exit(!status_ok(g) || check());
	}
	close(go[0]);
	close(done[1]);
	if (user) {
		if (read(done[0], &ch, 1) != 1)
			tgt_die("C died before its user namespace");
		if (tgt_arg("self-map", NULL)) {
			char map[64];

			snprintf(map, sizeof(map), "0 %d 1\n", getuid());
			tgt_write_proc(c, "uid_map", map);
			tgt_write_proc(c, "setgroups", "deny");
			snprintf(map, sizeof(map), "0 %d 1\n", getgid());
			tgt_write_proc(c, "gid_map", map);
		} else {
			tgt_write_proc(c, "uid_map", "0 100000 65536\n");
			tgt_write_proc(c, "gid_map", "0 100000 65536\n");
		}
		if (write(go[1], "g", 1) != 1)
			tgt_die("sync: %m");
	}
	if (read(done[0], &g, sizeof(g)) != sizeof(g))
		tgt_die("C failed its setup");
	close(go[1]);
	close(done[0]);
	tgt_info("c=%d", c);
	tgt_info("g=%d", g);
	tgt_ready();
	tgt_wait_stop();

	gethostname(host, sizeof(host));
	tgt_check(strcmp(host, "nsmix-host") != 0, "the hostname leaked out of C's namespace");
	tgt_check(!has(kinds, "mnt") || access(file, F_OK) != 0, "the tmpfs leaked out");
	kill(g, SIGTERM);
	kill(c, SIGTERM);
	tgt_check(status_ok(c), "C or G failed (see target.log)");
	tgt_finish();
}
