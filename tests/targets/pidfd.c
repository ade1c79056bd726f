/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -pthread ;
 * what: pidfds: of a running child (signal 0 reaches it; after restore
 *       PIDFD_NONBLOCK's twin sees it still running (EAGAIN), then it is
 *       killed through the pidfd and waitid(P_PIDFD) gets CLD_KILLED), of a
 *       zombie child (waitid(P_PIDFD) gets exit 7), of a reaped child
 *       (pidfd_send_signal: ESRCH), one PIDFD_NONBLOCK (O_NONBLOCK) and, if
 *       the kernel has PIDFD_THREAD, one of our own main thread (O_EXCL);
 *       a child holding the same open pidfds checks them when told.
 *       --outside: also a pidfd of our parent (outside the tree), which the
 *       dump refuses; --thread: also a pidfd of a second thread, refused */
#include "target.h"

#include <pthread.h>
#include <sys/wait.h>

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static int pidfd_open(pid_t pid, unsigned int flags)
{
	return syscall(SYS_pidfd_open, pid, flags);
}

static int pidfd_send_signal(int fd, int sig)
{
	return syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0);
}

static char state_of(pid_t pid)
{
	char buf[512];
	const char *f = tgt_proc_stat(pid, 3, buf, sizeof(buf));

	return f ? f[0] : 0;
}

static pid_t thread_tid;

static void *idle(void *arg)
{
	(void)arg;
	thread_tid = gettid();
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	pid_t running, zombie, reaped, holder;
	int run_fd, nb_fd, zombie_fd, reaped_fd, thread_fd, holder_fd, extra_fd = -1;
	int answer[2];
	char verdict = 0;
	siginfo_t info;
	sigset_t usr1;

	tgt_init(argc, argv);
	running = fork();
	if (running == 0)
		for (;;)
			pause();
	zombie = fork();
	if (zombie == 0)
		_exit(7);
	reaped = fork();
	if (reaped == 0)
		_exit(0);
	run_fd = pidfd_open(running, 0);
	nb_fd = pidfd_open(running, PIDFD_NONBLOCK);
	zombie_fd = pidfd_open(zombie, 0);
	reaped_fd = pidfd_open(reaped, 0);
	if (run_fd < 0 || nb_fd < 0 || zombie_fd < 0 || reaped_fd < 0)
		tgt_die("pidfd_open: %m");
	if (waitpid(reaped, NULL, 0) != reaped)
		tgt_die("waitpid: %m");
	while (state_of(zombie) != 'Z')
		tgt_msleep(1);
	/* A child holding the same open pidfds: checks them when told. */
	if (pipe(answer))
		tgt_die("pipe: %m");
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	holder = fork();
	if (holder == 0) {
		int sig;

		sigwait(&usr1, &sig);
		verdict = pidfd_send_signal(run_fd, 0) == 0 &&
			  (fcntl(nb_fd, F_GETFL) & O_NONBLOCK) &&
			  pidfd_send_signal(reaped_fd, 0) < 0 && errno == ESRCH ? 'y' : 'n';
		_exit(write(answer[1], &verdict, 1) == 1 ? 0 : 1);
	}
	sigprocmask(SIG_UNBLOCK, &usr1, NULL);
	close(answer[1]);
	if ((holder_fd = pidfd_open(holder, 0)) < 0)
		tgt_die("pidfd_open holder: %m");
	thread_fd = pidfd_open(getpid(), PIDFD_THREAD);    /* EINVAL before 6.9 */
	if (tgt_flag("outside") && (extra_fd = pidfd_open(getppid(), 0)) < 0)
		tgt_die("pidfd_open parent: %m");
	if (tgt_flag("thread")) {
		pthread_t t;

		if (pthread_create(&t, NULL, idle, NULL))
			tgt_die("pthread_create");
		while (!__atomic_load_n(&thread_tid, __ATOMIC_SEQ_CST))
			tgt_msleep(1);
		if ((extra_fd = pidfd_open(thread_tid, PIDFD_THREAD)) < 0)
			tgt_die("pidfd_open thread: %m");
	}
	tgt_info("extra_fd=%d", extra_fd);
	tgt_ready();

	tgt_wait_stop();
	tgt_check(pidfd_send_signal(run_fd, 0) == 0, "signal 0 to running child: %m");
	tgt_check(!(fcntl(run_fd, F_GETFL) & O_NONBLOCK), "plain pidfd is O_NONBLOCK");
	tgt_check(fcntl(nb_fd, F_GETFD) & FD_CLOEXEC, "FD_CLOEXEC lost");
	/* Without PIDFD_NONBLOCK the waitid below would block. */
	if (tgt_check(fcntl(nb_fd, F_GETFL) & O_NONBLOCK, "PIDFD_NONBLOCK lost")) {
		errno = 0;
		tgt_check(waitid(P_PIDFD, nb_fd, &info, WEXITED) < 0 && errno == EAGAIN,
			  "waitid on a running child's PIDFD_NONBLOCK pidfd: %m, want EAGAIN");
	}
	tgt_check(pidfd_send_signal(holder_fd, SIGUSR1) == 0, "SIGUSR1 to holder: %m");
	tgt_check(read(answer[0], &verdict, 1) == 1 && verdict == 'y',
		  "the child holding the same pidfds says %c", verdict ? verdict : '-');
	tgt_check(waitid(P_PIDFD, holder_fd, &info, WEXITED) == 0 && info.si_status == 0,
		  "holder: %m, status %d", info.si_status);
	tgt_check(pidfd_send_signal(run_fd, SIGKILL) == 0, "SIGKILL to running child: %m");
	memset(&info, 0, sizeof(info));
	tgt_check(waitid(P_PIDFD, run_fd, &info, WEXITED) == 0, "waitid running: %m");
	tgt_check(info.si_pid == running && info.si_code == CLD_KILLED &&
		  info.si_status == SIGKILL, "running child: pid %d code %d status %d",
		  info.si_pid, info.si_code, info.si_status);
	memset(&info, 0, sizeof(info));
	tgt_check(waitid(P_PIDFD, zombie_fd, &info, WEXITED) == 0, "waitid zombie: %m");
	tgt_check(info.si_pid == zombie && info.si_code == CLD_EXITED && info.si_status == 7,
		  "zombie: pid %d code %d status %d, want exit 7", info.si_pid,
		  info.si_code, info.si_status);
	errno = 0;
	tgt_check(pidfd_send_signal(reaped_fd, 0) < 0 && errno == ESRCH,
		  "signal to reaped child: %m, want ESRCH");
	if (thread_fd >= 0) {
		tgt_check(fcntl(thread_fd, F_GETFL) & PIDFD_THREAD, "PIDFD_THREAD lost");
		tgt_check(pidfd_send_signal(thread_fd, 0) == 0, "signal 0 to own thread: %m");
	}
	tgt_finish();
}
