/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ; args: --data-kib N ;
 * what: deleted files kept with their holes and times: a 2 GiB file holding
 *       N KiB of data at odd offsets (holes stay holes, same size, same
 *       bytes, same mtime/atime to the microsecond), one whose directory was
 *       removed, one whose directory's name a regular file took since */
#include "target.h"
#include <sys/stat.h>

#define BIG (2L << 30)
#define MTIME_SEC 1234567890L
#define MTIME_NSEC 123456000L
#define ATIME_SEC 987654321L

static char base[PATH_MAX];

static int make_ghost(const char *path, const char *text)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0604);

	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		tgt_die("create %s: %m", path);
	if (unlink(path))
		tgt_die("unlink %s: %m", path);
	return fd;
}

static void check_small(int fd, const char *text, const char *what)
{
	char buf[64] = "", link[PATH_MAX], proc[64];
	struct stat sb;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	tgt_check(n == (ssize_t)strlen(text) && !strcmp(buf, text), "%s: read %zd bytes: %s",
		  what, n, buf);
	tgt_check(fstat(fd, &sb) == 0 && sb.st_nlink == 0, "%s: not deleted", what);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	tgt_check(strstr(link, "(deleted)") != NULL, "%s: fd points to %s", what, link);
}

int main(int argc, char **argv)
{
	long kib, off, got;
	struct timespec times[2] = { { ATIME_SEC, 0 }, { MTIME_SEC, MTIME_NSEC } };
	char path[PATH_MAX + 64], dir[PATH_MAX + 64], *chunk, *back;
	struct stat sb;
	int fd, gone, taken;

	tgt_init(argc, argv);
	kib = tgt_arg_long("data-kib", 512);
	snprintf(base, sizeof(base), "%s", tgt_result_path);
	chunk = malloc(kib * 1024);
	back = malloc(kib * 1024);
	for (off = 0; off < kib * 1024; off++)
		chunk[off] = (char)(off * 7 + 3);

	/* the sparse one: half the data at 1 GiB + 12345, half at the end */
	snprintf(path, sizeof(path), "%s.sparse", base);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (fd < 0 || ftruncate(fd, BIG))
		tgt_die("sparse: %m");
	if (pwrite(fd, chunk, kib * 512, (1L << 30) + 12345) != kib * 512 ||
	    pwrite(fd, chunk + kib * 512, kib * 512, BIG - kib * 512) != kib * 512)
		tgt_die("pwrite: %m");
	if (futimens(fd, times) || unlink(path) || lseek(fd, 77, SEEK_SET) != 77)
		tgt_die("times/unlink: %m");

	/* one in a directory removed since */
	snprintf(dir, sizeof(dir), "%s.gone", base);
	snprintf(path, sizeof(path), "%s/inner", dir);
	if (mkdir(dir, 0755))
		tgt_die("mkdir: %m");
	gone = make_ghost(path, "in a removed directory");
	if (rmdir(dir))
		tgt_die("rmdir: %m");

	/* one in a directory whose name a regular file took */
	snprintf(dir, sizeof(dir), "%s.taken", base);
	snprintf(path, sizeof(path), "%s/inner", dir);
	if (mkdir(dir, 0755))
		tgt_die("mkdir: %m");
	taken = make_ghost(path, "its directory's name taken");
	if (rmdir(dir))
		tgt_die("rmdir: %m");
	tgt_write_file(dir, "the file that took the name\n");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(fstat(fd, &sb) == 0 && sb.st_nlink == 0, "sparse: not deleted");
	tgt_check(sb.st_size == BIG, "sparse: size %ld", (long)sb.st_size);
	tgt_check(sb.st_blocks * 512 <= kib * 1024 + (64 << 10), "sparse: %ld blocks: holes filled",
		  (long)sb.st_blocks);
	tgt_check(sb.st_mtim.tv_sec == MTIME_SEC && sb.st_mtim.tv_nsec == MTIME_NSEC,
		  "sparse: mtime %ld.%09ld", (long)sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec);
	tgt_check(sb.st_atim.tv_sec == ATIME_SEC, "sparse: atime %ld", (long)sb.st_atim.tv_sec);
	tgt_check((sb.st_mode & 0777) == 0640, "sparse: mode %o", sb.st_mode & 0777);
	tgt_check(lseek(fd, 0, SEEK_CUR) == 77, "sparse: offset lost");
	got = lseek(fd, 0, SEEK_DATA);
	tgt_check(got >= (1L << 30) && got <= (1L << 30) + 12345, "sparse: first data at %ld", got);
	tgt_check(pread(fd, back, kib * 512, (1L << 30) + 12345) == kib * 512 &&
		  !memcmp(back, chunk, kib * 512), "sparse: first half differs");
	tgt_check(pread(fd, back, kib * 512, BIG - kib * 512) == kib * 512 &&
		  !memcmp(back, chunk + kib * 512, kib * 512), "sparse: second half differs");
	tgt_check(pread(fd, back, 4096, 1L << 20) == 4096 && !back[0] && !back[4095],
		  "sparse: a hole holds data");
	check_small(gone, "in a removed directory", "removed directory");
	check_small(taken, "its directory's name taken", "taken name");
	snprintf(path, sizeof(path), "%s.gone", base);
	tgt_check(access(path, F_OK) != 0, "%s exists again", path);
	tgt_check(stat(dir, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 28,
		  "the file that took the name is gone or changed");
	tgt_finish();
}
