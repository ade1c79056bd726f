/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -pthread ;
 * args: --threads N, counting threads besides the two below (default 4) ;
 * what: N threads counting in nanosleep loops, one blocked in a condition
 *       variable (futex) wait, one blocked in read() on a pipe; each keeps
 *       its tid, a __thread value and its own signal mask; after restore
 *       every thread checks itself, the counters move, the waits wake up,
 *       and every thread is joined */
#include <pthread.h>
#include <sys/syscall.h>
#include "target.h"

#define MAX 256

static __thread unsigned long tls_value;
static volatile unsigned long counts[MAX];
static pid_t tids[MAX + 2];
static volatile int checked[MAX + 2];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int woken;
static int pipefd[2];
static volatile int started;

static void check_self(long i)
{
	sigset_t mask;

	tgt_check(syscall(SYS_gettid) == tids[i], "thread %ld: tid %ld, want %d", i,
		  (long)syscall(SYS_gettid), tids[i]);
	tgt_check(tls_value == 1000 + (unsigned long)i, "thread %ld: tls %lu", i, tls_value);
	pthread_sigmask(SIG_BLOCK, NULL, &mask);
	/* thread i blocks signal SIGRTMIN + (i % 8): its own mask, kept */
	tgt_check(sigismember(&mask, SIGRTMIN + (int)(i % 8)) == 1, "thread %ld: mask lost", i);
	checked[i] = 1;
}

static void own_state(long i)
{
	sigset_t mask;

	tids[i] = syscall(SYS_gettid);
	tls_value = 1000 + i;
	sigemptyset(&mask);
	sigaddset(&mask, SIGRTMIN + (int)(i % 8));
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	__sync_fetch_and_add(&started, 1);
}

static void *counter(void *arg)
{
	long i = (long)arg;

	own_state(i);
	while (!tgt_stop) {
		counts[i]++;
		tgt_msleep(2);
	}
	check_self(i);
	return NULL;
}

static void *waiter(void *arg)
{
	long i = (long)arg;

	own_state(i);
	pthread_mutex_lock(&lock);
	while (!woken)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	check_self(i);
	return NULL;
}

static void *reader(void *arg)
{
	long i = (long)arg;
	char c = 0;

	own_state(i);
	tgt_check(read(pipefd[0], &c, 1) == 1 && c == 'w', "reader: read %m / %c", c);
	check_self(i);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t th[MAX + 2];
	unsigned long before[MAX];
	long n, i;

	tgt_init(argc, argv);
	n = atol(tgt_arg("threads", "4"));
	if (n < 1 || n > MAX)
		tgt_die("--threads 1..%d", MAX);
	if (pipe(pipefd))
		tgt_die("pipe: %m");
	for (i = 0; i < n; i++)
		pthread_create(&th[i], NULL, counter, (void *)i);
	pthread_create(&th[n], NULL, waiter, (void *)n);
	pthread_create(&th[n + 1], NULL, reader, (void *)(n + 1));
	while (started < n + 2)
		tgt_msleep(1);
	tgt_msleep(20);        /* let the waiters block in their syscalls */
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	for (i = 0; i < n; i++)
		before[i] = counts[i];
	pthread_mutex_lock(&lock);
	woken = 1;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	tgt_check(write(pipefd[1], "w", 1) == 1, "pipe write: %m");
	for (i = 0; i < n + 2; i++)
		pthread_join(th[i], NULL);
	for (i = 0; i < n + 2; i++)
		tgt_check(checked[i], "thread %ld never checked itself", i);
	for (i = 0; i < n; i++)
		tgt_check(counts[i] >= before[i], "thread %ld counter went back", i);
	tgt_finish();
}
