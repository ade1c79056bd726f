/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a file deleted while open (content, mode and offset kept; it is
 *       still deleted after restore) */
#include <sys/stat.h>
#include "target.h"

int main(int argc, char **argv)
{
	char path[PATH_MAX + 16], buf[64], link[PATH_MAX], proc[64];
	struct stat sb;
	int fd, n;

	tgt_init(argc, argv);
	snprintf(path, sizeof(path), "%s.ghost", tgt_result_path);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (fd < 0 || write(fd, "0123456789abcdef", 16) != 16 || lseek(fd, 3, SEEK_SET) != 3)
		tgt_die("ghost file: %m");
	if (unlink(path))
		tgt_die("unlink: %m");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(fstat(fd, &sb) == 0 && sb.st_nlink == 0, "not deleted (nlink %ld)",
		  (long)sb.st_nlink);
	tgt_check((sb.st_mode & 0777) == 0640, "mode %o, want 640", sb.st_mode & 0777);
	n = read(fd, buf, 5);
	tgt_check(n == 5 && !memcmp(buf, "34567", 5), "read %d bytes at the kept offset", n);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	tgt_check(strstr(link, "(deleted)") != NULL, "fd points to %s", link);
	tgt_check(access(path, F_OK) != 0, "%s exists again", path);
	tgt_finish();
}
