/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * args: --dir D (a directory of the test's own, by default
 *       ./inotify-dir), --unread (an event left unread, for a dump to
 *       drop), --fanotify (also a fanotify group, which the dump refuses) ;
 * what: an inotify fd (O_NONBLOCK) watching D (IN_CREATE|IN_DELETE|
 *       IN_ONLYDIR) at wd 1, a file in it (IN_ATTRIB|IN_CLOSE_WRITE|
 *       IN_ONESHOT) at wd 5 (wds 2-4 given out and removed first), renamed
 *       after the watch was added, and a second inotify fd (blocking)
 *       watching the file with IN_MODIFY|IN_EXCL_UNLINK. After restore: no
 *       event queued, then the file (under its new name) is chmod'ed,
 *       written and closed, a file removed and made in D; the events come
 *       with the right wd numbers, IN_ONESHOT fires once */
#include "target.h"

#include <sys/inotify.h>
#include <sys/stat.h>

#ifndef __NR_fanotify_init
#define __NR_fanotify_init 300
#endif

static char dir[PATH_MAX], file[PATH_MAX], moved[PATH_MAX], made[PATH_MAX];

#define MAX_WD 8

/* Read every event queued now: per wd, the masks seen and how many. */
static int read_events(int fd, unsigned int *mask_or, int *count)
{
	char buf[4096] __attribute__((aligned(8)));
	int n = read(fd, buf, sizeof(buf)), off = 0;

	if (n <= 0)
		return n;
	while (off < n) {
		struct inotify_event *e = (struct inotify_event *)(buf + off);

		if (e->wd >= 0 && e->wd < MAX_WD) {
			mask_or[e->wd] |= e->mask;
			count[e->wd]++;
		}
		off += sizeof(*e) + e->len;
	}
	return n;
}

static void drain(int fd)
{
	char buf[4096];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

int main(int argc, char **argv)
{
	int ify, ify2, wd_dir, wd_file, wd2, i, fd, count[MAX_WD] = {0};
	unsigned int mask[MAX_WD] = {0};

	tgt_init(argc, argv);
	/* Not the working directory: the ready file is made there. */
	if (!tgt_arg("dir", NULL) && mkdir("inotify-dir", 0755) && errno != EEXIST)
		tgt_die("mkdir: %m");
	tgt_abspath(dir, tgt_arg("dir", "inotify-dir"));
	snprintf(file, sizeof(file), "%s/watched", dir);
	snprintf(moved, sizeof(moved), "%s/renamed", dir);
	snprintf(made, sizeof(made), "%s/made", dir);
	if ((fd = open(file, O_CREAT | O_WRONLY, 0644)) < 0)
		tgt_die("open %s: %m", file);
	close(fd);
	ify = inotify_init1(IN_NONBLOCK);
	ify2 = inotify_init1(0);
	if (ify < 0 || ify2 < 0)
		tgt_die("inotify_init1: %m");
	wd_dir = inotify_add_watch(ify, dir, IN_CREATE | IN_DELETE | IN_ONLYDIR);
	/* wds 2, 3 and 4 given out and removed: the file's watch gets 5. */
	for (i = 0; i < 3; i++)
		inotify_rm_watch(ify, inotify_add_watch(ify, "/", IN_ACCESS));
	wd_file = inotify_add_watch(ify, file, IN_ATTRIB | IN_CLOSE_WRITE | IN_ONESHOT);
	wd2 = inotify_add_watch(ify2, file, IN_MODIFY | IN_EXCL_UNLINK);
	if (wd_dir != 1 || wd_file != 5 || wd2 != 1)
		tgt_die("wds %d %d %d", wd_dir, wd_file, wd2);
	if (rename(file, moved))
		tgt_die("rename: %m");
	drain(ify);
	if ((fd = open(made, O_CREAT | O_WRONLY, 0644)) < 0)
		tgt_die("open %s: %m", made);
	close(fd);
	/* --unread: an IN_CREATE left unread, which the dump drops. */
	if (!tgt_flag("unread"))
		drain(ify);
	if (tgt_flag("fanotify") && syscall(__NR_fanotify_init, 0, O_RDONLY) < 0)
		tgt_die("fanotify_init: %m");
	tgt_info("wd_file=%d", wd_file);
	tgt_ready();

	tgt_wait_stop();
	tgt_check(fcntl(ify, F_GETFL) & O_NONBLOCK, "IN_NONBLOCK lost");
	tgt_check(!(fcntl(ify2, F_GETFL) & O_NONBLOCK), "second fd became O_NONBLOCK");
	errno = 0;
	tgt_check(read_events(ify, mask, count) < 0 && errno == EAGAIN,
		  "events queued before anything happened (after restore)");
	unlink(made);
	chmod(moved, 0600);
	if ((fd = open(moved, O_WRONLY)) < 0)
		tgt_die("open %s: %m", moved);
	if (write(fd, "x", 1) != 1)
		tgt_die("write: %m");
	close(fd);
	chmod(moved, 0640);                 /* after IN_ONESHOT fired: nothing */
	if ((fd = open(made, O_CREAT | O_WRONLY, 0644)) < 0)
		tgt_die("open %s: %m", made);
	close(fd);

	read_events(ify, mask, count);
	tgt_check(mask[wd_dir] == (IN_CREATE | IN_DELETE) && count[wd_dir] == 2,
		  "dir wd %d: mask %#x count %d", wd_dir, mask[wd_dir], count[wd_dir]);
	/* IN_ONESHOT: the first event, then IN_IGNORED as the watch goes. */
	tgt_check(mask[wd_file] == (IN_ATTRIB | IN_IGNORED) && count[wd_file] == 2,
		  "file wd %d: mask %#x count %d", wd_file, mask[wd_file], count[wd_file]);
	for (i = 0; i < MAX_WD; i++)
		tgt_check(i == wd_dir || i == wd_file || !count[i], "events of wd %d", i);
	memset(mask, 0, sizeof(mask));
	memset(count, 0, sizeof(count));
	{
		struct pollfd p = { .fd = ify2, .events = POLLIN };

		if (poll(&p, 1, 2000) == 1)
			read_events(ify2, mask, count);
	}
	tgt_check(mask[wd2] == IN_MODIFY && count[wd2] == 1, "second fd wd %d: mask %#x "
		  "count %d", wd2, mask[wd2], count[wd2]);
	tgt_finish();
}
