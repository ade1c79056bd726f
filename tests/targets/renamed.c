/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: files renamed after they were opened: one renamed in place
 *       (old.txt -> new.txt), one whose directory was renamed too
 *       (dir_a/inner.txt -> dir_b/moved.txt); /proc shows the new names, the
 *       dump takes them, and after restore each fd is the file at its new
 *       name, at its offset, with its flags; the old names stay gone */
#include <sys/stat.h>
#include "target.h"

#define CONTENT "0123456789abcdefghij"

static int make(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);

	if (fd < 0 || write(fd, CONTENT, 20) != 20)
		tgt_die("%s: %m", path);
	return fd;
}

static void check_same(int fd, const char *path, off_t want_off, const char *what)
{
	struct stat a, b;
	off_t off;
	char c;

	tgt_check(!fstat(fd, &a) && !stat(path, &b) && a.st_ino == b.st_ino &&
		  a.st_dev == b.st_dev, "%s: fd %d is not the file at %s", what, fd, path);
	off = lseek(fd, 0, SEEK_CUR);
	tgt_check(off == want_off, "%s: offset %lld, want %lld", what,
		  (long long)off, (long long)want_off);
	tgt_check(read(fd, &c, 1) == 1 && c == CONTENT[want_off],
		  "%s: byte at %lld is not '%c'", what, (long long)want_off, CONTENT[want_off]);
}

int main(int argc, char **argv)
{
	char dir[PATH_MAX], p[6][PATH_MAX + 32], moved[PATH_MAX + 32];
	int fd_top, fd_inner, fl;

	tgt_init(argc, argv);
	snprintf(dir, sizeof(dir), "%s", tgt_result_path);
	*strrchr(dir, '/') = 0;
	snprintf(p[0], sizeof(p[0]), "%s/old.txt", dir);
	snprintf(p[1], sizeof(p[1]), "%s/new.txt", dir);
	snprintf(p[2], sizeof(p[2]), "%s/dir_a", dir);
	snprintf(p[3], sizeof(p[3]), "%s/dir_a/inner.txt", dir);
	snprintf(p[4], sizeof(p[4]), "%s/dir_b", dir);
	snprintf(p[5], sizeof(p[5]), "%s/dir_b/moved.txt", dir);

	fd_top = make(p[0]);
	if (mkdir(p[2], 0750))
		tgt_die("mkdir: %m");
	fd_inner = make(p[3]);
	close(fd_inner);
	fd_inner = open(p[3], O_WRONLY | O_APPEND);
	if (fd_inner < 0 || lseek(fd_top, 7, SEEK_SET) != 7)
		tgt_die("reopen: %m");
	/* Rename the file; then the inner file, then its directory. */
	snprintf(moved, sizeof(moved), "%s/dir_a/moved.txt", dir);
	if (rename(p[0], p[1]) || rename(p[3], moved) || rename(p[2], p[4]))
		tgt_die("rename: %m");
	tgt_info("fd_top=%d", fd_top);
	tgt_info("fd_inner=%d", fd_inner);
	tgt_info("top=%s", p[1]);
	tgt_info("inner=%s", p[5]);
	tgt_ready();
	tgt_wait_stop();

	tgt_check(access(p[0], F_OK) && access(p[3], F_OK) && access(p[2], F_OK),
		  "an old name exists again");
	check_same(fd_top, p[1], 7, "renamed file");
	fl = fcntl(fd_top, F_GETFL);
	tgt_check((fl & O_ACCMODE) == O_RDWR, "renamed file: flags %#x, want O_RDWR", fl);

	fl = fcntl(fd_inner, F_GETFL);
	tgt_check((fl & O_ACCMODE) == O_WRONLY && (fl & O_APPEND),
		  "moved file: flags %#x, want O_WRONLY|O_APPEND", fl);
	tgt_check(write(fd_inner, "!", 1) == 1, "moved file: write: %m");
	{
		struct stat a, b;

		tgt_check(!fstat(fd_inner, &a) && !stat(p[5], &b) && a.st_ino == b.st_ino
			  && b.st_size == 21, "moved file: fd is not %s (or the append "
			  "did not land at its end)", p[5]);
	}
	tgt_finish();
}
