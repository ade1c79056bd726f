/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * args: --share files|fs ;
 * what: a child cloned with CLONE_FILES or CLONE_FS (one fd table, or one
 *       cwd/root/umask, with its parent): refused at dump, both left running */
#include "target.h"
#include <sched.h>
#include <sys/wait.h>

static char stack[64 << 10];

static int child_main(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return 0;
}

int main(int argc, char **argv)
{
	const char *share;
	int flags;
	pid_t child;

	tgt_init(argc, argv);
	share = tgt_arg("share", "files");
	flags = !strcmp(share, "fs") ? CLONE_FS : CLONE_FILES;
	umask(0037);
	child = clone(child_main, stack + sizeof(stack), flags | SIGCHLD, NULL);
	if (child < 0)
		tgt_die("clone: %m");
	tgt_info("child=%d", child);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(kill(child, 0) == 0, "the child is gone");
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	tgt_finish();
}
