/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: interval timers: ITIMER_REAL every 20 ms (a SIGALRM handler counts
 *       them), ITIMER_VIRTUAL and ITIMER_PROF with long intervals. After
 *       restore SIGALRM still comes, and the other two keep their interval
 *       and a value no larger than it */
#include <sys/time.h>
#include "target.h"

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

static void arm(int which, long sec, long usec)
{
	struct itimerval it = { { sec, usec }, { sec, usec } };

	if (setitimer(which, &it, NULL))
		tgt_die("setitimer %d: %m", which);
}

static void check_interval(int which, const char *name, long sec, long usec)
{
	struct itimerval it;
	long long left, whole = sec * 1000000LL + usec;

	tgt_check(getitimer(which, &it) == 0, "getitimer %s: %m", name);
	tgt_check(it.it_interval.tv_sec == sec && it.it_interval.tv_usec == usec,
		  "%s: interval %ld.%06ld, want %ld.%06ld", name,
		  (long)it.it_interval.tv_sec, (long)it.it_interval.tv_usec, sec, usec);
	left = it.it_value.tv_sec * 1000000LL + it.it_value.tv_usec;
	/* CPU-time timers read back rounded up to a tick (4 ms here): 10 ms slack. */
	tgt_check(left > 0 && left <= whole + 10000, "%s: %lld us left of %lld", name, left,
		  whole);
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	sig_atomic_t seen;
	int i;

	tgt_init(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	if (sigaction(SIGALRM, &sa, NULL))
		tgt_die("sigaction: %m");
	arm(ITIMER_VIRTUAL, 7, 250000);
	arm(ITIMER_PROF, 9, 500000);
	arm(ITIMER_REAL, 0, 20000);
	while (alarms < 2)
		tgt_msleep(5);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	check_interval(ITIMER_VIRTUAL, "ITIMER_VIRTUAL", 7, 250000);
	check_interval(ITIMER_PROF, "ITIMER_PROF", 9, 500000);
	check_interval(ITIMER_REAL, "ITIMER_REAL", 0, 20000);
	seen = alarms;
	for (i = 0; i < 100 && alarms < seen + 3; i++)
		tgt_msleep(10);
	tgt_check(alarms >= seen + 3, "SIGALRM came %d times in a second, want 3",
		  (int)(alarms - seen));
	tgt_finish();
}
