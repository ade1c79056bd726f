/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * args: --case symlink|chroot|cwd-deleted|proc-gone ;
 * what: symlink: an O_PATH|O_NOFOLLOW fd of a symlink itself (still the
 *       link, same target text); chroot: a task chrooted into a directory
 *       with its cwd below it and umask 0027 (refused at dump);
 *       cwd-deleted: a cwd (mode 0751) removed after chdir, umask 0023 (still
 *       deleted, same name and mode); proc-gone: an fd of the /proc/PID
 *       directory of a child reaped since (refused at dump) */
#include "target.h"
#include <sys/stat.h>
#include <sys/wait.h>

#define LINK_TEXT "nowhere/odd-target.7319"

int main(int argc, char **argv)
{
	char path[PATH_MAX + 64], buf[PATH_MAX];
	const char *what;
	struct stat sb, root_sb;
	int fd = -1, outside = -1;
	ssize_t n;
	pid_t child;

	tgt_init(argc, argv);
	what = tgt_arg("case", "symlink");
	if (!strcmp(what, "symlink")) {
		snprintf(path, sizeof(path), "%s.lnk", tgt_result_path);
		if (symlink(LINK_TEXT, path))
			tgt_die("symlink: %m");
		fd = open(path, O_PATH | O_NOFOLLOW);
	} else if (!strcmp(what, "chroot")) {
		/* the root is the work directory: the ready file is then "/ready" */
		snprintf(path, sizeof(path), "%s", tgt_result_path);
		*strrchr(path, '/') = 0;
		snprintf(buf, sizeof(buf), "%s/sub", path);
		if (mkdir(buf, 0711) || stat(path, &root_sb))
			tgt_die("mkdir: %m");
		/* kept open to get out again and write the verdict */
		outside = open("/", O_RDONLY | O_DIRECTORY);
		if (outside < 0 || chroot(path) || chdir("/sub"))
			tgt_die("chroot: %m");
		memmove(tgt_ready_path, tgt_ready_path + strlen(path),
			strlen(tgt_ready_path + strlen(path)) + 1);
		umask(0027);
		fd = 0;
	} else if (!strcmp(what, "cwd-deleted")) {
		snprintf(path, sizeof(path), "%s.cwd", tgt_result_path);
		if (mkdir(path, 0751) || chmod(path, 0751) || chdir(path) || rmdir(path))
			tgt_die("cwd: %m");
		umask(0023);
		fd = 0;
	} else if (!strcmp(what, "proc-gone")) {
		child = fork();
		if (child == 0)
			_exit(0);
		snprintf(path, sizeof(path), "/proc/%d", child);
		fd = open(path, O_RDONLY | O_DIRECTORY);
		if (waitpid(child, NULL, 0) != child)
			tgt_die("waitpid: %m");
	}
	if (fd < 0)
		tgt_die("case %s: %m", what);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	if (!strcmp(what, "symlink")) {
		tgt_check(fstatat(fd, "", &sb, AT_EMPTY_PATH) == 0 && S_ISLNK(sb.st_mode),
			  "fd is not the symlink itself (mode %o)", sb.st_mode);
		n = readlinkat(fd, "", buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = 0;
		tgt_check(!strcmp(buf, LINK_TEXT), "link text %s", buf);
		tgt_check((fcntl(fd, F_GETFL) & O_PATH) != 0, "O_PATH lost");
	} else if (!strcmp(what, "chroot")) {
		tgt_check(stat("/", &sb) == 0 && sb.st_ino == root_sb.st_ino &&
			  sb.st_dev == root_sb.st_dev, "root is not %s", path);
		tgt_check(getcwd(buf, sizeof(buf)) && !strcmp(buf, "/sub"), "cwd %s", buf);
		tgt_check(umask(0) == 0027, "umask lost");
		if (fchdir(outside) || chroot("."))
			tgt_die("out of the chroot: %m");
	} else if (!strcmp(what, "cwd-deleted")) {
		tgt_check(stat(".", &sb) == 0 && S_ISDIR(sb.st_mode) && sb.st_nlink == 0 &&
			  (sb.st_mode & 07777) == 0751, "cwd not a deleted directory of mode "
			  "751 (nlink %ld, mode %o)", (long)sb.st_nlink, sb.st_mode);
		n = readlink("/proc/self/cwd", buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = 0;
		strcat(path, " (deleted)");
		tgt_check(!strcmp(buf, path), "cwd is %s", buf);
		tgt_check(umask(0) == 0023, "umask lost");
		path[strlen(path) - strlen(" (deleted)")] = 0;
		tgt_check(access(path, F_OK) != 0, "%s exists again", path);
	}
	tgt_finish();
}
