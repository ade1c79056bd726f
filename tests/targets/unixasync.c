/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: O_ASYNC on AF_UNIX sockets, as nginx's master/worker channels: a
 *       stream socketpair end armed by ioctl(FIOASYNC), owned by us
 *       (F_SETOWN) with SIGUSR1 (F_SETSIG): a write by the other end after
 *       restore delivers SIGUSR1; a datagram pair end with O_ASYNC set by
 *       F_SETFL and no owner keeps it too */
#include "target.h"
#include <sys/ioctl.h>
#include <sys/socket.h>

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1++;
}

static int wait_usr1(void)
{
	int i;

	for (i = 0; i < 500 && !got_usr1; i++)
		tgt_msleep(10);
	return got_usr1;
}

int main(int argc, char **argv)
{
	int s[2], d[2], on = 1;
	struct sigaction sa;
	char c;

	tgt_init(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		tgt_die("sigaction: %m");
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || socketpair(AF_UNIX, SOCK_DGRAM, 0, d))
		tgt_die("socketpair: %m");
	if (fcntl(s[0], F_SETOWN, getpid()) || fcntl(s[0], F_SETSIG, SIGUSR1) ||
	    ioctl(s[0], FIONBIO, &on) || ioctl(s[0], FIOASYNC, &on))
		tgt_die("stream: owner / FIOASYNC: %m");
	if (fcntl(d[0], F_SETFL, fcntl(d[0], F_GETFL) | O_ASYNC))
		tgt_die("dgram: O_ASYNC: %m");
	if (write(s[1], "x", 1) != 1 || !wait_usr1() || read(s[0], &c, 1) != 1)
		tgt_die("no SIGUSR1 before the dump");

	tgt_ready();
	tgt_wait_stop();

	tgt_check(fcntl(s[0], F_GETFL) & O_ASYNC, "stream: O_ASYNC lost");
	tgt_check(fcntl(s[0], F_GETFL) & O_NONBLOCK, "stream: O_NONBLOCK lost");
	tgt_check(fcntl(s[0], F_GETOWN) == getpid(), "stream: owner %d, want %d",
		  fcntl(s[0], F_GETOWN), getpid());
	tgt_check(fcntl(s[0], F_GETSIG) == SIGUSR1, "stream: F_GETSIG %d",
		  fcntl(s[0], F_GETSIG));
	tgt_check(!(fcntl(s[1], F_GETFL) & O_ASYNC), "stream: the peer gained O_ASYNC");
	tgt_check(fcntl(d[0], F_GETFL) & O_ASYNC, "dgram: O_ASYNC lost");
	got_usr1 = 0;
	tgt_check(write(s[1], "y", 1) == 1, "stream: write: %m");
	tgt_check(wait_usr1(), "stream: no SIGUSR1 after a write (owner or O_ASYNC lost)");
	tgt_check(read(s[0], &c, 1) == 1 && c == 'y', "stream: read back");
	tgt_finish();
}
