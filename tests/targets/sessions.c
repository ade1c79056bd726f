/* engine-target: variants=static-nopie ; flags=-O2 ;
 * args: --steps S, steps joined by commas: fI (task I forks a new task),
 *       sI (task I calls setsid), gI (setpgid(0, 0) in task I), jI:J (task
 *       I joins the group of task J), rI (task I becomes a child subreaper),
 *       xI (task I exits, a zombie whose children go to the nearest
 *       subreaper), wI (task I reaps its exited children), tasks numbered
 *       from 0 in creation order ;
 * what: builds a tree of sessions and process groups for the property test
 *       of pstree: every task runs the steps that are its own, in order,
 *       through a counter in shared memory, then waits. At ready, task 0
 *       records (state, ppid, pgid, sid) of every task and its own
 *       subreaper flag; on SIGTERM it checks them again from /proc (the
 *       test compares the whole tree too). Failing steps (EPERM...) are
 *       part of the program. */
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include "target.h"

#define MAXSTEPS 64
#define MAXTASKS 32

struct shared {
	volatile int step;
	volatile pid_t pid[MAXTASKS];
	volatile int dead[MAXTASKS];    /* 1: exited, 2: reaped */
	volatile int ntasks;
};

struct ids {
	char state;                     /* 0: no such pid */
	long ppid, pgid, sid;
};

static struct shared *sh;
static char ops[MAXSTEPS];
static int who[MAXSTEPS], arg[MAXSTEPS], nsteps;

static struct ids read_ids(pid_t pid)
{
	struct ids id = { 0, 0, 0, 0 };
	char buf[512];
	const char *p = tgt_proc_stat(pid, 3, buf, sizeof(buf));

	if (p)
		sscanf(p, "%c %ld %ld %ld", &id.state, &id.ppid, &id.pgid, &id.sid);
	return id;
}

/* A task that exited is a zombie (its children already reparented: the
 * kernel does that before the zombie shows) or reaped before any next
 * step runs, so every step sees the tree the program describes. */
static void settle(void)
{
	int t;

	for (t = 0; t < sh->ntasks; t++)
		while (sh->dead[t] == 1 && read_ids(sh->pid[t]).state != 'Z'
		       && read_ids(sh->pid[t]).state != 0)
			usleep(100);
}

static void run(int me)
{
	while (sh->step < nsteps) {
		int k = sh->step, t;

		if (who[k] != me) {
			usleep(200);
			continue;
		}
		settle();
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
		case 'r':
			prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
			break;
		case 'x':
			sh->dead[me] = 1;
			sh->step = k + 1;
			_exit(0);
		case 'w':
			/* Blocks on exited children only: others give ECHILD. */
			for (t = 0; t < sh->ntasks; t++)
				if (sh->dead[t] == 1 && waitpid(sh->pid[t], NULL, 0) == sh->pid[t])
					sh->dead[t] = 2;
			break;
		}
		sh->step = k + 1;
	}
}

int main(int argc, char **argv)
{
	static struct ids before[MAXTASKS];
	const char *s;
	int i, subreaper = 0, now = 0;

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
	settle();
	for (i = 0; i < sh->ntasks; i++)
		before[i] = read_ids(sh->pid[i]);
	prctl(PR_GET_CHILD_SUBREAPER, &subreaper, 0, 0, 0);
	tgt_ready();
	while (!tgt_stop)
		tgt_msleep(10);
	for (i = 0; i < sh->ntasks; i++) {
		struct ids a = before[i], b = read_ids(sh->pid[i]);

		tgt_check(a.state == 'Z' ? b.state == 'Z' : (a.state == 0) == (b.state == 0),
			  "task %d (pid %d): state %c, was %c", i, sh->pid[i],
			  b.state ? b.state : '-', a.state ? a.state : '-');
		tgt_check(a.ppid == b.ppid && a.pgid == b.pgid && a.sid == b.sid,
			  "task %d (pid %d): ppid/pgid/sid %ld/%ld/%ld, were %ld/%ld/%ld", i,
			  sh->pid[i], b.ppid, b.pgid, b.sid, a.ppid, a.pgid, a.sid);
	}
	prctl(PR_GET_CHILD_SUBREAPER, &now, 0, 0, 0);
	tgt_check(now == subreaper, "child subreaper flag %d, was %d", now, subreaper);
	tgt_finish();
}
