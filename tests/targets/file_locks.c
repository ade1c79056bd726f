/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: file locks of a parent and its child: each holds, on its own file
 *       (parent.db, child.db), a POSIX write lock on bytes 100-199 and a
 *       read lock on 300-EOF, and through a second open of that file an
 *       OFD write lock on 200-249; the parent holds a shared flock on
 *       shared.db, taken before the fork, so both hold that one lock
 *       (child=PID in the ready file); on SIGTERM each checks its own
 *       "lock:" lines in /proc/self/fdinfo (kind, type, pid, range, and
 *       no other), the child first, its verdict in its exit status */
#include "target.h"
#include <sys/file.h>
#include <sys/wait.h>

struct want {
	const char *kind, *type;
	int pid;                  /* -1: an OFD lock's */
	long long start;
	const char *end;
};

/* Every "lock:" line of fd is one of want[0..n), in that order. */
static int locks_are(int fd, const struct want *want, int n)
{
	char path[64], line[256], kind[16], adv[16], type[16], dev[64], end[32];
	long long start;
	int found = 0, id, pid;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "lock:", 5))
			continue;
		if (found >= n || sscanf(line + 5, " %d: %15s %15s %15s %d %63s %lld %31s", &id,
					 kind, adv, type, &pid, dev, &start, end) != 8)
			goto bad;
		if (strcmp(kind, want[found].kind) || strcmp(type, want[found].type) ||
		    pid != want[found].pid || start != want[found].start ||
		    strcmp(end, want[found].end))
			goto bad;
		found++;
	}
	fclose(f);
	return found == n;
bad:
	fclose(f);
	return 0;
}

static int open_file(const char *name)
{
	int fd = open(name, O_RDWR | O_CREAT, 0644);

	if (fd < 0)
		tgt_die("open %s: %m", name);
	return fd;
}

static void set_lock(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };

	if (fcntl(fd, cmd, &fl))
		tgt_die("fcntl %d on %lld+%lld: %m", cmd, (long long)start, (long long)len);
}

struct held {
	int posix, ofd;
};

/* A POSIX write lock on 100-199, a read lock on 300-EOF, and an OFD write
 * lock on 200-249 through a second open file of `name`. */
static struct held take(const char *name)
{
	struct held h = { open_file(name), open_file(name) };

	set_lock(h.posix, F_SETLK, F_WRLCK, 100, 100);
	set_lock(h.posix, F_SETLK, F_RDLCK, 300, 0);
	set_lock(h.ofd, F_OFD_SETLK, F_WRLCK, 200, 50);
	return h;
}

/* 0 when every lock of `h` and the shared flock (taken by `flocker`) are
 * as taken, else the number of the first that is not. */
static int check(struct held h, int shared, int flocker)
{
	int pid = getpid();
	struct want posix[] = { { "POSIX", "WRITE", pid, 100, "199" },
				{ "POSIX", "READ", pid, 300, "EOF" } };
	struct want ofd[] = { { "OFDLCK", "WRITE", -1, 200, "249" } };
	struct want flocked[] = { { "FLOCK", "READ", flocker, 0, "EOF" } };

	if (!locks_are(h.posix, posix, 2))
		return 1;
	if (!locks_are(h.ofd, ofd, 1))
		return 2;
	if (!locks_are(shared, flocked, 1))
		return 3;
	return 0;
}

static const char *what[] = { "", "the POSIX locks", "the OFD lock", "the shared flock" };

int main(int argc, char **argv)
{
	int shared, sync[2], status, bad;
	struct held h;
	pid_t child;
	char c;

	tgt_init(argc, argv);
	shared = open_file("shared.db");
	if (flock(shared, LOCK_SH | LOCK_NB))
		tgt_die("flock: %m");
	if (pipe(sync))
		tgt_die("pipe: %m");
	child = fork();
	if (child < 0)
		tgt_die("fork: %m");
	if (child == 0) {
		close(sync[0]);
		h = take("child.db");
		close(sync[1]);
		while (!tgt_stop)
			pause();
		_exit(check(h, shared, getppid()));
	}
	close(sync[1]);
	if (read(sync[0], &c, 1) != 0)
		tgt_die("the child failed to take its locks");
	close(sync[0]);
	h = take("parent.db");
	tgt_info("child=%d", child);
	tgt_ready();
	while (!tgt_stop)
		pause();
	kill(child, SIGTERM);
	tgt_check(waitpid(child, &status, 0) == child, "waitpid: %m");
	tgt_check(WIFEXITED(status) && WEXITSTATUS(status) < 4,
		  "the child did not exit by itself (status %#x)", status);
	bad = WIFEXITED(status) && WEXITSTATUS(status) < 4 ? WEXITSTATUS(status) : 0;
	tgt_check(!bad, "the child: %s are not as taken", what[bad]);
	bad = check(h, shared, getpid());
	tgt_check(!bad, "the parent: %s are not as taken", what[bad]);
	tgt_finish();
}
