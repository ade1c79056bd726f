/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -pthread ;
 * what: scheduling that differs per thread: the main thread SCHED_FIFO
 *       priority 17 with SCHED_RESET_ON_FORK, nice -4, on CPU 1 only
 *       (CPU 0 on a one-CPU machine); thread A nice 7 and timer slack
 *       123457 ns; thread B nice 3 and SCHED_BATCH. After restore each
 *       thread reads its own values back. With --plain nothing is changed
 *       but thread A's nice */
#include "target.h"
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif
#define SLACK_A 123457
#define NICE_MAIN (-4)
#define NICE_A 7
#define NICE_B 3
#define PRIO_MAIN 17

struct seen {
	volatile int set, nice, policy;
	volatile long slack;
};

static struct seen a, b;
static int plain;

static void look(struct seen *s)
{
	s->nice = getpriority(PRIO_PROCESS, syscall(SYS_gettid));
	s->policy = sched_getscheduler(0);
	s->slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
}

static void *thread_a(void *arg)
{
	(void)arg;
	if (setpriority(PRIO_PROCESS, syscall(SYS_gettid), NICE_A) ||
	    (!plain && prctl(PR_SET_TIMERSLACK, SLACK_A, 0, 0, 0)))
		return NULL;
	a.set = 1;
	while (!tgt_stop)
		tgt_msleep(5);
	look(&a);
	return NULL;
}

static void *thread_b(void *arg)
{
	struct sched_param p = { .sched_priority = 0 };

	(void)arg;
	if (setpriority(PRIO_PROCESS, syscall(SYS_gettid), NICE_B) ||
	    sched_setscheduler(0, SCHED_BATCH, &p))
		return NULL;
	b.set = 1;
	while (!tgt_stop)
		tgt_msleep(5);
	look(&b);
	return NULL;
}

int main(int argc, char **argv)
{
	struct sched_param p = { .sched_priority = PRIO_MAIN };
	int cpu = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? 1 : 0;
	long default_slack;
	pthread_t ta, tb;
	cpu_set_t set;
	int policy;

	tgt_init(argc, argv);
	plain = tgt_flag("plain");
	default_slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
	if (pthread_create(&ta, NULL, thread_a, NULL))
		tgt_die("pthread_create");
	if (!plain && pthread_create(&tb, NULL, thread_b, NULL))
		tgt_die("pthread_create");
	while (!a.set || (!plain && !b.set))
		tgt_msleep(1);
	if (!plain) {
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			tgt_die("sched_setaffinity: %m");
		if (setpriority(PRIO_PROCESS, 0, NICE_MAIN))
			tgt_die("setpriority: %m");
		if (sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &p))
			tgt_die("sched_setscheduler: %m");
	}
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	pthread_join(ta, NULL);
	if (!plain)
		pthread_join(tb, NULL);
	tgt_check(a.nice == NICE_A, "thread A: nice %d, want %d", a.nice, NICE_A);
	tgt_check(a.policy == SCHED_OTHER, "thread A: policy %#x, want SCHED_OTHER", a.policy);
	if (plain) {
		tgt_check(a.slack == default_slack, "thread A: timer slack %ld, want %ld",
			  a.slack, default_slack);
		tgt_finish();
	}
	tgt_check(a.slack == SLACK_A, "thread A: timer slack %ld, want %d", a.slack, SLACK_A);
	tgt_check(b.nice == NICE_B, "thread B: nice %d, want %d", b.nice, NICE_B);
	tgt_check(b.policy == SCHED_BATCH, "thread B: policy %#x, want SCHED_BATCH", b.policy);
	tgt_check(b.slack == default_slack, "thread B: timer slack %ld, want %ld",
		  b.slack, default_slack);
	policy = sched_getscheduler(0);
	tgt_check(policy == (SCHED_FIFO | SCHED_RESET_ON_FORK),
		  "main: policy %#x, want SCHED_FIFO|SCHED_RESET_ON_FORK", policy);
	tgt_check(sched_getparam(0, &p) == 0 && p.sched_priority == PRIO_MAIN,
		  "main: RT priority %d, want %d", p.sched_priority, PRIO_MAIN);
	tgt_check(getpriority(PRIO_PROCESS, 0) == NICE_MAIN, "main: nice %d, want %d",
		  getpriority(PRIO_PROCESS, 0), NICE_MAIN);
	tgt_check(sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) == 1 &&
		  CPU_ISSET(cpu, &set), "main: affinity is not CPU %d alone", cpu);
	tgt_finish();
}
