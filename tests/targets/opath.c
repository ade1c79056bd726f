/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: an O_PATH fd on a file and an O_DIRECTORY fd on a directory kept
 *       across a restore (flags, target, and usable with openat/fstatat) */
#include "target.h"
#include <sys/stat.h>

int main(int argc, char **argv)
{
	char path[PATH_MAX + 16], dir[PATH_MAX], *slash;
	struct stat sb;
	int pfd, dfd, fd, fl;

	tgt_init(argc, argv);
	snprintf(path, sizeof(path), "%s.opath", tgt_result_path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, "x", 1) != 1)
		tgt_die("create: %m");
	close(fd);
	snprintf(dir, sizeof(dir), "%s", tgt_result_path);
	slash = strrchr(dir, '/');
	*slash = 0;
	pfd = open(path, O_PATH);
	dfd = open(dir, O_RDONLY | O_DIRECTORY);
	if (pfd < 0 || dfd < 0)
		tgt_die("open: %m");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	fl = fcntl(pfd, F_GETFL);
	tgt_check(fl >= 0 && (fl & O_PATH), "O_PATH lost: flags %#x", fl);
	tgt_check(fstatat(pfd, "", &sb, AT_EMPTY_PATH) == 0 && sb.st_size == 1,
		  "O_PATH fd does not name the file");
	tgt_check(fstatat(dfd, strrchr(path, '/') + 1, &sb, 0) == 0 && S_ISREG(sb.st_mode),
		  "directory fd cannot find %s", strrchr(path, '/') + 1);
	tgt_finish();
}
