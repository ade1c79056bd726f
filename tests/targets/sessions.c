/* engine-target: variants=static-nopie ; flags=-O2 ;
 * args: --steps S, steps joined by commas: fI (task I forks a new task),
 *       sI (task I calls setsid), gI (setpgid(0, 0) in task I), jI:J (task
 *       I joins the group of task J), tasks numbered from 0 in creation order ;
 * what: builds a tree of sessions and process groups for the property test
 *       of pstree: every task runs the steps that are its own, in order,
 *       through a counter in shared memory, then waits; the test compares
 *       (pid, ppid, pgid, sid) of every task before the dump and after
 *       restore. Failing steps (EPERM...) are part of the program. */
#include <sys/mman.h>
#include "target.h"

#define MAXSTEPS 64
#define MAXTASKS 32

struct shared {
	volatile int step;
	volatile pid_t pid[MAXTASKS];
	volatile int ntasks;
};

static struct shared *sh;
static char ops[MAXSTEPS];
static int who[MAXSTEPS], arg[MAXSTEPS], nsteps;

static void run(int me)
{
	while (sh->step < nsteps) {
		int k = sh->step;

		if (who[k] != me) {
			usleep(200);
			continue;
		}
		switch (ops[k]) {
		case 'f': {
			int child = sh->ntasks;
			pid_t pid = fork();

			if (pid == 0) {
				sh->pid[child] = getpid();
				sh->ntasks = child + 1;
				sh->step = k + 1;
				run(child);
				for (;;)
					pause();
			}
			while (sh->step == k)
				usleep(100);
			continue;
		}
		case 's':
			setsid();
			break;
		case 'g':
			setpgid(0, 0);
			break;
		case 'j':
			if (arg[k] < sh->ntasks)
				setpgid(0, getpgid(sh->pid[arg[k]]));
			break;
		}
		sh->step = k + 1;
	}
}

int main(int argc, char **argv)
{
	const char *s;
	int i;


	tgt_init(argc, argv);
	s = tgt_arg("steps", "");
	while (*s && nsteps < MAXSTEPS) {
		char *end;

		ops[nsteps] = *s++;
		who[nsteps] = strtol(s, &end, 10);
		s = end;
		if (*s == ':') {
			arg[nsteps] = strtol(s + 1, &end, 10);
			s = end;
		}
		if (*s == ',')
			s++;
		nsteps++;
	}
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		tgt_die("mmap: %m");
	sh->pid[0] = getpid();
	sh->ntasks = 1;
	run(0);
	for (i = 0; i < 1000 && sh->step < nsteps; i++)
		usleep(1000);
	tgt_ready();
	while (!tgt_stop)
		tgt_msleep(10);
	tgt_finish();
}
