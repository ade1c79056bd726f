/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a MAP_SHARED|MAP_ANONYMOUS region shared by a parent and two
 *       children (its pattern checked by the parent); after restore each
 *       child echoes a value the parent writes there, so the region is
 *       still one object shared by all three; a second such region (one
 *       page) stays a second object */
#include <sys/mman.h>
#include <sys/wait.h>
#include "target.h"

#define SIZE (1 << 20)

static volatile unsigned long *shm;
static char *other;

static void echo_loop(int slot)
{
	signal(SIGTERM, SIG_DFL);
	for (;;) {
		shm[1 + slot] = shm[0];
		usleep(1000);
	}
}

int main(int argc, char **argv)
{
	pid_t kids[2];
	unsigned long i, token;
	int k, ok, status;

	tgt_init(argc, argv);
	shm = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED)
		tgt_die("mmap: %m");
	for (i = 8; i < SIZE / sizeof(*shm); i++)
		shm[i] = i * 2654435761UL;
	other = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (other == MAP_FAILED)
		tgt_die("mmap: %m");
	strcpy(other, "the-other-region");
	for (k = 0; k < 2; k++) {
		kids[k] = fork();
		if (kids[k] == 0)
			echo_loop(k);
	}
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	for (i = 8; i < SIZE / sizeof(*shm); i++)
		if (!tgt_check(shm[i] == i * 2654435761UL, "shared word %lu", i))
			break;
	tgt_check(!strcmp(other, "the-other-region"), "the second region holds '%.16s'", other);
	token = 0x5eed0000UL + (unsigned long)getpid();
	shm[0] = token;
	tgt_check(*(volatile unsigned long *)other != token, "the two regions are one");
	for (k = 0; k < 2; k++) {
		for (ok = 0, i = 0; i < 2000 && !ok; i++) {
			ok = shm[1 + k] == token;
			tgt_msleep(1);
		}
		tgt_check(ok, "child %d does not see the parent's write: not shared", kids[k]);
		kill(kids[k], SIGKILL);
		waitpid(kids[k], &status, 0);
	}
	tgt_finish();
}
