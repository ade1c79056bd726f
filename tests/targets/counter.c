/* engine-target: variants=dynamic-pie,dynamic-nopie,static-pie,static-nopie ;
 * flags=-O2 ;
 * what: a counter advancing in a 1 ms nanosleep loop; after restore the
 *       counter is intact and still moving, and getpid() is the pid at start */
#include "target.h"

/* Globals with their addresses in the ready file, so tests can corrupt them. */
static volatile unsigned long counter, mirror;
static volatile pid_t pid0;

static void tick(void)
{
	/* mirror == ~counter always holds between ticks: catches lost memory. */
	tgt_check(mirror == ~counter, "counter %lu and mirror %#lx disagree",
		  counter, mirror);
	counter++;
	mirror = ~counter;
	tgt_msleep(1);
}

int main(int argc, char **argv)
{
	unsigned long at_ready, at_stop;
	int i;

	tgt_init(argc, argv);
	/* Raw syscall: we want the kernel's answer, never a libc cache. */
	pid0 = syscall(SYS_getpid);
	mirror = ~counter;
	for (i = 0; i < 10; i++)
		tick();
	tgt_info("pid=%d", (int)pid0);
	tgt_info("counter=%p", (void *)&counter);
	tgt_info("mirror=%p", (void *)&mirror);
	tgt_info("pid0=%p", (void *)&pid0);
	tgt_ready();

	at_ready = counter;
	while (!tgt_stop)
		tick();
	at_stop = counter;
	tgt_check(at_stop > at_ready,
		  "counter did not advance after ready (%lu -> %lu)",
		  at_ready, at_stop);
	/* Still moving now, after the (possible) restore. */
	for (i = 0; i < 20; i++)
		tick();
	tgt_check(counter == at_stop + 20, "counter %lu, expected %lu",
		  counter, at_stop + 20);
	tgt_check(syscall(SYS_getpid) == pid0, "getpid syscall %ld != pid at start %d",
		  (long)syscall(SYS_getpid), (int)pid0);
	tgt_check(getpid() == pid0, "getpid() %d != pid at start %d",
		  (int)getpid(), (int)pid0);
	tgt_finish();
}
