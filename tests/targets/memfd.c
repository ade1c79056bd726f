/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a memfd with a distinctive name, owner and mode, 5 pages of which 3
 *       hold a pattern and 2 are holes, sealed F_SEAL_GROW|F_SEAL_SHRINK, at
 *       an odd offset; mapped MAP_SHARED by the parent and a child (the
 *       child echoes a word of the last page: each sees the other's writes
 *       after restore) and MAP_PRIVATE (a private
 *       write kept, not seen through the fd, unwritten pages still follow
 *       the file); a second open file on it (its own offset); a second
 *       memfd only mapped (its fd closed); the first
 *       memfd and a third one (held by no fd) in flight in an AF_UNIX
 *       queue. --hugetlb: a hugetlb memfd instead (refused at dump). */
#include "target.h"          /* first: it defines _GNU_SOURCE (memfd_create, F_ADD_SEALS) */
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

#define PG 4096
#define PAGES 5
#define NAME "engine memfd.7q"      /* a space and a dot: the name is kept whole */
#define MAPONLY "engine-maponly"
#define FLIGHT "engine-in-flight"
#define POS 1234
#define OWNER_UID 4321
#define OWNER_GID 8765
#define SEALS (F_SEAL_GROW | F_SEAL_SHRINK)

static unsigned char *sh;               /* the shared mapping of the first memfd */
static volatile unsigned long *echo;    /* in its last page, a hole until the child runs */

static int data_page(int p)
{
	return p == 0 || p == 1 || p == 3;      /* pages 2 and 4 are holes */
}

static unsigned char pattern(long off)
{
	return (unsigned char)(off * 7 + off / PG * 13 + 1);
}

static void send_fd(int sock, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { "m", 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

	memset(cbuf, 0, sizeof(cbuf));
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &mh, 0) != 1)
		tgt_die("sendmsg: %m");
}

static int recv_fd(int sock)
{
	char cbuf[CMSG_SPACE(sizeof(int))], byte;
	struct iovec iov = { &byte, 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	int fd = -1;

	if (recvmsg(sock, &mh, MSG_DONTWAIT) != 1)
		return -1;
	c = CMSG_FIRSTHDR(&mh);
	if (c && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

static void echo_loop(void)
{
	signal(SIGTERM, SIG_DFL);
	for (;;) {
		echo[1] = echo[0];
		usleep(1000);
	}
}

static int hugetlb_only(void)
{
	int fd = memfd_create("engine-huge", MFD_HUGETLB);

	if (fd < 0)
		tgt_die("memfd_create(MFD_HUGETLB): %m");
	tgt_ready();
	while (!tgt_stop)
		tgt_msleep(5);
	tgt_finish();
}

static void check_name(int fd, const char *name)
{
	char path[64], link[256], want[256];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	snprintf(want, sizeof(want), "/memfd:%s (deleted)", name);
	n = readlink(path, link, sizeof(link) - 1);
	link[n < 0 ? 0 : n] = 0;
	tgt_check(!strcmp(link, want), "fd %d links to '%s', not '%s'", fd, link, want);
}

static void check_first(int mfd)
{
	unsigned char buf[PG];
	struct stat st;
	long p, i;

	check_name(mfd, NAME);
	tgt_check(fcntl(mfd, F_GET_SEALS) == SEALS, "seals %#x, not %#x",
		  fcntl(mfd, F_GET_SEALS), SEALS);
	tgt_check(fstat(mfd, &st) == 0 && st.st_size == PAGES * PG, "size %ld", (long)st.st_size);
	tgt_check((st.st_mode & 07777) == 0640, "mode %o", st.st_mode & 07777);
	tgt_check(st.st_uid == OWNER_UID && st.st_gid == OWNER_GID, "owner %d:%d",
		  st.st_uid, st.st_gid);
	tgt_check(lseek(mfd, 0, SEEK_CUR) == POS, "offset %ld", (long)lseek(mfd, 0, SEEK_CUR));
	tgt_check(lseek(mfd, 0, SEEK_HOLE) == 2 * PG, "first hole at %ld",
		  (long)lseek(mfd, 0, SEEK_HOLE));
	tgt_check(lseek(mfd, 2 * PG, SEEK_DATA) == 3 * PG, "data after the hole at %ld",
		  (long)lseek(mfd, 2 * PG, SEEK_DATA));
	lseek(mfd, POS, SEEK_SET);
	for (p = 0; p < PAGES - 1; p++) {
		if (p == 1)
			continue;               /* written by the parent below */
		tgt_check(pread(mfd, buf, PG, p * PG) == PG, "pread page %ld: %m", p);
		for (i = 0; i < PG; i++)
			if (!tgt_check(buf[i] == (data_page(p) ? pattern(p * PG + i) : 0),
				       "byte %ld of page %ld", i, p))
				break;
	}
	errno = 0;
	tgt_check(ftruncate(mfd, (PAGES + 1) * PG) < 0 && errno == EPERM,
		  "F_SEAL_GROW does not hold: ftruncate %m");
}

int main(int argc, char **argv)
{
	int mfd, mfd2, mfd3, again, sk[2], got, status, ok;
	struct stat a, b;
	unsigned char *pv, *only;
	unsigned long token, i;
	char buf[32];
	pid_t kid;
	long p;

	tgt_init(argc, argv);
	if (tgt_flag("hugetlb"))
		return hugetlb_only();
	mfd = memfd_create(NAME, MFD_ALLOW_SEALING);
	mfd2 = memfd_create(MAPONLY, 0);
	mfd3 = memfd_create(FLIGHT, MFD_CLOEXEC);
	if (mfd < 0 || mfd2 < 0 || mfd3 < 0 || socketpair(AF_UNIX, SOCK_DGRAM, 0, sk))
		tgt_die("setup: %m");
	if (ftruncate(mfd, PAGES * PG) || fchmod(mfd, 0640) || fchown(mfd, OWNER_UID, OWNER_GID))
		tgt_die("setup: %m");
	for (p = 0; p < PAGES; p++) {
		unsigned char page[PG];

		for (i = 0; i < PG; i++)
			page[i] = pattern(p * PG + i);
		if (data_page(p) && pwrite(mfd, page, PG, p * PG) != PG)
			tgt_die("pwrite: %m");
	}
	if (fcntl(mfd, F_ADD_SEALS, SEALS) || lseek(mfd, POS, SEEK_SET) != POS)
		tgt_die("seal: %m");
	/* A second open file on the same memfd: its own offset and mode. */
	snprintf(buf, sizeof(buf), "/proc/self/fd/%d", mfd);
	again = open(buf, O_RDONLY);
	if (again < 0 || lseek(again, 99, SEEK_SET) != 99)
		tgt_die("reopen: %m");
	sh = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	pv = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
	if (ftruncate(mfd2, 2 * PG) || pwrite(mfd2, "only-mapped", 11, PG) != 11)
		tgt_die("setup: %m");
	only = mmap(NULL, 2 * PG, PROT_READ, MAP_SHARED, mfd2, 0);
	if (sh == MAP_FAILED || pv == MAP_FAILED || only == MAP_FAILED)
		tgt_die("mmap: %m");
	echo = (volatile unsigned long *)(sh + (PAGES - 1) * PG);
	close(mfd2);
	if (write(mfd3, "flying", 6) != 6)
		tgt_die("write: %m");
	memcpy(pv + PG, "private-cow", 11);      /* page 1 copied, page 0 still the file's */
	memcpy(sh + PG, "shared-write", 12);
	send_fd(sk[0], mfd);
	send_fd(sk[0], mfd3);
	close(mfd3);
	kid = fork();
	if (kid == 0)
		echo_loop();
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	check_first(mfd);
	tgt_check(fstat(mfd, &a) == 0 && fstat(again, &b) == 0 && a.st_ino == b.st_ino &&
		  lseek(again, 0, SEEK_CUR) == 99 && (fcntl(again, F_GETFL) & O_ACCMODE) == O_RDONLY,
		  "the second open file is not on the same memfd with its own offset and mode");
	tgt_check(pread(mfd, buf, 12, PG) == 12 && !memcmp(buf, "shared-write", 12),
		  "the shared write is not in the memfd");
	tgt_check(!memcmp(pv + PG, "private-cow", 11), "the private copy is lost");
	tgt_check(!memcmp(only + PG, "only-mapped", 11), "the mapped-only memfd lost its bytes");

	/* The shared mapping is still the memfd, and still the child's. */
	token = 0x6d656d6664000000UL + (unsigned long)getpid();
	echo[0] = token;
	tgt_check(*(unsigned long *)(pv + (PAGES - 1) * PG) == token, "the private mapping's "
		  "unwritten page does not follow the memfd");
	for (ok = 0, i = 0; i < 2000 && !ok; i++) {
		ok = echo[1] == token;
		tgt_msleep(1);
	}
	tgt_check(ok, "the child does not see the parent's write: not shared");
	kill(kid, SIGKILL);
	waitpid(kid, &status, 0);

	/* In flight: the same open file as mfd, and a memfd nobody held. */
	got = recv_fd(sk[1]);
	tgt_check(got >= 0, "no first fd in flight");
	if (got >= 0) {
		check_name(got, NAME);
		tgt_check(lseek(got, 0, SEEK_CUR) == POS && lseek(got, 77, SEEK_SET) == 77 &&
			  lseek(mfd, 0, SEEK_CUR) == 77, "the fd in flight is not mfd's open file");
	}
	got = recv_fd(sk[1]);
	tgt_check(got >= 0, "no second fd in flight");
	if (got >= 0) {
		check_name(got, FLIGHT);
		memset(buf, 0, sizeof(buf));
		tgt_check(pread(got, buf, 6, 0) == 6 && !memcmp(buf, "flying", 6) &&
			  lseek(got, 0, SEEK_CUR) == 6, "the memfd in flight lost its bytes");
	}
	tgt_finish();
}
