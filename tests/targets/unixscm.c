/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: fds in flight (SCM_RIGHTS) in AF_UNIX queues, closed by the sender so
 *       no task holds them: a pipe's write end, a regular file at an offset,
 *       one end of another socketpair (itself holding a queued message) on a
 *       stream pair, after plain bytes; a pipe's read end with bytes in it on
 *       a dgram pair; an fd the task still holds (the same open file comes
 *       back); a socket in its own queue. After restore the receiver gets every fd and each one works. */
#include <sys/socket.h>
#include <sys/stat.h>
#include "target.h"

static void send_fds(int sock, const char *msg, int *fds, int n)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = { (void *)msg, strlen(msg) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = CMSG_SPACE(sizeof(int) * n) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

	memset(cbuf, 0, sizeof(cbuf));
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * n);
	memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
	if (sendmsg(sock, &mh, 0) != (ssize_t)strlen(msg))
		tgt_die("sendmsg: %m");
}

/* Receives one message; returns how many fds came with it. */
static int recv_fds(int sock, char *buf, int size, int *fds, int max, int *len)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = { buf, size };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	int n = 0;

	*len = recvmsg(sock, &mh, MSG_DONTWAIT);
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			if (n > max)
				n = max;
			memcpy(fds, CMSG_DATA(c), sizeof(int) * n);
		}
	return n;
}

int main(int argc, char **argv)
{
	int st[2], dg[2], pw[2], pr[2], other[2], me[2], file, kept, fds[4], n, len;
	char buf[64];
	struct stat a, b;

	tgt_init(argc, argv);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, other) || pipe(pw) || pipe(pr) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, me))
		tgt_die("setup: %m");
	file = open("data", O_RDWR | O_CREAT | O_TRUNC, 0600);
	kept = open("kept", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (file < 0 || kept < 0 || write(file, "0123456789", 10) != 10 ||
	    lseek(file, 4, SEEK_SET) != 4 || write(pr[1], "in-the-pipe", 11) != 11 ||
	    send(other[0], "queued-inside", 13, 0) != 13)
		tgt_die("setup: %m");

	if (send(st[0], "plain-", 6, 0) != 6)
		tgt_die("send: %m");
	fds[0] = pw[1];
	fds[1] = file;
	fds[2] = other[1];
	send_fds(st[0], "three-fds", fds, 3);
	send_fds(st[0], "kept-fd", &kept, 1);
	send_fds(dg[0], "pipe-read-end", &pr[0], 1);
	send_fds(me[0], "yourself", &me[1], 1);         /* a socket in its own queue */
	close(pw[1]);
	close(file);
	close(other[1]);
	close(pr[0]);
	close(pr[1]);
	tgt_info("receiver=%d", st[1]);
	tgt_ready();

	tgt_wait_stop();
	n = recv_fds(st[1], buf, 15, fds, 4, &len);
	tgt_check(n == 3 && len == 15 && !memcmp(buf, "plain-three-fds", 15),
		  "stream: %d fds, %d bytes", n, len);
	if (n == 3) {
		tgt_check(write(fds[0], "via-pipe", 8) == 8, "in-flight pipe: write: %m");
		tgt_check(read(pw[0], buf, sizeof(buf)) == 8 && !memcmp(buf, "via-pipe", 8),
			  "in-flight pipe: read");
		tgt_check(lseek(fds[1], 0, SEEK_CUR) == 4, "in-flight file offset");
		tgt_check(read(fds[1], buf, 6) == 6 && !memcmp(buf, "456789", 6),
			  "in-flight file content");
		len = recv(fds[2], buf, sizeof(buf), MSG_DONTWAIT);
		tgt_check(len == 13 && !memcmp(buf, "queued-inside", 13),
			  "in-flight socket: its queue (%d)", len);
		tgt_check(send(fds[2], "via-socket", 10, 0) == 10, "in-flight socket: send");
		tgt_check(recv(other[0], buf, sizeof(buf), MSG_DONTWAIT) == 10 &&
			  !memcmp(buf, "via-socket", 10), "in-flight socket: recv");
	}
	n = recv_fds(st[1], buf, sizeof(buf), fds, 4, &len);
	tgt_check(n == 1 && len == 7 && !memcmp(buf, "kept-fd", 7), "kept: %d fds, %d bytes", n, len);
	if (n == 1) {
		fstat(fds[0], &a);
		fstat(kept, &b);
		tgt_check(a.st_ino == b.st_ino, "kept fd: another file");
		lseek(kept, 3, SEEK_SET);
		tgt_check(lseek(fds[0], 0, SEEK_CUR) == 3, "kept fd: not the same open file");
	}
	n = recv_fds(dg[1], buf, sizeof(buf), fds, 4, &len);
	tgt_check(n == 1 && len == 13 && !memcmp(buf, "pipe-read-end", 13), "dgram: %d fds", n);
	if (n == 1)
		tgt_check(read(fds[0], buf, sizeof(buf)) == 11 && !memcmp(buf, "in-the-pipe", 11),
			  "in-flight pipe read end: its bytes");
	n = recv_fds(me[1], buf, sizeof(buf), fds, 4, &len);
	tgt_check(n == 1 && len == 8, "own queue: %d fds, %d bytes", n, len);
	if (n == 1) {
		fstat(fds[0], &a);
		fstat(me[1], &b);
		tgt_check(a.st_ino == b.st_ino, "a socket in its own queue came back as another");
	}
	tgt_finish();
}
