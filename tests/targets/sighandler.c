/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * args: --pending (also leave a blocked SIGUSR2 pending across the dump) ;
 * what: signal state: a SIGUSR1 handler with SA_SIGINFO|SA_RESTART|SA_ONSTACK
 *       and a sa_mask, SIGHUP ignored, SIGUSR2 blocked, a sigaltstack;
 *       after restore the handler runs on the alt stack with the right mask */
#include <sys/mman.h>
#include "target.h"

#define ALTSTACK_SIZE (64 * 1024)
#define USR1_FLAGS (SA_SIGINFO | SA_RESTART | SA_ONSTACK)

static char *altstack;
static volatile sig_atomic_t usr1_count, usr1_on_altstack, usr1_mask_ok;
static volatile sig_atomic_t usr1_code;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	char here;
	sigset_t m;

	(void)sig;
	(void)uc;
	usr1_count++;
	usr1_code = si->si_code;
	usr1_on_altstack = &here >= altstack && &here < altstack + ALTSTACK_SIZE;
	/* In the handler: old mask + sa_mask + the signal itself. */
	sigprocmask(SIG_BLOCK, NULL, &m);
	usr1_mask_ok = sigismember(&m, SIGUSR1) && sigismember(&m, SIGINT) &&
		       sigismember(&m, SIGQUIT) && sigismember(&m, SIGUSR2);
}

static int same_set(const sigset_t *a, const sigset_t *b, int *which)
{
	int s;

	for (s = 1; s < SIGRTMAX; s++)
		if (sigismember(a, s) != sigismember(b, s)) {
			*which = s;
			return 0;
		}
	return 1;
}

static void check_action(int sig, void *want, const char *what)
{
	struct sigaction sa;

	sigaction(sig, NULL, &sa);
	tgt_check((void *)sa.sa_handler == want, "%s: handler %p, want %p",
		  what, (void *)sa.sa_handler, want);
}

int main(int argc, char **argv)
{
	struct sigaction sa, got;
	sigset_t block, cur, pend;
	stack_t ss, ss_got;
	int pending = 0, which = 0, before;

	tgt_init(argc, argv);
	pending = tgt_flag("pending");

	altstack = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (altstack == MAP_FAILED)
		tgt_die("mmap: %m");
	ss.ss_sp = altstack;
	ss.ss_size = ALTSTACK_SIZE;
	ss.ss_flags = 0;
	if (sigaltstack(&ss, NULL))
		tgt_die("sigaltstack: %m");

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = USR1_FLAGS;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGINT);
	sigaddset(&sa.sa_mask, SIGQUIT);
	if (sigaction(SIGUSR1, &sa, NULL) || signal(SIGHUP, SIG_IGN) == SIG_ERR)
		tgt_die("sigaction: %m");

	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	if (sigprocmask(SIG_SETMASK, &block, NULL))
		tgt_die("sigprocmask: %m");
	if (pending)
		raise(SIGUSR2);

	tgt_info("altstack=%p", (void *)altstack);
	tgt_ready();
	tgt_wait_stop();

	/* Dispositions, as sigaction() reports them. */
	sigaction(SIGUSR1, NULL, &got);
	tgt_check(got.sa_sigaction == on_usr1, "SIGUSR1 handler %p, want %p",
		  (void *)got.sa_sigaction, (void *)on_usr1);
	/* The kernel reports SA_RESTORER, which libc adds. */
	tgt_check((got.sa_flags & ~0x04000000) == USR1_FLAGS,
		  "SIGUSR1 sa_flags %#x, want %#x", got.sa_flags, USR1_FLAGS);
	/* same_set() first: argument evaluation order is unspecified. */
	if (!same_set(&got.sa_mask, &sa.sa_mask, &which))
		tgt_check(0, "SIGUSR1 sa_mask differs at signal %d", which);
	check_action(SIGHUP, (void *)SIG_IGN, "SIGHUP");
	check_action(SIGPIPE, (void *)SIG_DFL, "SIGPIPE");
	check_action(SIGTERM, (void *)tgt_on_term, "SIGTERM");

	/* Blocked set, pending set, alt stack. */
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (!same_set(&cur, &block, &which))
		tgt_check(0, "sigmask differs from {SIGUSR2} at signal %d",
			  which);
	sigpending(&pend);
	tgt_check(sigismember(&pend, SIGUSR2) == pending,
		  "SIGUSR2 %spending", pending ? "not " : "");
	tgt_check(!sigaltstack(NULL, &ss_got) && ss_got.ss_sp == altstack &&
		  ss_got.ss_size == ALTSTACK_SIZE && ss_got.ss_flags == 0,
		  "sigaltstack sp %p size %zu flags %#x, want %p %d 0",
		  ss_got.ss_sp, ss_got.ss_size, ss_got.ss_flags,
		  (void *)altstack, ALTSTACK_SIZE);

	/* The handler itself still works. */
	before = usr1_count;
	tgt_check(before == 0, "SIGUSR1 handler ran %d times before raise()",
		  before);
	raise(SIGUSR1);
	tgt_check(usr1_count == before + 1, "SIGUSR1 handler did not run");
	tgt_check(usr1_code == SI_TKILL, "SIGUSR1 si_code %d, want SI_TKILL",
		  usr1_code);
	tgt_check(usr1_on_altstack, "SIGUSR1 handler not on the alt stack");
	tgt_check(usr1_mask_ok, "mask inside the SIGUSR1 handler is wrong");
	tgt_finish();
}
