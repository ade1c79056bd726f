/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: System V objects in an IPC namespace of the tree: a segment (key
 *       0x5eed, 3 pages of pattern, mode 0640) attached by the parent at
 *       one fixed address and by its child at another too, a semaphore set
 *       valued 7,0,3, a queue of 3 typed messages; after restore each is
 *       checked where it was (ids, key, mode, size, values, messages in
 *       order) and a word the parent writes is echoed by the child through
 *       its own attachment. --rmid: a second segment IPC_RMID'd while
 *       attached. --host: the objects in the engine's IPC namespace (the test
 *       removes the segment between dump and restore: the set and queue,
 *       not the tree's state, stay there meanwhile). */
#include "target.h"
#include <sched.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define KEY 0x5eed
#define PAGES 3
#define SIZE (PAGES * 4096)
#define AT_PARENT ((void *)0x5eed0000000UL)
#define AT_CHILD ((void *)0x5eed0100000UL)
#define AT_RMID ((void *)0x5eed0200000UL)
#define ECHO 0                  /* word the parent writes ... */
#define ECHOED 1                /* ... and the child copies */

union semun { int val; struct semid_ds *buf; unsigned short *array; };
struct text { long mtype; char mtext[32]; };
static const long TYPES[3] = { 5, 2, 9 };
static const char *TEXTS[3] = { "first of three", "second", "third, the last" };
static const unsigned short VALUES[3] = { 7, 0, 3 };

static unsigned long pattern(unsigned long i)
{
	return i * 2654435761UL ^ 0x5eed;
}

static void child_echo(volatile unsigned long *mine)
{
	signal(SIGTERM, SIG_DFL);
	for (;;) {
		mine[ECHOED] = mine[ECHO];
		usleep(1000);
	}
}

static void check_objects(int shmid, int semid, int msqid)
{
	struct shmid_ds ds;
	unsigned short values[3];
	union semun arg = { .array = values };
	struct text m;
	int i;

	if (tgt_check(shmctl(shmid, IPC_STAT, &ds) == 0, "shm %d: %m", shmid)) {
		tgt_check(ds.shm_perm.__key == KEY, "shm key %#x", ds.shm_perm.__key);
		tgt_check((ds.shm_perm.mode & 0777) == 0640, "shm mode %o", ds.shm_perm.mode);
		tgt_check(ds.shm_segsz == SIZE, "shm size %zu", ds.shm_segsz);
		tgt_check(ds.shm_nattch == 3, "shm nattch %lu", ds.shm_nattch);
	}
	tgt_check(shmget(KEY, 0, 0) == shmid, "key 0x5eed is not shm id %d", shmid);
	if (tgt_check(semctl(semid, 0, GETALL, arg) == 0, "sem %d: %m", semid))
		for (i = 0; i < 3; i++)
			tgt_check(values[i] == VALUES[i], "sem %d is %u", i, values[i]);
	for (i = 0; i < 3; i++) {
		ssize_t n = msgrcv(msqid, &m, sizeof(m.mtext), 0, IPC_NOWAIT);

		if (!tgt_check(n >= 0, "msg %d: %m", i))
			break;
		tgt_check(m.mtype == TYPES[i] && n == (ssize_t)strlen(TEXTS[i]) + 1 &&
			  !strcmp(m.mtext, TEXTS[i]), "msg %d: type %ld '%.*s'", i,
			  m.mtype, (int)n, m.mtext);
	}
	tgt_check(msgrcv(msqid, &m, sizeof(m.mtext), 0, IPC_NOWAIT) < 0 && errno == ENOMSG,
		  "a fourth message");
}

int main(int argc, char **argv)
{
	volatile unsigned long *shm, *rm = NULL;
	int shmid, semid, msqid, rmid = -1, i, ok, status;
	union semun arg = { .array = (unsigned short *)VALUES };
	unsigned long token;
	struct text m;
	pid_t kid;

	tgt_init(argc, argv);
	if (!tgt_flag("host") && unshare(CLONE_NEWIPC))
		tgt_die("unshare(CLONE_NEWIPC): %m");
	shmid = shmget(KEY, SIZE, IPC_CREAT | IPC_EXCL | 0640);
	semid = semget(KEY, 3, IPC_CREAT | IPC_EXCL | 0600);
	msqid = msgget(KEY, IPC_CREAT | IPC_EXCL | 0620);
	if (shmid < 0 || semid < 0 || msqid < 0)
		tgt_die("shmget/semget/msgget: %m");
	shm = shmat(shmid, AT_PARENT, 0);
	if (shm != AT_PARENT || semctl(semid, 0, SETALL, arg))
		tgt_die("shmat/SETALL: %m");
	for (i = 2; i < SIZE / 8; i++)
		shm[i] = pattern(i);
	for (i = 0; i < 3; i++) {
		m.mtype = TYPES[i];
		strcpy(m.mtext, TEXTS[i]);
		if (msgsnd(msqid, &m, strlen(TEXTS[i]) + 1, 0))
			tgt_die("msgsnd: %m");
	}
	if (tgt_flag("rmid")) {
		rmid = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
		rm = shmat(rmid, AT_RMID, 0);
		if (rm != AT_RMID || shmctl(rmid, IPC_RMID, NULL))
			tgt_die("rmid segment: %m");
		rm[0] = 0x5eedUL;
	}
	kid = fork();
	if (kid == 0) {
		volatile unsigned long *mine = shmat(shmid, AT_CHILD, 0);

		if (mine != AT_CHILD)
			_exit(1);
		child_echo(mine);
	}
	tgt_info("shmid=%d", shmid);
	tgt_info("child=%d", kid);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	for (i = 2; i < SIZE / 8; i++)
		if (!tgt_check(shm[i] == pattern(i), "shm word %d", i))
			break;
	check_objects(shmid, semid, msqid);
	if (rm) {
		struct shmid_ds ds;
		int stat = shmctl(rmid, IPC_STAT, &ds);

		tgt_check(rm[0] == 0x5eedUL, "the IPC_RMID'd segment lost its word");
		tgt_check(stat == 0 && ds.shm_perm.mode & SHM_DEST &&
			  ds.shm_nattch == 2, "segment %d is not IPC_RMID'd with 2 attached: "
			  "mode %o, nattch %lu", rmid, ds.shm_perm.mode, ds.shm_nattch);
	}
	token = 0x5eed0000UL + (unsigned long)getpid();
	shm[ECHO] = token;
	for (ok = 0, i = 0; i < 2000 && !ok; i++) {
		ok = shm[ECHOED] == token;
		tgt_msleep(1);
	}
	tgt_check(ok, "child %d does not see the parent's write: not shared", kid);
	kill(kid, SIGKILL);
	waitpid(kid, &status, 0);
	if (tgt_flag("host")) {
		shmctl(shmid, IPC_RMID, NULL);
		semctl(semid, 0, IPC_RMID);
		msgctl(msqid, IPC_RMID, NULL);
	}
	tgt_finish();
}
