/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: timerfds: CLOCK_BOOTTIME every 7.123 s, 600 s left; CLOCK_REALTIME
 *       absolute (TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET) an hour ahead,
 *       non-blocking and close-on-exec; CLOCK_MONOTONIC every 10 ms, expired
 *       many times and never read; CLOCK_BOOTTIME_ALARM, 1000 s left; one
 *       never armed; clocks, settime flags, intervals, the time left (less
 *       the time spent dumped, as CRIU) and every unread expiration come
 *       back, and the periodic one keeps firing */
#include "target.h"

#include <stdint.h>
#include <sys/timerfd.h>

#define MISSED_MIN 14           /* 10 ms periods in the 150 ms slept */

static int fdinfo_int(int fd, const char *key, int base)
{
	char path[64], line[256];
	size_t len = strlen(key);
	int v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, len) && line[len] == ':') {
			v = (int)strtol(line + len + 1, NULL, base);
			break;
		}
	fclose(f);
	return v;
}

static void arm(int fd, int flags, time_t vsec, long vnsec, time_t isec, long insec)
{
	struct itimerspec its = { { isec, insec }, { vsec, vnsec } };

	if (timerfd_settime(fd, flags, &its, NULL))
		tgt_die("timerfd_settime: %m");
}

static double left(int fd, struct itimerspec *its)
{
	if (timerfd_gettime(fd, its))
		return -1;
	return its->it_value.tv_sec + its->it_value.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	int boot, abs_rt, periodic, alarm_fd, idle;
	struct itimerspec its;
	struct timespec now;
	struct pollfd p;
	uint64_t ticks = 0;
	double l;
	ssize_t n;

	tgt_init(argc, argv);
	boot = timerfd_create(CLOCK_BOOTTIME, 0);
	abs_rt = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
	periodic = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	alarm_fd = timerfd_create(CLOCK_BOOTTIME_ALARM, 0);
	idle = timerfd_create(CLOCK_MONOTONIC, 0);
	if (boot < 0 || abs_rt < 0 || periodic < 0 || alarm_fd < 0 || idle < 0)
		tgt_die("timerfd_create: %m");
	arm(boot, 0, 600, 0, 7, 123000000);
	clock_gettime(CLOCK_REALTIME, &now);
	arm(abs_rt, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, now.tv_sec + 3600, 0, 0, 0);
	arm(periodic, 0, 0, 10000000, 0, 10000000);
	arm(alarm_fd, 0, 1000, 0, 0, 0);
	usleep(150000);

	tgt_ready();
	tgt_wait_stop();

	l = left(boot, &its);
	tgt_check(fdinfo_int(boot, "clockid", 10) == CLOCK_BOOTTIME, "boot: clock lost");
	tgt_check(its.it_interval.tv_sec == 7 && its.it_interval.tv_nsec == 123000000,
		  "boot: interval (%ld, %ld), want (7, 123000000)",
		  (long)its.it_interval.tv_sec, its.it_interval.tv_nsec);
	tgt_check(l > 540 && l <= 600, "boot: %.3f s left, want about 600", l);

	l = left(abs_rt, &its);
	tgt_check(fdinfo_int(abs_rt, "clockid", 10) == CLOCK_REALTIME, "abs: clock lost");
	tgt_check(fdinfo_int(abs_rt, "settime flags", 8) ==
		  (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET),
		  "abs: settime flags %o, want 3", fdinfo_int(abs_rt, "settime flags", 8));
	tgt_check(l > 3540 && l <= 3600, "abs: %.3f s left, want about 3600", l);
	tgt_check((fcntl(abs_rt, F_GETFL) & O_NONBLOCK) && (fcntl(abs_rt, F_GETFD) & FD_CLOEXEC),
		  "abs: O_NONBLOCK or FD_CLOEXEC lost");

	n = read(periodic, &ticks, sizeof(ticks));
	tgt_check(n == sizeof(ticks) && ticks >= MISSED_MIN,
		  "periodic: read %zd: %llu expirations, want >= %d", n,
		  (unsigned long long)ticks, MISSED_MIN);
	p.fd = periodic;
	p.events = POLLIN;
	tgt_check(poll(&p, 1, 1000) == 1, "periodic: no expiration after restore");
	tgt_check(read(periodic, &ticks, sizeof(ticks)) == sizeof(ticks) && ticks >= 1,
		  "periodic: stopped after restore");

	l = left(alarm_fd, &its);
	tgt_check(fdinfo_int(alarm_fd, "clockid", 10) == CLOCK_BOOTTIME_ALARM,
		  "alarm: clock lost");
	tgt_check(l > 940 && l <= 1000, "alarm: %.3f s left, want about 1000", l);
	tgt_check(!(fcntl(alarm_fd, F_GETFL) & O_NONBLOCK), "alarm: O_NONBLOCK appeared");

	l = left(idle, &its);
	tgt_check(l == 0 && !its.it_interval.tv_sec && !its.it_interval.tv_nsec,
		  "idle: armed after restore (%.3f s left)", l);
	tgt_finish();
}
