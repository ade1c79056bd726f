/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: resource limits lowered from the ones it started with: open files
 *       (soft 200, hard 300), stack (soft 4 MiB), processes (soft 5000,
 *       hard 6000), message queues (soft 4096, hard 8192) and core files
 *       (hard 0); after restore getrlimit gives each back */
#include <sys/resource.h>
#include "target.h"

static const struct { int res; const char *name; rlim_t cur, max; int keep_max; } limits[] = {
	{ RLIMIT_NOFILE, "RLIMIT_NOFILE", 200, 300, 0 },
	{ RLIMIT_STACK, "RLIMIT_STACK", 4 << 20, 0, 1 },
	{ RLIMIT_NPROC, "RLIMIT_NPROC", 5000, 6000, 0 },
	{ RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE", 4096, 8192, 0 },
	{ RLIMIT_CORE, "RLIMIT_CORE", 0, 0, 0 },
};
#define N (int)(sizeof(limits) / sizeof(limits[0]))

int main(int argc, char **argv)
{
	struct rlimit want[N], now;
	int i;

	tgt_init(argc, argv);
	for (i = 0; i < N; i++) {
		if (getrlimit(limits[i].res, &now))
			tgt_die("getrlimit %s: %m", limits[i].name);
		want[i].rlim_cur = limits[i].cur;
		want[i].rlim_max = limits[i].keep_max ? now.rlim_max : limits[i].max;
		if (setrlimit(limits[i].res, &want[i]))
			tgt_die("setrlimit %s: %m", limits[i].name);
	}
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	for (i = 0; i < N; i++) {
		tgt_check(getrlimit(limits[i].res, &now) == 0, "getrlimit %s: %m", limits[i].name);
		tgt_check(now.rlim_cur == want[i].rlim_cur && now.rlim_max == want[i].rlim_max,
			  "%s: %llu/%llu, want %llu/%llu", limits[i].name,
			  (unsigned long long)now.rlim_cur, (unsigned long long)now.rlim_max,
			  (unsigned long long)want[i].rlim_cur, (unsigned long long)want[i].rlim_max);
	}
	tgt_finish();
}
