/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a dense fd table (3..26, nothing free in between) interleaving
 *       pipe ends and regular files, the two ends of each pipe far apart,
 *       shared with a child; after restore every fd is what it was (each
 *       pipe end joined to its own other end, each file its own content),
 *       so the restore's helper fds never land on (or get overwritten by) an
 *       fd of the image; with --high N one more fd at N (a dup of fd 4) */
#include <sys/stat.h>
#include <sys/wait.h>
#include "target.h"

#define NPIPES 6
#define NFILES 12
#define FIRST 3
#define TOTAL (2 * NPIPES + NFILES)

/* Slot i of the table: 'r'/'w' pipe k end, or 'f' file k. */
static char kind[TOTAL];
static int which[TOTAL];

static void layout(void)
{
	/* r0 f0 r1 f1 ... then w5 f6 w4 f7 ...: write ends after, reversed */
	int i, n = 0;

	for (i = 0; i < NPIPES; i++) {
		kind[n] = 'r', which[n++] = i;
		kind[n] = 'f', which[n++] = i;
	}
	for (i = NPIPES - 1; i >= 0; i--) {
		kind[n] = 'w', which[n++] = i;
		kind[n] = 'f', which[n++] = NPIPES + (NPIPES - 1 - i);
	}
}

static int check_table(const char *who)
{
	char buf[64], want[64];
	struct stat sb;
	int i, j, fd;

	for (i = 0; i < TOTAL; i++) {
		fd = FIRST + i;
		if (!tgt_check(!fstat(fd, &sb), "%s: fd %d closed", who, fd))
			return 1;
		if (kind[i] == 'f') {
			snprintf(want, sizeof(want), "file %02d", which[i]);
			tgt_check(S_ISREG(sb.st_mode) && pread(fd, buf, 7, 0) == 7 &&
				  !memcmp(buf, want, 7), "%s: fd %d is not \"%s\"", who, fd, want);
			continue;
		}
		tgt_check(S_ISFIFO(sb.st_mode), "%s: fd %d is not a pipe", who, fd);
		if (kind[i] != 'w')
			continue;
		/* Write through this end; its own read end must get it. */
		for (j = 0; j < TOTAL && !(kind[j] == 'r' && which[j] == which[i]); j++)
			;
		snprintf(want, sizeof(want), "%s %d", who, which[i]);
		tgt_check(write(fd, want, strlen(want)) == (ssize_t)strlen(want) &&
			  read(FIRST + j, buf, sizeof(buf)) == (ssize_t)strlen(want) &&
			  !memcmp(buf, want, strlen(want)), "%s: fd %d is not the write end "
			  "of the pipe read at fd %d", who, fd, FIRST + j);
	}
	return tgt_failed();
}

int main(int argc, char **argv)
{
	int i, fd, p[NPIPES][2], status, go[2];
	int high;
	char path[PATH_MAX + 32], buf[16];
	pid_t kid;

	tgt_init(argc, argv);
	layout();
	for (i = 0; i < NPIPES; i++)
		if (pipe(p[i]))
			tgt_die("pipe: %m");
	/* Park everything high, then lay it out densely from FIRST. */
	for (i = 0; i < TOTAL; i++) {
		if (kind[i] == 'f') {
			snprintf(path, sizeof(path), "%s.%02d", tgt_result_path, which[i]);
			fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
			snprintf(buf, sizeof(buf), "file %02d", which[i]);
			if (fd < 0 || write(fd, buf, 7) != 7)
				tgt_die("%s: %m", path);
		} else {
			fd = dup(p[which[i]][kind[i] == 'w']);
		}
		if (fd < 0 || dup2(fd, 100 + i) < 0)
			tgt_die("dup: %m");
		close(fd);
	}
	for (i = 0; i < NPIPES; i++)
		close(p[i][0]), close(p[i][1]);
	for (i = 0; i < TOTAL; i++)
		if (dup2(100 + i, FIRST + i) < 0 || close(100 + i))
			tgt_die("dup2: %m");
	if (pipe(go) || dup2(go[0], 60) < 0 || dup2(go[1], 61) < 0)
		tgt_die("go pipe: %m");
	close(go[0]), close(go[1]);

	/* --high N: one more fd far up (file 00 again), for a restore whose
	 * soft RLIMIT_NOFILE is below it. */
	high = (int)tgt_arg_long("high", 0);
	if (high && dup2(FIRST + 1, high) != high)
		tgt_die("dup2 to %d: %m", high);
	kid = fork();
	if (kid == 0) {
		char c;

		signal(SIGTERM, SIG_DFL);
		if (read(60, &c, 1) != 1)
			_exit(3);
		_exit(check_table("child") ? 1 : 0);
	}
	tgt_info("child=%d", kid);
	tgt_ready();
	tgt_wait_stop();

	check_table("parent");
	if (high) {
		tgt_check(pread(high, buf, 7, 0) == 7 && !memcmp(buf, "file 00", 7),
			  "fd %d is not \"file 00\"", high);
		tgt_check(lseek(high, 0, SEEK_CUR) == lseek(FIRST + 1, 0, SEEK_CUR) &&
			  lseek(high, 3, SEEK_SET) == 3 && lseek(FIRST + 1, 0, SEEK_CUR) == 3,
			  "fd %d no longer shares its open file with fd %d", high, FIRST + 1);
	}
	tgt_check(write(61, "g", 1) == 1, "go: %m");
	tgt_check(waitpid(kid, &status, 0) == kid && WIFEXITED(status) &&
		  WEXITSTATUS(status) == 0, "child found its table wrong (status %#x)",
		  status);
	tgt_finish();
}
