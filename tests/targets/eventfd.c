/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: eventfds: a counter of 0x1234567, a counter past 2^32
 *       (0x123456789ab, which eventfd()'s unsigned int initval cannot hold)
 *       that is non-blocking, a semaphore with 3 in it, a dup of the first
 *       (one counter for both), and an eventfd with 0x42 in flight in an
 *       AF_UNIX queue (SCM_RIGHTS, its own fd closed); each counter, the
 *       semaphore mode (reads of 1), O_NONBLOCK and FD_CLOEXEC come back */
#include "target.h"

#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

static uint64_t take(int fd)
{
	uint64_t v = 0;

	if (read(fd, &v, sizeof(v)) != sizeof(v))
		return (uint64_t)-1;
	return v;
}

static int flags_are(int fd, int fl, int fdfl)
{
	return (fcntl(fd, F_GETFL) & O_NONBLOCK) == fl &&
	       (fcntl(fd, F_GETFD) & FD_CLOEXEC) == fdfl;
}

static int recv_fd(int sk)
{
	char data, cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &data, 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	int fd;

	if (recvmsg(sk, &msg, MSG_DONTWAIT) != 1)
		return -1;
	c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_type != SCM_RIGHTS)
		return -1;
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

static void send_fd(int sk, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { "e", 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sk, &msg, 0) != 1)
		tgt_die("sendmsg: %m");
}

int main(int argc, char **argv)
{
	int plain, big, sem, dup_plain, flying, sk[2], got, i;
	uint64_t v;

	tgt_init(argc, argv);
	plain = eventfd(0x1234567, 0);
	big = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	sem = eventfd(3, EFD_SEMAPHORE);
	flying = eventfd(0x42, 0);
	if (plain < 0 || big < 0 || sem < 0 || flying < 0)
		tgt_die("eventfd: %m");
	v = 0x123456789abULL;
	if (write(big, &v, sizeof(v)) != sizeof(v))
		tgt_die("write: %m");
	dup_plain = dup(plain);
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sk))
		tgt_die("socketpair: %m");
	send_fd(sk[0], flying);
	close(flying);

	tgt_ready();
	tgt_wait_stop();

	tgt_check(flags_are(plain, 0, 0), "plain: flags changed");
	tgt_check(flags_are(big, O_NONBLOCK, FD_CLOEXEC), "big: O_NONBLOCK/FD_CLOEXEC lost");
	tgt_check(flags_are(sem, 0, 0), "sem: flags changed");
	v = take(dup_plain);
	tgt_check(v == 0x1234567, "plain counter is %#llx, want 0x1234567",
		  (unsigned long long)v);
	v = 1;
	tgt_check(write(plain, &v, sizeof(v)) == sizeof(v) && take(dup_plain) == 1,
		  "the dup does not share the plain counter");
	v = take(big);
	tgt_check(v == 0x123456789abULL, "big counter is %#llx, want 0x123456789ab",
		  (unsigned long long)v);
	tgt_check(read(big, &v, sizeof(v)) < 0 && errno == EAGAIN,
		  "big: empty read did not give EAGAIN");
	fcntl(sem, F_SETFL, O_NONBLOCK);     /* a plain counter must not hang us */
	for (i = 0; i < 3; i++) {
		v = take(sem);
		tgt_check(v == 1, "semaphore read %d gave %llu, want 1", i,
			  (unsigned long long)v);
	}
	tgt_check(read(sem, &v, sizeof(v)) < 0 && errno == EAGAIN,
		  "semaphore: more than 3 in it");
	got = recv_fd(sk[1]);
	tgt_check(got >= 0, "no eventfd in flight in the socket queue");
	if (got >= 0) {
		v = take(got);
		tgt_check(v == 0x42, "eventfd in flight: counter %#llx, want 0x42",
			  (unsigned long long)v);
	}
	tgt_finish();
}
