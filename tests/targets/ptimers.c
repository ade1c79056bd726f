/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -pthread ;
 * what: POSIX timers (timer_create), ids kept: a CLOCK_MONOTONIC one every
 *       20 ms sending SIGUSR1 with a value the handler checks; a
 *       CLOCK_REALTIME one with no signal (SIGEV_NONE), due in 100 s; a
 *       CLOCK_MONOTONIC one every 30 ms sent to a second thread alone
 *       (SIGEV_THREAD_ID, SIGUSR2). After restore each has its id, clock
 *       and interval, and the signals keep coming to the right thread */
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include "target.h"

#define VALUE ((void *)0x5eed)

static volatile sig_atomic_t ticks, wrong_value, thread_ticks, wrong_thread;
static volatile long wrong_ptr, wrong_code;
static pid_t thread_tid;

static void on_usr1(int sig, siginfo_t *info, void *ctx)
{
	(void)sig, (void)ctx;
	if (info->si_value.sival_ptr != VALUE && !wrong_value) {
		wrong_value = 1;
		wrong_ptr = (long)info->si_value.sival_ptr;
		wrong_code = info->si_code;
	}
	ticks++;
}

static void on_usr2(int sig)
{
	(void)sig;
	if (syscall(SYS_gettid) != thread_tid)
		wrong_thread = 1;
	thread_ticks++;
}

static void *thread_main(void *arg)
{
	sigset_t set;

	(void)arg;
	thread_tid = syscall(SYS_gettid);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	for (;;)
		pause();
	return NULL;
}

static timer_t make(clockid_t clock, int notify, int sig, pid_t tid, long sec, long nsec)
{
	struct sigevent sev;
	struct itimerspec its = { { sec, nsec }, { sec, nsec } };
	timer_t id;

	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = notify;
	sev.sigev_signo = sig;
	sev.sigev_value.sival_ptr = VALUE;
	sev._sigev_un._tid = tid;
	if (timer_create(clock, &sev, &id) || timer_settime(id, 0, &its, NULL))
		tgt_die("timer: %m");
	return id;
}

static void check(timer_t id, const char *name, long sec, long nsec)
{
	struct itimerspec its;
	long long left, whole = sec * 1000000000LL + nsec;

	tgt_check(timer_gettime(id, &its) == 0, "timer_gettime %s: %m", name);
	tgt_check(its.it_interval.tv_sec == sec && its.it_interval.tv_nsec == nsec,
		  "%s: interval %ld.%09ld, want %ld.%09ld", name, (long)its.it_interval.tv_sec,
		  its.it_interval.tv_nsec, sec, nsec);
	left = its.it_value.tv_sec * 1000000000LL + its.it_value.tv_nsec;
	tgt_check(left > 0 && left <= whole, "%s: %lld ns left of %lld", name, left, whole);
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	pthread_t thread;
	sigset_t set;
	timer_t every20, none, to_thread;
	sig_atomic_t seen, thread_seen;
	int i;

	tgt_init(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGUSR1, &sa, NULL) || signal(SIGUSR2, on_usr2) == SIG_ERR)
		tgt_die("sigaction: %m");
	/* SIGUSR2 only in the second thread. */
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (pthread_create(&thread, NULL, thread_main, NULL))
		tgt_die("pthread_create");
	while (!thread_tid)
		tgt_msleep(1);
	every20 = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR1, 0, 0, 20000000);
	none = make(CLOCK_REALTIME, SIGEV_NONE, 0, 0, 100, 0);
	to_thread = make(CLOCK_MONOTONIC, SIGEV_THREAD_ID, SIGUSR2, thread_tid, 0, 30000000);
	while (ticks < 2 || thread_ticks < 2)
		tgt_msleep(5);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	check(every20, "the 20 ms timer", 0, 20000000);
	check(none, "the SIGEV_NONE timer", 100, 0);
	check(to_thread, "the thread's timer", 0, 30000000);
	seen = ticks;
	thread_seen = thread_ticks;
	for (i = 0; i < 100 && (ticks < seen + 3 || thread_ticks < thread_seen + 3); i++)
		tgt_msleep(10);
	tgt_check(ticks >= seen + 3, "SIGUSR1 came %d times in a second", (int)(ticks - seen));
	tgt_check(thread_ticks >= thread_seen + 3, "SIGUSR2 came %d times in a second",
		  (int)(thread_ticks - thread_seen));
	tgt_check(!wrong_value, "a SIGUSR1 came with value %#lx, si_code %ld, not the timer's",
		  wrong_ptr, wrong_code);
	tgt_check(!wrong_thread, "a SIGUSR2 came to a thread it was not sent to");
	tgt_finish();
}
