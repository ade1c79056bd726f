/* engine-target: variants=dynamic-pie ; flags=-O2 ;
 * args: --append PATH --data PATH (default: append.txt, data.txt in the
 *       result file's directory, created by the target) ;
 * what: regular files and their open file descriptions: O_APPEND kept, a
 *       read offset kept and shared with a dup, /dev/null, FD_CLOEXEC kept
 *       per fd, cwd kept */
#include <libgen.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include "target.h"

#define DATA_SIZE 8192
#define DATA_HALF 4096
#define DUP_FD 40          /* a high fd number, not the next free one */

static unsigned char data_byte(size_t i)
{
	return (unsigned char)(i * 13 + (i >> 8));
}

static void write_data(const char *path)
{
	unsigned char buf[DATA_SIZE];
	size_t i;
	int fd;

	for (i = 0; i < DATA_SIZE; i++)
		buf[i] = data_byte(i);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, buf, DATA_SIZE) != DATA_SIZE)
		tgt_die("write %s: %m", path);
	close(fd);
}

static void check_read(int fd, size_t from, size_t len, const char *what)
{
	unsigned char buf[DATA_SIZE];
	ssize_t n;
	size_t i;

	n = read(fd, buf, len);
	if (!tgt_check(n == (ssize_t)len, "%s: read %zu bytes at %zu gave %zd (%m)",
		       what, len, from, n))
		return;
	for (i = 0; i < len; i++)
		if (!tgt_check(buf[i] == data_byte(from + i),
			       "%s: byte at offset %zu is %#x, want %#x", what,
			       from + i, buf[i], data_byte(from + i)))
			return;
}

static void check_cloexec(int fd, int want, const char *what)
{
	int fl = fcntl(fd, F_GETFD);

	tgt_check(fl >= 0 && !!(fl & FD_CLOEXEC) == want,
		  "%s (fd %d): F_GETFD %#x, FD_CLOEXEC should be %s", what, fd,
		  fl, want ? "set" : "clear");
}

int main(int argc, char **argv)
{
	char dir[PATH_MAX], cwd0[PATH_MAX], cwd[PATH_MAX], content[64];
	const char *app_path, *data_path;
	int fd_app, fd_data, fd_dup, fd_null, fd, fl;
	struct stat st, st2;
	ssize_t n;
	off_t off;

	tgt_init(argc, argv);
	snprintf(dir, sizeof(dir), "%s", tgt_result_path);
	if (chdir(dirname(dir)) || !getcwd(cwd0, sizeof(cwd0)))
		tgt_die("chdir to the result dir: %m");
	app_path = tgt_arg("append", "append.txt");
	data_path = tgt_arg("data", "data.txt");

	fd_app = open(app_path, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644);
	if (fd_app < 0 || write(fd_app, "one\n", 4) != 4)
		tgt_die("%s: %m", app_path);
	write_data(data_path);
	fd_data = open(data_path, O_RDONLY);
	if (fd_data < 0)
		tgt_die("open %s: %m", data_path);
	/* Read halfway: the offset lives in the open file description. */
	check_read(fd_data, 0, DATA_HALF, "data before dump");
	fd_dup = fcntl(fd_data, F_DUPFD, DUP_FD);
	fd_null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd_dup < 0 || fd_null < 0)
		tgt_die("dup / open /dev/null: %m");

	tgt_info("fd_app=%d", fd_app);
	tgt_info("fd_data=%d", fd_data);
	tgt_info("fd_dup=%d", fd_dup);
	tgt_info("fd_null=%d", fd_null);
	tgt_info("cwd=%s", cwd0);
	tgt_ready();
	tgt_wait_stop();

	/* cwd */
	tgt_check(getcwd(cwd, sizeof(cwd)) && !strcmp(cwd, cwd0),
		  "cwd is %s, was %s", cwd, cwd0);

	/* O_APPEND: a write after seeking to 0 must still land at the end. */
	fl = fcntl(fd_app, F_GETFL);
	tgt_check(fl >= 0 && (fl & O_ACCMODE) == O_WRONLY && (fl & O_APPEND),
		  "append fd: F_GETFL %#x, want O_WRONLY|O_APPEND", fl);
	lseek(fd_app, 0, SEEK_SET);
	tgt_check(write(fd_app, "two\n", 4) == 4, "append fd: write: %m");
	fd = open(app_path, O_RDONLY);
	n = fd < 0 ? -1 : read(fd, content, sizeof(content) - 1);
	content[n < 0 ? 0 : n] = 0;
	tgt_check(!strcmp(content, "one\ntwo\n"),
		  "append file holds \"%s\", want \"one\\ntwo\\n\"", content);
	if (fd >= 0)
		close(fd);

	/* Read offset, shared by the dup; and still the same file. */
	fl = fcntl(fd_data, F_GETFL);
	tgt_check(fl >= 0 && (fl & O_ACCMODE) == O_RDONLY,
		  "data fd: F_GETFL %#x, want O_RDONLY", fl);
	tgt_check(!fstat(fd_data, &st) && !stat(data_path, &st2) &&
		  st.st_ino == st2.st_ino && st.st_dev == st2.st_dev,
		  "data fd no longer refers to %s", data_path);
	off = lseek(fd_data, 0, SEEK_CUR);
	tgt_check(off == DATA_HALF, "data fd offset %lld, want %d",
		  (long long)off, DATA_HALF);
	off = lseek(fd_dup, 0, SEEK_CUR);
	tgt_check(off == DATA_HALF, "dup fd offset %lld, want %d",
		  (long long)off, DATA_HALF);
	check_read(fd_data, DATA_HALF, 2048, "data after restore");
	off = lseek(fd_dup, 0, SEEK_CUR);
	tgt_check(off == DATA_HALF + 2048,
		  "dup fd offset %lld after reading the original, want %d: "
		  "the two fds no longer share one open file",
		  (long long)off, DATA_HALF + 2048);
	check_read(fd_dup, DATA_HALF + 2048, DATA_SIZE - DATA_HALF - 2048,
		   "dup after restore");

	/* /dev/null */
	tgt_check(!fstat(fd_null, &st) && S_ISCHR(st.st_mode) &&
		  st.st_rdev == makedev(1, 3), "fd_null is not /dev/null");
	tgt_check(write(fd_null, "xyz", 3) == 3, "write /dev/null: %m");
	tgt_check(read(fd_null, content, 1) == 0, "read /dev/null: not EOF");

	/* FD_CLOEXEC is per fd, not per open file. */
	check_cloexec(fd_null, 1, "/dev/null");
	check_cloexec(fd_app, 0, "append");
	check_cloexec(fd_data, 0, "data");
	check_cloexec(fd_dup, 0, "dup");
	tgt_finish();
}
