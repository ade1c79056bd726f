/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a pty pair. The parent holds the master (packet mode on, locked
 *       again once the slave is open); a child leads a session whose
 *       controlling terminal is the slave (fds 0-2 on it, /dev/tty at fd 9,
 *       exclusive mode); a grandchild in a group of its own is the
 *       terminal's foreground group. termios: ECHO off, VINTR 0x07, VMIN 5,
 *       2400 baud; window 33x101, 7x9 pixels; 19 bytes the child wrote that
 *       the master had not read at the dump. After SIGTERM each checks its
 *       part: the parent reads the bytes (after packet mode's status byte)
 *       then stops the child, which stops the grandchild; a child's failed
 *       check comes back as its exit code. */
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include "target.h"

#define QUEUED "queued-for-master\n"     /* ONLCR makes it end "\r\n" */
#define EXPECT "queued-for-master\r\n"

static int tty_nr_is(int fd)
{
	char buf[512];
	struct stat s;
	const char *f = tgt_proc_stat(getpid(), 7, buf, sizeof(buf));

	return f && !fstat(fd, &s) && strtoul(f, NULL, 10) == s.st_rdev;
}

static int grandchild(void)
{
	tgt_wait_stop();
	if (tcgetpgrp(0) != getpgrp())
		return 20;
	if (!tty_nr_is(0))
		return 21;
	return 0;
}

static int child(const char *name, int ready)
{
	struct termios t;
	struct winsize w;
	struct stat s;
	int fd, excl = 0, status;
	pid_t g;

	setsid();
	fd = open(name, O_RDWR);        /* no O_NOCTTY: it becomes ours */
	if (fd < 0)
		tgt_die("open %s: %m", name);
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
	fd = open("/dev/tty", O_RDWR);
	if (fd < 0 || dup2(fd, 9) != 9)
		tgt_die("open /dev/tty: %m");
	close(fd);
	if (ioctl(0, TIOCEXCL))
		tgt_die("TIOCEXCL: %m");
	g = fork();
	if (g == 0) {
		setpgid(0, 0);
		_exit(grandchild());
	}
	setpgid(g, g);
	if (tcsetpgrp(0, g))
		tgt_die("tcsetpgrp: %m");
	if (write(1, QUEUED, strlen(QUEUED)) != (ssize_t)strlen(QUEUED))
		tgt_die("write: %m");
	if (write(ready, "k", 1) != 1)
		tgt_die("write ready: %m");
	close(ready);

	tgt_wait_stop();
	if (getsid(0) != getpid() || tcgetsid(0) != getpid())
		return 10;
	if (tcgetpgrp(0) != g)
		return 11;
	if (fstat(9, &s) || s.st_rdev != makedev(5, 0) || ioctl(9, TIOCGWINSZ, &w))
		return 12;
	if (w.ws_row != 33 || w.ws_col != 101 || w.ws_xpixel != 7 || w.ws_ypixel != 9)
		return 13;
	if (tcgetattr(0, &t) || (t.c_lflag & ECHO) || t.c_cc[VINTR] != 7 || t.c_cc[VMIN] != 5
	    || cfgetospeed(&t) != B2400)
		return 14;
	if (ioctl(0, TIOCGEXCL, &excl) || !excl)
		return 15;
	if (!tty_nr_is(0))
		return 16;
	kill(g, SIGTERM);
	if (waitpid(g, &status, 0) != g || !WIFEXITED(status))
		return 17;
	return WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
	char name[64], buf[64];
	struct termios t;
	struct winsize w = {33, 101, 7, 9};
	int m, one = 1, index = -1, pkt = 0, lck = 0, status, sync[2];
	pid_t c;

	tgt_init(argc, argv);
	m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0 || grantpt(m) || unlockpt(m) || ptsname_r(m, name, sizeof(name)))
		tgt_die("posix_openpt: %m");
	if (tcgetattr(m, &t))
		tgt_die("tcgetattr: %m");
	t.c_lflag &= ~ECHO;
	t.c_cc[VINTR] = 7;
	t.c_cc[VMIN] = 5;
	cfsetospeed(&t, B2400);
	cfsetispeed(&t, B2400);
	if (tcsetattr(m, TCSANOW, &t) || ioctl(m, TIOCSWINSZ, &w) || ioctl(m, TIOCPKT, &one))
		tgt_die("termios: %m");
	if (pipe(sync))
		tgt_die("pipe: %m");
	c = fork();
	if (c == 0) {
		close(m);
		close(sync[0]);
		_exit(child(name, sync[1]));
	}
	close(sync[1]);
	if (read(sync[0], buf, 1) != 1)
		tgt_die("the child did not get ready");
	close(sync[0]);
	if (ioctl(m, TIOCSPTLCK, &one) || ioctl(m, TIOCGPTN, &index))
		tgt_die("TIOCSPTLCK: %m");
	tgt_info("pty=%d", index);
	tgt_ready();

	tgt_wait_stop();
	int now = -1;
	tgt_check(!ioctl(m, TIOCGPTN, &now) && now == index, "index %d, want %d", now, index);
	tgt_check(!ioctl(m, TIOCGPKT, &pkt) && pkt == 1, "packet mode %d", pkt);
	tgt_check(!ioctl(m, TIOCGPTLCK, &lck) && lck == 1, "pty lock %d", lck);
	int n = tgt_read_all(m, buf, 1 + strlen(EXPECT));
	tgt_check(n == 1 + (int)strlen(EXPECT) && buf[0] == TIOCPKT_DATA
		  && !memcmp(buf + 1, EXPECT, strlen(EXPECT)),
		  "read %d bytes from the master, want the packet byte and %s", n, EXPECT);
	kill(c, SIGTERM);
	tgt_check(waitpid(c, &status, 0) == c && WIFEXITED(status) && !WEXITSTATUS(status),
		  "child check %d failed (status %#x)", WEXITSTATUS(status), status);
	tgt_finish();
}
