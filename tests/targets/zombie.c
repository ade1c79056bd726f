/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: two zombie children, one exited with status 42, one killed by
 *       SIGKILL, never reaped before the dump; after restore waitpid()
 *       on each pid returns that very status */
#include <sys/wait.h>
#include "target.h"

static char state_of(pid_t pid)
{
	char buf[512];
	const char *f = tgt_proc_stat(pid, 3, buf, sizeof(buf));

	return f ? f[0] : 0;
}

int main(int argc, char **argv)
{
	pid_t exited, killed;
	int status;

	tgt_init(argc, argv);
	exited = fork();
	if (exited == 0)
		_exit(42);
	killed = fork();
	if (killed == 0)
		for (;;)
			pause();
	kill(killed, SIGKILL);
	while (state_of(exited) != 'Z' || state_of(killed) != 'Z')
		tgt_msleep(1);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(state_of(exited) == 'Z', "child %d is not a zombie (%c)", exited, state_of(exited));
	tgt_check(waitpid(exited, &status, 0) == exited, "waitpid %d: %m", exited);
	tgt_check(WIFEXITED(status) && WEXITSTATUS(status) == 42, "child %d: status %#x, "
		  "want exit 42", exited, status);
	tgt_check(waitpid(killed, &status, 0) == killed, "waitpid %d: %m", killed);
	tgt_check(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child %d: status %#x, "
		  "want killed by SIGKILL", killed, status);
	tgt_finish();
}
