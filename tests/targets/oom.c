/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: oom_score_adj 713 (so oom_adj 12, which the kernel derives from
 *       it); after restore both read back as set. --value N: another
 *       (-517, oom_adj -8, takes CAP_SYS_RESOURCE, which root lacks here) */
#include "target.h"

static long read_long(const char *path)
{
	char buf[32] = "";
	int fd = open(path, O_RDONLY);

	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0)
		tgt_die("read %s: %m", path);
	close(fd);
	return strtol(buf, NULL, 10);
}

int main(int argc, char **argv)
{
	long want, adj, legacy;
	char text[16];

	tgt_init(argc, argv);
	want = tgt_arg_long("value", 713);
	snprintf(text, sizeof(text), "%ld", want);
	tgt_write_proc(getpid(), "oom_score_adj", text);
	legacy = read_long("/proc/self/oom_adj");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	adj = read_long("/proc/self/oom_score_adj");
	tgt_check(adj == want, "oom_score_adj %ld, want %ld", adj, want);
	tgt_check(read_long("/proc/self/oom_adj") == legacy, "oom_adj %ld, want %ld",
		  read_long("/proc/self/oom_adj"), legacy);
	tgt_check(want != 713 || legacy == 12, "oom_adj %ld for 713, want 12", legacy);
	tgt_finish();
}
