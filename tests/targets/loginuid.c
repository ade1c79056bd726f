/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -pthread ;
 * what: the audit login uid and session id the target started with (the
 *       tests restore it from an engine whose own are others); after
 *       restore both read back the same, in the main thread and another.
 *       With --split the other thread sets its own (4243), which the dump
 *       refuses; with --new-session the session id is not checked (a test
 *       that sets the login uid: the kernel gives a new one) */
#include "target.h"
#include <pthread.h>

static char start_uid[32], start_sid[32], thread_uid[32];
static volatile int thread_ok, thread_up;

static void read_text(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	memset(buf, 0, size);
	if (fd < 0 || (n = read(fd, buf, size - 1)) <= 0)
		tgt_die("read %s: %m", path);
	close(fd);
}

static void *thread(void *arg)
{
	char path[64], uid[32];

	(void)arg;
	if (tgt_flag("split")) {
		int fd = open("/proc/thread-self/loginuid", O_WRONLY);

		if (fd < 0 || write(fd, "4243", 4) != 4)
			tgt_die("write /proc/thread-self/loginuid: %m");
		close(fd);
		strcpy(thread_uid, "4243");
	}
	thread_up = 1;
	while (!tgt_stop)
		tgt_msleep(5);
	snprintf(path, sizeof(path), "/proc/self/task/%ld/loginuid", (long)syscall(SYS_gettid));
	read_text(path, uid, sizeof(uid));
	thread_ok = !strcmp(uid, thread_uid);
	return NULL;
}

int main(int argc, char **argv)
{
	char uid[32], sid[32];
	pthread_t t;

	tgt_init(argc, argv);
	read_text("/proc/self/loginuid", start_uid, sizeof(start_uid));
	read_text("/proc/self/sessionid", start_sid, sizeof(start_sid));
	strcpy(thread_uid, start_uid);
	if (pthread_create(&t, NULL, thread, NULL))
		tgt_die("pthread_create");
	while (!thread_up)
		tgt_msleep(1);
	tgt_info("loginuid=%s", start_uid);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	pthread_join(t, NULL);
	read_text("/proc/self/loginuid", uid, sizeof(uid));
	read_text("/proc/self/sessionid", sid, sizeof(sid));
	tgt_check(!strcmp(uid, start_uid), "loginuid %s, want %s", uid, start_uid);
	tgt_check(tgt_flag("new-session") || !strcmp(sid, start_sid), "sessionid %s, want %s",
		  sid, start_sid);
	tgt_check(thread_ok, "the thread's loginuid is not %s", thread_uid);
	tgt_finish();
}
