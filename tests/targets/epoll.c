/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: epoll registrations and their flags. Default: one epoll with a pipe
 *       (EPOLLIN|EPOLLET|EPOLLWAKEUP, data 0x1122334455667788), a socketpair
 *       end (EPOLLONESHOT, fired before the dump so it is disabled), a
 *       listening unix socket (EPOLLEXCLUSIVE), a pipe registered as fd 40
 *       then dup2'd to 50 and 40 closed, and a level-triggered pipe with an
 *       unread byte; after restore /proc/self/fdinfo/EPFD lists each one with
 *       its fd, events and data, and epoll_wait reports each when ready (the
 *       LT one at once). --nested: an epoll inside an epoll, both shared with
 *       a child after fork: the child waits on both, and its EPOLL_CTL_MOD is
 *       seen by the parent (one file, registered once). --remote N,
 *       --orphan, --inflight: targets or the epoll held elsewhere (below). */
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include "target.h"

#define D_ET 0x1122334455667788ULL
#define D_ONESHOT 0xA5A5ULL
#define D_EXCL 0xE0E0ULL
#define D_DUPED 0xD00DULL
#define D_LT 0x4C54ULL
#define FROM 40
#define TO 50

/* The events and fd of the registration carrying `data` in EPFD's fdinfo;
 * how many registrations it lists in *count. */
static int registration(int epfd, uint64_t data, int *tfd, unsigned *events, int *count)
{
	char path[64], line[256];
	unsigned long long d;
	int found = 0, t;
	unsigned ev;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", epfd);
	f = fopen(path, "r");
	if (!f)
		return 0;
	*count = 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "tfd: %d events: %x data: %llx", &t, &ev, &d) != 3)
			continue;
		(*count)++;
		if (d == data) {
			*tfd = t;
			*events = ev;
			found = 1;
		}
	}
	fclose(f);
	return found;
}

struct reg {
	uint64_t data;
	int tfd;
	unsigned events;
};

/* What the kernel holds for `want`, before the dump (it adds EPOLLERR and
 * EPOLLHUP, and drops EPOLLWAKEUP without CONFIG_PM_SLEEP). */
static void snapshot(int epfd, struct reg *want)
{
	int count;

	if (!registration(epfd, want->data, &want->tfd, &want->events, &count))
		tgt_die("no registration with data %#llx", (unsigned long long)want->data);
}

static void check_registration(int epfd, const struct reg *want)
{
	unsigned events = 0;
	int tfd = -1, count;

	if (!tgt_check(registration(epfd, want->data, &tfd, &events, &count),
		       "registration with data %#llx is gone", (unsigned long long)want->data))
		return;
	tgt_check(tfd == want->tfd && events == want->events,
		  "data %#llx: fd %d events %#x, want fd %d events %#x",
		  (unsigned long long)want->data, tfd, events, want->tfd, want->events);
}

/* Whether epoll_wait reports `data` (with EPOLLIN) within a short wait. */
static int reported(int epfd, uint64_t data)
{
	struct epoll_event evs[16];
	int n, i;

	n = epoll_wait(epfd, evs, 16, 2000);
	for (i = 0; i < n; i++)
		if (evs[i].data.u64 == data && evs[i].events & EPOLLIN)
			return 1;
	return 0;
}

static void add(int epfd, int fd, unsigned events, uint64_t data)
{
	struct epoll_event ev = {.events = events, .data.u64 = data};

	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev))
		tgt_die("epoll_ctl add fd %d: %m", fd);
}

static void flat(void)
{
	struct reg regs[5] = {{.data = D_ET}, {.data = D_ONESHOT}, {.data = D_EXCL},
			      {.data = D_LT}, {.data = D_DUPED}};
	int ep, et[2], one[2], dup[2], lt[2], lsk, csk, count, i;
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct epoll_event ev;
	socklen_t len;

	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || pipe(et) || pipe(lt) || pipe(dup) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, one))
		tgt_die("setup: %m");
	lsk = socket(AF_UNIX, SOCK_STREAM, 0);
	snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "engine-epoll-%d", getpid());
	len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(addr.sun_path + 1);
	if (lsk < 0 || bind(lsk, (struct sockaddr *)&addr, len) || listen(lsk, 4))
		tgt_die("listener: %m");
	add(ep, et[0], EPOLLIN | EPOLLET | EPOLLWAKEUP, D_ET);
	add(ep, one[0], EPOLLIN | EPOLLONESHOT, D_ONESHOT);
	add(ep, lsk, EPOLLIN | EPOLLEXCLUSIVE, D_EXCL);
	add(ep, lt[0], EPOLLIN, D_LT);
	/* Registered as fd FROM, then only reachable through fd TO (both
	 * above the fds made here, so FROM stays free). */
	if (dup2(dup[0], FROM) != FROM)
		tgt_die("dup2: %m");
	close(dup[0]);
	add(ep, FROM, EPOLLIN, D_DUPED);
	if (dup2(FROM, TO) != TO)
		tgt_die("dup2: %m");
	close(FROM);
	/* Fire the one-shot (it is then disabled) and leave the LT pipe ready. */
	if (write(one[1], "1", 1) != 1 || !reported(ep, D_ONESHOT) || write(lt[1], "L", 1) != 1)
		tgt_die("oneshot/lt: %m");
	for (i = 0; i < 5; i++)
		snapshot(ep, &regs[i]);
	/* The fired one-shot is disabled: no event bit left but the flag. */
	if (regs[1].events != EPOLLONESHOT || regs[4].tfd != FROM ||
	    !(regs[0].events & EPOLLET) || !(regs[2].events & EPOLLEXCLUSIVE))
		tgt_die("unexpected registrations before the dump");
	tgt_ready();
	tgt_wait_stop();

	for (i = 0; i < 5; i++)
		check_registration(ep, &regs[i]);
	registration(ep, D_LT, &(int){0}, &(unsigned){0}, &count);
	tgt_check(count == 5, "%d registrations, want 5", count);

	tgt_check(reported(ep, D_LT), "the unread LT pipe is not reported");
	tgt_check(reported(ep, D_LT), "the unread LT pipe is not reported twice");
	tgt_check(write(et[1], "e", 1) == 1 && reported(ep, D_ET), "ET pipe not reported");
	tgt_check(!reported(ep, D_ET), "ET pipe reported twice for one write");
	tgt_check(write(dup[1], "d", 1) == 1 && reported(ep, D_DUPED), "dup'ed pipe not reported");
	tgt_check(!reported(ep, D_ONESHOT), "disabled one-shot reported");
	ev.events = EPOLLIN | EPOLLONESHOT;
	ev.data.u64 = D_ONESHOT;
	tgt_check(!epoll_ctl(ep, EPOLL_CTL_MOD, one[0], &ev) && reported(ep, D_ONESHOT),
		  "re-armed one-shot not reported: %m");
	csk = socket(AF_UNIX, SOCK_STREAM, 0);
	tgt_check(!connect(csk, (struct sockaddr *)&addr, len) && reported(ep, D_EXCL),
		  "listener's connection not reported: %m");
}

#define D_INNER 0x1AULL
#define D_OUTER 0x0EULL
#define D_CHILD 0x2BULL

static void nested(void)
{
	struct reg in = {.data = D_INNER}, out = {.data = D_OUTER}, child = {.data = D_CHILD};
	int inner, outer, p[2], go[2], status, count;
	struct epoll_event ev;
	pid_t kid;

	inner = epoll_create1(0);
	outer = epoll_create1(0);
	if (inner < 0 || outer < 0 || pipe(p) || pipe(go) || write(p[1], "n", 1) != 1)
		tgt_die("setup: %m");
	add(inner, p[0], EPOLLIN, D_INNER);
	add(outer, inner, EPOLLIN, D_OUTER);
	snapshot(inner, &in);
	snapshot(outer, &out);
	child.tfd = p[0];
	kid = fork();
	if (kid == 0) {
		char c;

		signal(SIGTERM, SIG_DFL);
		if (read(go[0], &c, 1) != 1)
			_exit(10);
		if (!reported(outer, D_OUTER))
			_exit(11);
		if (!reported(inner, D_INNER))
			_exit(12);
		ev.events = EPOLLIN;
		ev.data.u64 = D_CHILD;
		if (epoll_ctl(inner, EPOLL_CTL_MOD, p[0], &ev))
			_exit(13);
		_exit(0);
	}
	tgt_ready();
	tgt_wait_stop();
	tgt_check(write(go[1], "g", 1) == 1, "go: %m");
	tgt_check(waitpid(kid, &status, 0) == kid, "waitpid: %m");
	tgt_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed: status %#x", status);
	child.events = in.events;
	check_registration(inner, &child);
	registration(inner, D_CHILD, &(int){0}, &(unsigned){0}, &count);
	tgt_check(count == 1, "inner epoll: %d registrations, want 1 (shared with the child)",
		  count);
	check_registration(outer, &out);
	tgt_check(reported(outer, D_OUTER), "outer epoll: inner not reported");
}

/* Targets only held elsewhere. --remote N: a pipe held only by N children
 * (the epoll's task closed it after registering it); a child writes into it
 * after restore and the epoll reports it. --orphan: a socket only in flight
 * in an SCM_RIGHTS queue. --inflight: the epoll itself only in flight;
 * --sent: in flight and still held; --inflight --empty: an empty epoll in
 * flight, received after restore. */
#define D_REMOTE 0x5E3073ULL

static void send_fd(int sk, int fd)
{
	char c = 'f', cbuf[CMSG_SPACE(sizeof(int))] = {0};
	struct iovec iov = {.iov_base = &c, .iov_len = 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	if (sendmsg(sk, &msg, 0) != 1)
		tgt_die("sendmsg: %m");
}

static int recv_fd(int sk)
{
	char c, cbuf[CMSG_SPACE(sizeof(int))] = {0};
	struct iovec iov = {.iov_base = &c, .iov_len = 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *cm;
	int fd = -1;

	if (recvmsg(sk, &msg, MSG_DONTWAIT) != 1)
		return -1;
	cm = CMSG_FIRSTHDR(&msg);
	if (cm && cm->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	return fd;
}

static void elsewhere(void)
{
	int ep, x[2], q[2], go[2], done[2], i, status, kids = tgt_arg_long("remote", 0);
	pid_t pids[4];

	ep = epoll_create1(0);
	if (ep < 0 || pipe(x) || pipe(go) || pipe(done) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, q))
		tgt_die("setup: %m");
	add(ep, x[0], EPOLLIN, D_REMOTE);
	for (i = 0; i < kids && i < 4; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			char c;

			signal(SIGTERM, SIG_DFL);
			close(done[1]);
			if (read(go[0], &c, 1) != 1)
				_exit(10);
			if (i == 0 && write(x[1], "r", 1) != 1)
				_exit(11);
			/* Hold the pipe (the registration goes with its last fd)
			 * until the parent has seen it. */
			while (read(done[0], &c, 1) > 0)
				;
			_exit(0);
		}
	}
	if ((tgt_flag("inflight") && !tgt_flag("empty")) || tgt_flag("sent"))
		add(ep, go[0], EPOLLIN, D_REMOTE);	/* a target that stays */
	if (tgt_flag("orphan") || tgt_flag("inflight") || tgt_flag("sent"))
		send_fd(q[0], tgt_flag("orphan") ? x[0] : ep);
	close(x[0]);
	close(x[1]);
	if (tgt_flag("inflight"))
		close(ep);
	tgt_ready();
	tgt_wait_stop();
	for (i = 0; i < kids && i < 4; i++)
		tgt_check(write(go[1], "g", 1) == 1, "go: %m");
	if (kids)
		tgt_check(reported(ep, D_REMOTE), "the children's pipe is not reported");
	if (tgt_flag("empty")) {
		char path[64], link[64] = "";

		ep = recv_fd(q[1]);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", ep);
		tgt_check(ep >= 0 && readlink(path, link, sizeof(link) - 1) > 0 &&
			  !strcmp(link, "anon_inode:[eventpoll]"), "in-flight epoll: fd %d is %s",
			  ep, link);
		tgt_check(epoll_wait(ep, &(struct epoll_event){0}, 1, 0) == 0,
			  "in-flight epoll: not an empty epoll: %m");
	}
	close(done[1]);
	for (i = 0; i < kids && i < 4; i++)
		tgt_check(waitpid(pids[i], &status, 0) == pids[i] && WIFEXITED(status) &&
			  WEXITSTATUS(status) == 0, "child %d failed: %#x", i, status);
}

int main(int argc, char **argv)
{
	tgt_init(argc, argv);
	if (tgt_flag("nested"))
		nested();
	else if (tgt_arg("remote", NULL) || tgt_flag("orphan") || tgt_flag("inflight") ||
		 tgt_flag("sent"))
		elsewhere();
	else
		flat();
	tgt_finish();
}
