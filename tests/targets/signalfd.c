/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: signalfds: one on SIGUSR2|SIGWINCH (blocked) that is non-blocking
 *       and close-on-exec, with a SIGWINCH queued by sigqueue (value 0x5eed)
 *       before the dump and read through it after; one on SIGRTMIN+5 alone,
 *       blocking, nothing pending; masks, flags and the pending signal with
 *       its value come back, and SIGUSR2 sent after restore is read too */
#include "target.h"

#include <sys/signalfd.h>

static unsigned long long mask_of(int fd)
{
	char path[64], line[256];
	unsigned long long mask = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "sigmask: %llx", &mask) == 1)
			break;
	fclose(f);
	return mask;
}

int main(int argc, char **argv)
{
	struct signalfd_siginfo si;
	sigset_t both, rt;
	union sigval val = { .sival_int = 0x5eed };
	unsigned long long want_both, want_rt;
	int sfd, rtfd;
	ssize_t n;

	tgt_init(argc, argv);
	sigemptyset(&both);
	sigaddset(&both, SIGUSR2);
	sigaddset(&both, SIGWINCH);
	sigemptyset(&rt);
	sigaddset(&rt, SIGRTMIN + 5);
	sigprocmask(SIG_BLOCK, &both, NULL);
	sigprocmask(SIG_BLOCK, &rt, NULL);
	sfd = signalfd(-1, &both, SFD_NONBLOCK | SFD_CLOEXEC);
	rtfd = signalfd(-1, &rt, 0);
	if (sfd < 0 || rtfd < 0)
		tgt_die("signalfd: %m");
	if (sigqueue(getpid(), SIGWINCH, val))
		tgt_die("sigqueue: %m");
	want_both = (1ULL << (SIGUSR2 - 1)) | (1ULL << (SIGWINCH - 1));
	want_rt = 1ULL << (SIGRTMIN + 5 - 1);

	tgt_ready();
	tgt_wait_stop();

	tgt_check(mask_of(sfd) == want_both, "sfd mask %#llx, want %#llx",
		  mask_of(sfd), want_both);
	tgt_check(mask_of(rtfd) == want_rt, "rtfd mask %#llx, want %#llx",
		  mask_of(rtfd), want_rt);
	tgt_check((fcntl(sfd, F_GETFL) & O_NONBLOCK) && (fcntl(sfd, F_GETFD) & FD_CLOEXEC),
		  "sfd: O_NONBLOCK or FD_CLOEXEC lost");
	tgt_check(!(fcntl(rtfd, F_GETFL) & O_NONBLOCK) && !(fcntl(rtfd, F_GETFD) & FD_CLOEXEC),
		  "rtfd: flags changed");
	n = read(sfd, &si, sizeof(si));
	tgt_check(n == sizeof(si) && si.ssi_signo == SIGWINCH && si.ssi_int == 0x5eed &&
		  si.ssi_code == SI_QUEUE,
		  "pending SIGWINCH: read %zd, signo %u, int %#x, code %d", n,
		  n > 0 ? si.ssi_signo : 0, n > 0 ? si.ssi_int : 0, n > 0 ? si.ssi_code : 0);
	n = read(sfd, &si, sizeof(si));
	tgt_check(n < 0 && errno == EAGAIN, "sfd: a second signal pending (%zd)", n);
	kill(getpid(), SIGUSR2);
	n = read(sfd, &si, sizeof(si));
	tgt_check(n == sizeof(si) && si.ssi_signo == SIGUSR2, "SIGUSR2 after restore not read");
	fcntl(rtfd, F_SETFL, O_NONBLOCK);
	n = read(rtfd, &si, sizeof(si));
	tgt_check(n < 0 && errno == EAGAIN, "rtfd: a signal pending (%zd)", n);
	tgt_finish();
}
