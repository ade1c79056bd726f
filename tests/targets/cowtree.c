/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a parent touches --mib MiB (64 by default) with a pattern, then
 *       forks --kids children (4) that never write it: their pages are the
 *       parent's, shared copy-on-write. After SIGTERM each child checks the
 *       data and the parent collects their verdicts. The children's pids
 *       are in the ready file (kids=PID,PID...) so a bench can read their
 *       smaps_rollup (Private_Dirty stays small while the pages are shared). */
#include <sys/mman.h>
#include <sys/wait.h>
#include "target.h"

static unsigned long *buf;
static unsigned long words;

static int check(void)
{
	unsigned long i;

	for (i = 0; i < words; i += 512)
		if (buf[i] != i * 0x9E3779B97F4A7C15UL)
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	long mib = tgt_arg_long("mib", 64), kids = tgt_arg_long("kids", 4), k;
	pid_t pids[64];
	unsigned long i;
	int status, n = 0;
	char list[1024];

	tgt_init(argc, argv);
	if (kids > 64)
		tgt_die("at most 64 kids");
	words = (unsigned long)mib << 17;
	buf = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		tgt_die("mmap: %m");
	for (i = 0; i < words; i++)
		buf[i] = i * 0x9E3779B97F4A7C15UL;
	for (k = 0; k < kids; k++) {
		pids[k] = fork();
		if (pids[k] < 0)
			tgt_die("fork: %m");
		if (pids[k] == 0) {
			while (!tgt_stop)
				usleep(5000);
			_exit(check() ? 0 : 1);
		}
		n += snprintf(list + n, sizeof(list) - n, "%s%d", k ? "," : "", pids[k]);
	}
	tgt_info("kids=%s", list);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(check(), "parent: data differs");
	for (k = 0; k < kids; k++) {
		kill(pids[k], SIGTERM);
		if (waitpid(pids[k], &status, 0) != pids[k] || !WIFEXITED(status) || WEXITSTATUS(status))
			tgt_check(0, "child %ld: data differs (status %#x)", k, status);
	}
	tgt_finish();
}
