/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: address-space flags: coredump filter 0x2b, transparent huge pages
 *       disabled (with PR_THP_DISABLE_EXCEPT_ADVISED under --advised), not
 *       dumpable (PR_SET_DUMPABLE 0); after restore each reads back as set */
#include "target.h"
#include <sys/prctl.h>

#ifndef PR_THP_DISABLE_EXCEPT_ADVISED
#define PR_THP_DISABLE_EXCEPT_ADVISED (1 << 1)
#endif
#define FILTER 0x2b

static unsigned long read_filter(void)
{
	char buf[32] = "";
	int fd = open("/proc/self/coredump_filter", O_RDONLY);

	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0)
		tgt_die("read coredump_filter: %m");
	close(fd);
	return strtoul(buf, NULL, 16);
}

int main(int argc, char **argv)
{
	unsigned long flags;
	int thp, want_thp;

	tgt_init(argc, argv);
	flags = tgt_flag("advised") ? PR_THP_DISABLE_EXCEPT_ADVISED : 0;
	want_thp = 1 | (int)flags;
	tgt_write_proc(getpid(), "coredump_filter", "0x2b");
	if (prctl(PR_SET_THP_DISABLE, 1, flags, 0, 0))
		tgt_die("PR_SET_THP_DISABLE: %m");
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))
		tgt_die("PR_SET_DUMPABLE: %m");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(read_filter() == FILTER, "coredump_filter %#lx, want %#x", read_filter(), FILTER);
	thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
	tgt_check(thp == want_thp, "PR_GET_THP_DISABLE %d, want %d", thp, want_thp);
	tgt_check(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0, "dumpable %d, want 0",
		  prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
	tgt_finish();
}
