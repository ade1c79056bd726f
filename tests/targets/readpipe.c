/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: blocked in read() on a pipe whose write end it holds (a restartable
 *       syscall: ERESTARTSYS under SA_RESTART); the SIGTERM handler writes a
 *       byte so the restarted read returns it; a second pipe keeps queued
 *       data across the dump */
#include "target.h"

#define QUEUED "queued pipe data\n"

static int p[2], q[2];

static void on_term(int sig)
{
	char c = 'T';

	(void)sig;
	tgt_stop = 1;
	if (write(p[1], &c, 1) != 1)
		tgt_stop = 2;
}

/* Read whatever is left without blocking; returns the count or -errno. */
static ssize_t drain(int fd, char *buf, size_t len)
{
	ssize_t n;

	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	n = read(fd, buf, len);
	return n < 0 ? -errno : n;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	char c = 0, buf[64];
	int stopped_at_return;
	ssize_t n;

	tgt_init(argc, argv);
	if (pipe(p) || pipe(q))
		tgt_die("pipe: %m");
	if (write(q[1], QUEUED, strlen(QUEUED)) != (ssize_t)strlen(QUEUED))
		tgt_die("write: %m");
	/* SA_RESTART: the read is restarted after the handler, not EINTR. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL))
		tgt_die("sigaction: %m");

	tgt_info("rfd=%d", p[0]);
	tgt_info("wfd=%d", p[1]);
	tgt_info("queue_rfd=%d", q[0]);
	tgt_info("queue_wfd=%d", q[1]);
	tgt_ready();

	n = read(p[0], &c, 1);
	stopped_at_return = tgt_stop;
	tgt_check(n == 1, "read returned %zd (%m)", n);
	tgt_check(stopped_at_return, "read returned '%c' before SIGTERM", c);
	tgt_wait_stop();
	tgt_check(tgt_stop == 1, "SIGTERM handler could not write to the pipe");
	tgt_check(c == 'T', "read returned '%c', want 'T'", c);

	/* Nothing else in that pipe; the queued data intact. */
	n = drain(p[0], buf, sizeof(buf));
	tgt_check(n == -EAGAIN, "pipe: drain after read gave %zd", n);
	n = drain(q[0], buf, sizeof(buf) - 1);
	buf[n < 0 ? 0 : n] = 0;
	tgt_check(!strcmp(buf, QUEUED), "queued pipe holds \"%s\"", buf);
	n = drain(q[0], buf, sizeof(buf));
	tgt_check(n == -EAGAIN, "queued pipe: more data after the message");

	/* Both ends still connected. */
	tgt_check(write(q[1], "x", 1) == 1 && drain(q[0], buf, 2) == 1 &&
		  buf[0] == 'x', "queued pipe: ends no longer connected");
	tgt_finish();
}
