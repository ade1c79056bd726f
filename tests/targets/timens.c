/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: in a time namespace of its own with CLOCK_MONOTONIC 400 days
 *       ahead of the host's (--offset SECONDS: another) and CLOCK_BOOTTIME
 *       1 day ahead, with a child there too; after restore both clocks went
 *       on from where they were (neither back nor leapt), the offsets are
 *       still there, and the child's clock agrees. */
#include "target.h"
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#define BOOT_OFFSET 86400L

static volatile sig_atomic_t asked;

static void on_usr1(int sig)
{
	(void)sig;
	asked = 1;
}

static long long now_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long monotonic_offset(void)
{
	char buf[256], *line;
	int fd = open("/proc/self/timens_offsets", O_RDONLY);
	ssize_t n;

	if (fd < 0)
		tgt_die("open timens_offsets: %m");
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		tgt_die("read timens_offsets: %m");
	buf[n] = 0;
	line = strstr(buf, "monotonic");
	return line ? strtol(line + strlen("monotonic"), NULL, 10) : -1;
}

int main(int argc, char **argv)
{
	long offset, after_offset;
	long long mono0, boot0, mono1, boot1, host0;
	char text[128];
	int pipefd[2], fd;
	pid_t child;

	tgt_init(argc, argv);
	offset = tgt_arg_long("offset", 400 * 86400L);
	host0 = now_ns(CLOCK_MONOTONIC);
	if (unshare(CLONE_NEWTIME))
		tgt_die("unshare(CLONE_NEWTIME): %m");
	snprintf(text, sizeof(text), "monotonic %ld 0\nboottime %ld 0\n", offset, BOOT_OFFSET);
	tgt_write_proc(getpid(), "timens_offsets", text);
	fd = open("/proc/self/ns/time_for_children", O_RDONLY);
	if (fd < 0 || setns(fd, CLONE_NEWTIME))
		tgt_die("setns(time_for_children): %m");
	close(fd);
	mono0 = now_ns(CLOCK_MONOTONIC);
	boot0 = now_ns(CLOCK_BOOTTIME);
	if (mono0 - host0 < offset * 1000000000LL)
		tgt_die("the offset did not apply");
	if (pipe(pipefd))
		tgt_die("pipe: %m");
	child = fork();
	if (child < 0)
		tgt_die("fork: %m");
	if (child == 0) {
		long long mono;
		struct sigaction sa;

		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_usr1;
		sigaction(SIGUSR1, &sa, NULL);
		close(pipefd[0]);
		while (!asked)
			pause();
		mono = now_ns(CLOCK_MONOTONIC);
		_exit(write(pipefd[1], &mono, sizeof(mono)) == sizeof(mono) ? 0 : 1);
	}
	close(pipefd[1]);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	mono1 = now_ns(CLOCK_MONOTONIC);
	boot1 = now_ns(CLOCK_BOOTTIME);
	after_offset = monotonic_offset();
	tgt_check(mono1 >= mono0, "CLOCK_MONOTONIC went back %lld s", (mono0 - mono1) / 1000000000LL);
	tgt_check(mono1 - mono0 < 600 * 1000000000LL, "CLOCK_MONOTONIC leapt %lld s",
		  (mono1 - mono0) / 1000000000LL);
	tgt_check(boot1 >= boot0 && boot1 - boot0 < 600 * 1000000000LL,
		  "CLOCK_BOOTTIME moved %lld s", (boot1 - boot0) / 1000000000LL);
	tgt_check(after_offset > offset - 600 && after_offset <= offset,
		  "monotonic offset %ld, was %ld", after_offset, offset);
	{
		long long kid_mono = 0;

		kill(child, SIGUSR1);
		if (read(pipefd[0], &kid_mono, sizeof(kid_mono)) != sizeof(kid_mono))
			tgt_check(0, "no clock from the child");
		else
			tgt_check(kid_mono >= mono1 && kid_mono - mono1 < 60 * 1000000000LL,
				  "the child's CLOCK_MONOTONIC %lld s off its parent's",
				  (kid_mono - mono1) / 1000000000LL);
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	tgt_finish();
}
