/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * args: --user 1 (after ready, become uid/gid 1000 with groups 1000,27 and
 *       keep CAP_NET_BIND_SERVICE as permitted+effective and ambient) ;
 * what: credentials: without --user, root with CAP_NET_RAW dropped from the
 *       bounding set and CAP_SYS_NICE inheritable; after restore the task
 *       checks its uids, gids, groups, securebits and every capability set */
#include <grp.h>
#include <sys/prctl.h>
#include <linux/capability.h>
#include "target.h"

struct creds {
	uid_t r, e, s;
	gid_t rg, eg, sg;
	int ngroups;
	gid_t groups[64];
	struct __user_cap_data_struct caps[2];
	unsigned long long bnd, amb;
	int secbits;
};

static void read_creds(struct creds *c)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	int cap;

	memset(c, 0, sizeof(*c));
	getresuid(&c->r, &c->e, &c->s);
	getresgid(&c->rg, &c->eg, &c->sg);
	c->ngroups = getgroups(64, c->groups);
	syscall(SYS_capget, &h, c->caps);
	for (cap = 0; cap <= 40; cap++) {
		if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1)
			c->bnd |= 1ULL << cap;
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1)
			c->amb |= 1ULL << cap;
	}
	c->secbits = prctl(PR_GET_SECUREBITS);
}

static void become_user(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = {{0}};
	gid_t groups[] = { 1000, 27 };

	if (prctl(PR_SET_KEEPCAPS, 1) || setgroups(2, groups) || setresgid(1000, 1000, 1000) ||
	    setresuid(1000, 1000, 1000))
		tgt_die("become uid 1000: %m");
	d[0].effective = d[0].permitted = d[0].inheritable = 1 << CAP_NET_BIND_SERVICE;
	if (syscall(SYS_capset, &h, d) ||
	    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		tgt_die("capset: %m");
}

int main(int argc, char **argv)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	struct creds before, after;
	int user, i;

	tgt_init(argc, argv);
	user = tgt_arg("user", NULL) != NULL;
	if (!user) {
		if (prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0))
			tgt_die("drop CAP_NET_RAW: %m");
		syscall(SYS_capget, &h, d);
		d[0].inheritable |= 1 << CAP_SYS_NICE;
		if (syscall(SYS_capset, &h, d))
			tgt_die("capset: %m");
	}
	tgt_ready();
	if (user)
		become_user();
	read_creds(&before);

	while (!tgt_stop)
		tgt_msleep(5);
	read_creds(&after);
	tgt_check(after.r == before.r && after.e == before.e && after.s == before.s,
		  "uids %d/%d/%d, want %d/%d/%d", after.r, after.e, after.s, before.r, before.e, before.s);
	tgt_check(after.rg == before.rg && after.eg == before.eg && after.sg == before.sg,
		  "gids %d/%d/%d, want %d/%d/%d", after.rg, after.eg, after.sg,
		  before.rg, before.eg, before.sg);
	tgt_check(after.ngroups == before.ngroups, "%d groups, want %d", after.ngroups, before.ngroups);
	for (i = 0; i < before.ngroups && i < after.ngroups; i++)
		tgt_check(after.groups[i] == before.groups[i], "group %d: %d, want %d", i,
			  after.groups[i], before.groups[i]);
	for (i = 0; i < 2; i++)
		tgt_check(after.caps[i].effective == before.caps[i].effective &&
			  after.caps[i].permitted == before.caps[i].permitted &&
			  after.caps[i].inheritable == before.caps[i].inheritable,
			  "caps word %d: eff/prm/inh %#x/%#x/%#x, want %#x/%#x/%#x", i,
			  after.caps[i].effective, after.caps[i].permitted, after.caps[i].inheritable,
			  before.caps[i].effective, before.caps[i].permitted, before.caps[i].inheritable);
	tgt_check(after.bnd == before.bnd, "bounding set %#llx, want %#llx", after.bnd, before.bnd);
	tgt_check(after.amb == before.amb, "ambient set %#llx, want %#llx", after.amb, before.amb);
	tgt_check(after.secbits == before.secbits, "securebits %#x, want %#x", after.secbits,
		  before.secbits);
	tgt_finish();
}
