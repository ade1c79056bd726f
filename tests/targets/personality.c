/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -pthread ;
 * what: a personality with UNAME26 and ADDR_NO_RANDOMIZE, set before a
 *       second thread starts; after restore both threads read it back and
 *       uname(2) still says 2.6. With --split the thread sets another one
 *       (ADDR_COMPAT_LAYOUT), which the dump refuses */
#include <pthread.h>
#include <sys/personality.h>
#include <sys/utsname.h>
#include "target.h"

#define MAIN_PERS (UNAME26 | ADDR_NO_RANDOMIZE)
#define SPLIT_PERS (ADDR_COMPAT_LAYOUT)

static volatile int thread_ok, thread_set;
static int thread_pers = MAIN_PERS;

static void *thread(void *arg)
{
	(void)arg;
	if (thread_pers != MAIN_PERS && personality(thread_pers) < 0)
		return NULL;
	thread_set = 1;
	while (!tgt_stop)
		tgt_msleep(5);
	thread_ok = (personality(0xffffffff) == thread_pers);
	return NULL;
}

int main(int argc, char **argv)
{
	struct utsname u;
	pthread_t t;
	int now;

	tgt_init(argc, argv);
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--split"))
			thread_pers = SPLIT_PERS;
	if (personality(MAIN_PERS) < 0)
		tgt_die("personality: %m");
	if (pthread_create(&t, NULL, thread, NULL))
		tgt_die("pthread_create");
	while (!thread_set)
		tgt_msleep(1);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	pthread_join(t, NULL);
	now = personality(0xffffffff);
	tgt_check(now == MAIN_PERS, "personality %#x, want %#x", now, MAIN_PERS);
	tgt_check(thread_ok, "the thread's personality is not %#x", thread_pers);
	tgt_check(uname(&u) == 0 && strncmp(u.release, "2.6.", 4) == 0,
		  "uname release %s, want 2.6.x (UNAME26)", u.release);
	tgt_finish();
}
