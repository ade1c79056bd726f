/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -pthread ;
 * what: parent-death signals (PR_SET_PDEATHSIG), per thread: a child M
 *       has a second thread whose own is SIGHUP, and forks a grandchild G
 *       whose own is SIGUSR1 (its handler writes to a pipe). After restore
 *       M's thread reads its own back, then the target kills M: G must get
 *       SIGUSR1 from the kernel. The target's own is SIGUSR2, which the
 *       engine must drop: its parent is not in the tree, and the engine,
 *       standing in for it, exits after the restore (the target would die
 *       of SIGUSR2 then, without a result) */
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include "target.h"

static int ask[2], answer[2], usr1[2];

static int own_pdeath(void)
{
	int sig = -1;

	if (prctl(PR_GET_PDEATHSIG, &sig))
		return -1;
	return sig;
}

static void *thread_main(void *arg)
{
	char c;
	int sig;

	(void)arg;
	if (prctl(PR_SET_PDEATHSIG, SIGHUP))
		tgt_die("thread: PR_SET_PDEATHSIG: %m");
	/* Blocked in read across the dump; each byte asks for our value. */
	while (read(ask[0], &c, 1) == 1) {
		sig = own_pdeath();
		if (write(answer[1], &sig, sizeof(sig)) != sizeof(sig))
			break;
	}
	return NULL;
}

static void on_usr1(int sig)
{
	char c = 'U';

	(void)sig;
	if (write(usr1[1], &c, 1) != 1)
		_exit(3);
}

int main(int argc, char **argv)
{
	pthread_t thread;
	pid_t middle, grandchild = 0;
	struct pollfd pfd;
	int sig, status;
	char c = 0;

	tgt_init(argc, argv);
	if (pipe(ask) || pipe(answer) || pipe(usr1))
		tgt_die("pipe: %m");
	/* A subreaper: G comes to us when M dies, and we reap it. */
	if (prctl(PR_SET_PDEATHSIG, SIGUSR2) || prctl(PR_SET_CHILD_SUBREAPER, 1))
		tgt_die("prctl: %m");
	middle = fork();
	if (middle == 0) {
		pid_t g = fork();

		if (g == 0) {
			signal(SIGUSR1, on_usr1);
			if (prctl(PR_SET_PDEATHSIG, SIGUSR1))
				_exit(2);
			g = getpid();
			if (write(answer[1], &g, sizeof(g)) != sizeof(g))
				_exit(2);
			for (;;)
				pause();
		}
		if (pthread_create(&thread, NULL, thread_main, NULL))
			_exit(2);
		for (;;)
			pause();
	}
	if (middle < 0 || read(answer[0], &grandchild, sizeof(grandchild)) != sizeof(grandchild))
		tgt_die("grandchild: %m");
	c = 'q';
	if (write(ask[1], &c, 1) != 1 || read(answer[0], &sig, sizeof(sig)) != sizeof(sig) ||
	    sig != SIGHUP)
		tgt_die("the thread of %d has no SIGHUP set", middle);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	tgt_check(write(ask[1], &c, 1) == 1 && read(answer[0], &sig, sizeof(sig)) == sizeof(sig),
		  "asking the thread: %m");
	tgt_check(sig == SIGHUP, "parent-death signal of the thread of %d: %d, want SIGHUP",
		  middle, sig);
	kill(middle, SIGKILL);
	tgt_check(waitpid(middle, &status, 0) == middle, "waitpid %d: %m", middle);
	pfd.fd = usr1[0];
	pfd.events = POLLIN;
	tgt_check(poll(&pfd, 1, 5000) == 1 && read(usr1[0], &c, 1) == 1 && c == 'U',
		  "grandchild %d got no SIGUSR1 when its parent died", grandchild);
	kill(grandchild, SIGKILL);
	tgt_check(waitpid(grandchild, &status, 0) == grandchild, "waitpid %d: %m", grandchild);
	tgt_finish();
}
