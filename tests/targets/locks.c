/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: file locks, as sqlite in WAL mode holds them: a POSIX write lock
 *       on bytes 100-199 of posix.db, a shared flock on flock.db, an OFD
 *       write lock on the first byte of ofd.db and a read lease on
 *       lease.db (each lock only with --KIND, or all by default); with
 *       --mapped alone, an exclusive flock on mapped.db whose fd is closed
 *       once the file is mapped MAP_SHARED (the mapping keeps the lock); with
 *       --wait-flock/--wait-posix/--wait-ofd PATH, none of those: once
 *       ready, it waits for a write lock of that kind on PATH (which the
 *       test holds); on SIGTERM it checks each is still held (or was
 *       taken), through the fd's own "lock:" lines in /proc/self/fdinfo */
#include "target.h"
#include <sys/file.h>
#include <sys/mman.h>

static int has_lock(int fd, const char *kind, const char *mode)
{
	char path[64], line[256];
	int found = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "lock:", 5) && strstr(line, kind) && strstr(line, mode))
			found = 1;
	fclose(f);
	return found;
}

static int open_file(const char *name, int flags)
{
	int fd = open(name, flags | O_CREAT, 0644);

	if (fd < 0)
		tgt_die("open %s: %m", name);
	return fd;
}

/* Wait for a write lock of `kind` on the whole of `path`; its fd. */
static int wait_for(const char *kind, const char *path)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	int fd = open_file(path, O_RDWR), r;

	if (!strcmp(kind, "flock"))
		r = flock(fd, LOCK_EX);
	else
		r = fcntl(fd, strcmp(kind, "posix") ? F_OFD_SETLKW : F_SETLKW, &fl);
	if (r)
		tgt_die("waiting for a %s lock: %m", kind);
	return fd;
}

int main(int argc, char **argv)
{
	int all, posix = -1, flocked = -1, ofd = -1, leased = -1, waited = -1;
	const char *waits[] = { "flock", "posix", "ofd" }, *wait_kind = NULL, *wait_path = NULL;
	struct flock fl = { .l_whence = SEEK_SET };
	char name[32];
	unsigned i;

	tgt_init(argc, argv);
	for (i = 0; i < sizeof(waits) / sizeof(*waits); i++) {
		snprintf(name, sizeof(name), "wait-%s", waits[i]);
		if (tgt_arg(name, NULL))
			wait_kind = waits[i], wait_path = tgt_arg(name, NULL);
	}
	all = !tgt_flag("posix") && !tgt_flag("flock") && !tgt_flag("ofd") && !tgt_flag("lease")
	      && !wait_kind && !tgt_flag("mapped");
	if (tgt_flag("mapped")) {
		int fd = open_file("mapped.db", O_RDWR);

		if (ftruncate(fd, 4096) || flock(fd, LOCK_EX | LOCK_NB))
			tgt_die("mapped.db: %m");
		if (mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED)
			tgt_die("mmap: %m");
		close(fd);
	}
	if (all || tgt_flag("posix")) {
		posix = open_file("posix.db", O_RDWR);
		fl.l_type = F_WRLCK, fl.l_start = 100, fl.l_len = 100;
		if (fcntl(posix, F_SETLK, &fl))
			tgt_die("F_SETLK: %m");
	}
	if (all || tgt_flag("flock")) {
		flocked = open_file("flock.db", O_RDWR);
		if (flock(flocked, LOCK_SH | LOCK_NB))
			tgt_die("flock: %m");
	}
	if (all || tgt_flag("ofd")) {
		ofd = open_file("ofd.db", O_RDWR);
		fl.l_type = F_WRLCK, fl.l_start = 0, fl.l_len = 1, fl.l_pid = 0;
		if (fcntl(ofd, F_OFD_SETLK, &fl))
			tgt_die("F_OFD_SETLK: %m");
	}
	if (all || tgt_flag("lease")) {
		close(open_file("lease.db", O_RDWR));
		leased = open_file("lease.db", O_RDONLY);
		if (fcntl(leased, F_SETLEASE, F_RDLCK))
			tgt_die("F_SETLEASE: %m");
	}
	tgt_ready();
	if (wait_kind)
		waited = wait_for(wait_kind, wait_path);
	while (!tgt_stop)
		pause();
	if (posix >= 0)
		tgt_check(has_lock(posix, "POSIX", "WRITE"), "the POSIX lock is gone");
	if (flocked >= 0)
		tgt_check(has_lock(flocked, "FLOCK", "READ"), "the flock is gone");
	if (ofd >= 0)
		tgt_check(has_lock(ofd, "OFDLCK", "WRITE"), "the OFD lock is gone");
	if (leased >= 0)
		tgt_check(has_lock(leased, "LEASE", "READ"), "the lease is gone");
	if (tgt_flag("mapped")) {
		int fd = open_file("mapped.db", O_RDONLY);

		tgt_check(flock(fd, LOCK_SH | LOCK_NB) && errno == EWOULDBLOCK,
			  "the flock of the mapped file is gone");
		close(fd);
	}
	if (waited >= 0)
		tgt_check(has_lock(waited, !strcmp(wait_kind, "flock") ? "FLOCK" :
				   !strcmp(wait_kind, "posix") ? "POSIX" : "OFDLCK", "WRITE"),
			  "the %s lock waited for is not held", wait_kind);
	tgt_finish();
}
