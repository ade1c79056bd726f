/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -pthread ;
 * what: a seccomp sandbox that checks itself after restore. Default: two
 *       stacked filters under no_new_privs, the first making getppid fail
 *       with EL2HLT, the second (SECCOMP_FILTER_FLAG_LOG) killing the
 *       process on syslog(2), which a forked child tries (it must die of
 *       SIGSYS). --fork: a child inherits both and checks itself too.
 *       --nomunmap: a third filter makes munmap fail with EPERM, as the
 *       engine's last calls into the restored task would (the scratch
 *       page's munmap); they must not be filtered.
 *       --threads: two more threads, one adding its own filter
 *       (getpgrp fails with EDOM there only). --tsync: the filter is
 *       installed after the threads start, with SECCOMP_FILTER_FLAG_TSYNC.
 *       --strict: a second thread in strict mode, which answers over pipes.
 *       --nnp: no_new_privs alone. Refused at dump: --notify (a filter
 *       that returns SECCOMP_RET_USER_NOTIF) and --dropcap (a filter
 *       without no_new_privs, then CAP_SYS_ADMIN dropped). Each thread
 *       checks its own /proc status: Seccomp, Seccomp_filters, NoNewPrivs */
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include "target.h"

#define NTHREADS 2

struct thread {
	pthread_t id;
	int own_filter;                  /* installs the getpgrp filter itself */
	volatile int set, ok;
	char why[128];
};

static struct thread threads[NTHREADS];
static int with_threads, tsync;
static const char *want_nnp = "1";
static int strict_ask[2], strict_answer[2];
static volatile pid_t strict_tid;

/* "Key:\tvalue" of /proc/thread-self/status (or of PATH) equals want */
static int status_is(const char *path, const char *key, const char *want)
{
	char line[256], *value;
	size_t n = strlen(key);
	int found = 0;
	FILE *f = fopen(path ? path : "/proc/thread-self/status", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, key, n) || line[n] != ':')
			continue;
		value = line + n + 1;
		value += strspn(value, " \t");
		value[strcspn(value, "\n")] = 0;
		found = !strcmp(value, want);
	}
	fclose(f);
	return found;
}

/* a filter taking `action` on syscall nr, allowing every other */
static int install(int nr, unsigned int action, unsigned int flags)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, action),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };

	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static int fails_with(long r, int err)
{
	return r == -1 && errno == err;
}

/* what every thread under the getppid filter checks of itself */
static const char *check_self(int filters, int own_filter)
{
	char n[16];

	snprintf(n, sizeof(n), "%d", filters);
	errno = 0;
	if (!status_is(NULL, "Seccomp", "2"))
		return "Seccomp is not 2 (filter mode)";
	if (!status_is(NULL, "Seccomp_filters", n))
		return "Seccomp_filters is not as installed";
	if (!status_is(NULL, "NoNewPrivs", want_nnp))
		return "NoNewPrivs is not as set";
	if (!fails_with(syscall(SYS_getppid), EL2HLT))
		return "getppid does not fail with EL2HLT";
	if (own_filter != fails_with(syscall(SYS_getpgrp), EDOM))
		return own_filter ? "getpgrp does not fail with EDOM" : "getpgrp fails";
	return NULL;
}

static void *thread_main(void *arg)
{
	struct thread *t = arg;
	const char *why;

	if (t->own_filter && install(SYS_getpgrp, SECCOMP_RET_ERRNO | EDOM, 0))
		return NULL;
	t->set = 1;
	while (!tgt_stop)
		tgt_msleep(5);
	why = check_self(1 + t->own_filter, t->own_filter);
	snprintf(t->why, sizeof(t->why), "%s", why ? why : "");
	t->ok = !why;
	return NULL;
}

/* strict mode: only read, write, exit and sigreturn from here on */
static void *strict_main(void *arg)
{
	char c;
	sigset_t all;

	(void)arg;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	strict_tid = syscall(SYS_gettid);
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0))
		strict_tid = -1;
	while (syscall(SYS_read, strict_ask[0], &c, 1) != 1)
		;
	syscall(SYS_write, strict_answer[1], "S", 1);
	syscall(SYS_exit, 0);          /* no libc cleanup: it would make other calls */
	return NULL;
}

static void start_threads(void)
{
	int i;

	for (i = 0; i < NTHREADS; i++) {
		threads[i].own_filter = (i == 0 && !tsync);
		if (pthread_create(&threads[i].id, NULL, thread_main, &threads[i]))
			tgt_die("pthread_create");
	}
	for (i = 0; i < NTHREADS; i++)
		while (!threads[i].set)
			tgt_msleep(1);
}

static void drop_sys_admin(void)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];

	if (syscall(SYS_capget, &hdr, data))
		tgt_die("capget: %m");
	data[0].effective &= ~(1u << CAP_SYS_ADMIN);
	if (syscall(SYS_capset, &hdr, data))
		tgt_die("capset: %m");
}

static void check_kill_filter(void)
{
	int status;
	pid_t child = fork();

	if (child == 0) {
		syscall(SYS_syslog, 10, NULL, 0);     /* SYSLOG_ACTION_SIZE_BUFFER */
		_exit(0);
	}
	tgt_check(child > 0 && waitpid(child, &status, 0) == child && WIFSIGNALED(status)
		  && WTERMSIG(status) == SIGSYS, "syslog did not kill a child with SIGSYS");
}

static void check_strict(void)
{
	char path[64], c = 0;
	struct pollfd p = { .fd = strict_answer[0], .events = POLLIN };

	snprintf(path, sizeof(path), "/proc/self/task/%d/status", (int)strict_tid);
	tgt_check(status_is(path, "Seccomp", "1"), "the strict thread's Seccomp is not 1");
	tgt_check(write(strict_ask[1], "?", 1) == 1, "write to the strict thread");
	tgt_check(poll(&p, 1, 5000) == 1 && read(strict_answer[0], &c, 1) == 1 && c == 'S',
		  "the strict thread did not answer");
}

int main(int argc, char **argv)
{
	pthread_t strict;
	const char *why;
	int i, notify, dropcap;
	pid_t child = 0;

	tgt_init(argc, argv);
	with_threads = tgt_flag("threads") || tgt_flag("tsync");
	tsync = tgt_flag("tsync");
	notify = tgt_flag("notify");
	dropcap = tgt_flag("dropcap");
	if (tgt_flag("strict")) {
		if (pipe(strict_ask) || pipe(strict_answer))
			tgt_die("pipe: %m");
		if (pthread_create(&strict, NULL, strict_main, NULL))
			tgt_die("pthread_create");
		while (!strict_tid)
			tgt_msleep(1);
		if (strict_tid < 0)
			tgt_die("PR_SET_SECCOMP strict");
	} else if (!dropcap && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
		tgt_die("PR_SET_NO_NEW_PRIVS: %m");
	}
	if (tgt_flag("nnp") || tgt_flag("strict")) {
		tgt_ready();
		while (!tgt_stop)
			pause();
		if (tgt_flag("strict")) {
			tgt_check(status_is(NULL, "Seccomp", "0"), "the main thread's Seccomp is not 0");
			check_strict();
			pthread_join(strict, NULL);
		} else {
			tgt_check(status_is(NULL, "NoNewPrivs", "1"), "NoNewPrivs is not 1");
			tgt_check(status_is(NULL, "Seccomp", "0"), "Seccomp is not 0");
		}
		tgt_finish();
	}
	if (notify) {
		int listener = install(SYS_getpgrp, SECCOMP_RET_USER_NOTIF,
				       SECCOMP_FILTER_FLAG_NEW_LISTENER);

		/* a real sandbox keeps it in its supervisor; here it goes */
		if (listener < 0 || close(listener))
			tgt_die("SECCOMP_FILTER_FLAG_NEW_LISTENER: %m");
		tgt_ready();
		while (!tgt_stop)
			pause();
		tgt_finish();
	}
	if (with_threads && tsync)
		start_threads();
	if (install(SYS_getppid, SECCOMP_RET_ERRNO | EL2HLT, tsync ? SECCOMP_FILTER_FLAG_TSYNC : 0))
		tgt_die("SECCOMP_SET_MODE_FILTER: %m");
	if (with_threads && !tsync)
		start_threads();
	if (!with_threads && install(SYS_syslog, SECCOMP_RET_KILL_PROCESS, SECCOMP_FILTER_FLAG_LOG))
		tgt_die("SECCOMP_SET_MODE_FILTER (kill, LOG): %m");
	if (tgt_flag("nomunmap") && install(SYS_munmap, SECCOMP_RET_ERRNO | EPERM, 0))
		tgt_die("SECCOMP_SET_MODE_FILTER (munmap): %m");
	if (dropcap) {
		drop_sys_admin();
		want_nnp = "0";
	}
	if (tgt_flag("fork")) {
		child = fork();
		if (child < 0)
			tgt_die("fork: %m");
		if (child == 0) {
			while (!tgt_stop)
				pause();
			_exit(check_self(2, 0) ? 1 : 0);
		}
	}
	tgt_ready();
	while (!tgt_stop)
		pause();
	if (child > 0) {
		int status;

		kill(child, SIGTERM);
		tgt_check(waitpid(child, &status, 0) == child && WIFEXITED(status)
			  && WEXITSTATUS(status) == 0, "the child's sandbox is not as inherited");
	}
	why = check_self(with_threads ? 1 : 2 + tgt_flag("nomunmap"), 0);
	if (tgt_flag("nomunmap"))
		tgt_check(fails_with(syscall(SYS_munmap, 0x10000, 4096), EPERM),
			  "munmap does not fail with EPERM");
	tgt_check(!why, "main thread: %s", why);
	if (with_threads) {
		for (i = 0; i < NTHREADS; i++) {
			pthread_join(threads[i].id, NULL);
			tgt_check(threads[i].ok, "thread %d: %s", i, threads[i].why);
		}
	} else {
		check_kill_filter();
	}
	tgt_finish();
}
