/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a seccomp filter (no_new_privs, then SECCOMP_SET_MODE_FILTER) that
 *       allows every syscall but one odd one, acct(2), which gets EPERM
 *       (errno 1); on SIGTERM it checks its own state: seccomp mode 2 with
 *       one filter and no_new_privs in /proc/self/status, acct still EPERM
 *       and getppid still allowed */
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include "target.h"

static int status_is(const char *key, const char *want)
{
	char line[256], *value;
	size_t n = strlen(key);
	int found = 0;
	FILE *f = fopen("/proc/self/status", "r");

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

int main(int argc, char **argv)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_acct, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };
	pid_t ppid;

	tgt_init(argc, argv);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		tgt_die("PR_SET_NO_NEW_PRIVS: %m");
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
		tgt_die("SECCOMP_SET_MODE_FILTER: %m");
	ppid = getppid();
	tgt_ready();
	while (!tgt_stop)
		pause();
	tgt_check(status_is("Seccomp", "2"), "Seccomp is not 2 (filter mode)");
	tgt_check(status_is("Seccomp_filters", "1"), "Seccomp_filters is not 1");
	tgt_check(status_is("NoNewPrivs", "1"), "NoNewPrivs is not 1");
	errno = 0;
	tgt_check(syscall(SYS_acct, NULL) == -1 && errno == EPERM,
		  "acct(NULL) is not refused with EPERM by the filter");
	tgt_check(getppid() == ppid, "getppid changed");
	tgt_finish();
}
