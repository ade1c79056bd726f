/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: unix sockets shared across two tasks: the parent listens on a path;
 *       the child holds the client end of a connection the parent accepted
 *       (bytes queued for it) and a connection not yet accepted; a seqpacket
 *       pair split between them carries a pipe's read end in flight; the
 *       child's dgram socket is connected to the parent's abstract-named one
 *       and queued a message. After restore the parent accepts the pending
 *       connection and everything talks across the two tasks. */
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <stddef.h>
#include "target.h"

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	strcpy(a->sun_path + abstract, name);
	return offsetof(struct sockaddr_un, sun_path) + strlen(name) + abstract;
}

static int expect(int fd, const char *want, int flags)
{
	char buf[64];
	int n = recv(fd, buf, sizeof(buf), flags);

	return n == (int)strlen(want) && !memcmp(buf, want, n);
}

static void send_fd(int sock, const char *msg, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { (void *)msg, strlen(msg) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &mh, 0) < 0)
		tgt_die("sendmsg: %m");
}

static int recv_fd(int sock, const char *want)
{
	char buf[64], cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	int n = recvmsg(sock, &mh, MSG_DONTWAIT), fd = -1;

	if (n != (int)strlen(want) || memcmp(buf, want, n))
		return -1;
	c = CMSG_FIRSTHDR(&mh);
	if (c && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

static int child(int c, int c2, int sp, int srvname_len, const char *abstract)
{
	struct sockaddr_un a;
	int d = socket(AF_UNIX, SOCK_DGRAM, 0), p[2];

	(void)srvname_len;
	if (connect(d, (struct sockaddr *)&a, mkaddr(&a, abstract, 1)) ||
	    send(d, "from-child", 10, 0) != 10 || pipe(p) || write(p[1], "piped", 5) != 5)
		return 10;
	send_fd(sp, "pipe", p[0]);
	close(p[0]);
	close(p[1]);
	return d;
}

int main(int argc, char **argv)
{
	int lst, c2, a2, sp[2], srv, sync[2], status, fd, c, d;
	char abstract[64], x;
	struct sockaddr_un a;
	pid_t pid;

	tgt_init(argc, argv);
	snprintf(abstract, sizeof(abstract), "engine-unixtree-%d", getpid());
	lst = socket(AF_UNIX, SOCK_STREAM, 0);
	srv = socket(AF_UNIX, SOCK_DGRAM, 0);
	c2 = socket(AF_UNIX, SOCK_STREAM, 0);
	if (bind(lst, (struct sockaddr *)&a, mkaddr(&a, "tree.sock", 0)) || listen(lst, 4) ||
	    bind(srv, (struct sockaddr *)&a, mkaddr(&a, abstract, 1)) ||
	    connect(c2, (struct sockaddr *)&a, mkaddr(&a, "tree.sock", 0)) ||
	    (a2 = accept(lst, NULL, NULL)) < 0 || send(a2, "a2-data", 7, 0) != 7 ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) || pipe(sync))
		tgt_die("setup: %m");
	pid = fork();
	if (pid < 0)
		tgt_die("fork: %m");
	if (pid == 0) {
		close(sp[0]);
		close(sync[0]);
		close(lst);
		close(srv);
		close(a2);
		c = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(c, (struct sockaddr *)&a, mkaddr(&a, "tree.sock", 0)))
			_exit(9);
		d = child(c, c2, sp[1], 0, abstract);
		if (d == 10)
			_exit(10);
		close(sync[1]);                     /* tells the parent we are set */
		tgt_wait_stop();
		if (!expect(c2, "a2-data", MSG_DONTWAIT))
			_exit(1);
		if (!expect(c, "late", 0))
			_exit(2);
		if (!expect(sp[1], "parent-says", 0))
			_exit(3);
		if (send(d, "child-again", 11, 0) != 11)
			_exit(4);
		_exit(0);
	}
	close(sp[1]);
	close(c2);
	close(sync[1]);
	if (read(sync[0], &x, 1) != 0)
		tgt_die("sync");
	close(sync[0]);
	tgt_ready();

	tgt_wait_stop();
	kill(pid, SIGTERM);
	c = accept(lst, NULL, NULL);
	tgt_check(c >= 0, "accept the pending connection: %m");
	tgt_check(send(c, "late", 4, 0) == 4, "send late: %m");
	tgt_check(send(sp[0], "parent-says", 11, 0) == 11, "seqpacket send: %m");
	fd = recv_fd(sp[0], "pipe");
	tgt_check(fd >= 0, "no pipe in flight");
	if (fd >= 0) {
		char buf[16];

		tgt_check(read(fd, buf, sizeof(buf)) == 5 && !memcmp(buf, "piped", 5),
			  "in-flight pipe: its bytes");
	}
	tgt_check(expect(srv, "from-child", MSG_DONTWAIT), "dgram from child");
	tgt_check(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status),
		  "child: status %#x", status);
	tgt_check(expect(srv, "child-again", MSG_DONTWAIT), "dgram from child after restore");
	tgt_finish();
}
