/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: memory layouts across a parent and two children: a MAP_SHARED|
 *       MAP_ANONYMOUS region with a PROT_NONE hole and a read-only piece
 *       (mprotect) and a page unmapped from its middle, next to a private
 *       anonymous one cut the same way; a MAP_PRIVATE file mapping with
 *       written pages (private copies) and unwritten ones (still the file);
 *       a file mapping running past its file's end (the pages there must
 *       still raise SIGBUS). Each task checks its contents and its own
 *       /proc/self/maps protections after restore. */
#include <setjmp.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include "target.h"

#define PAGE 4096
#define NP 8

static char *shared, *private, *filemap, *pasteof;
static sigjmp_buf bus_env;

static void on_bus(int sig)
{
	(void)sig;
	siglongjmp(bus_env, 1);
}

static unsigned char pat(int region, long i)
{
	return (unsigned char)(i * 131 + region * 17 + (i >> 12) * 7);
}

/* The perms column of /proc/self/maps for the VMA holding addr. */
static int perms_at(void *addr, char out[5])
{
	char line[512];
	unsigned long lo, hi, a = (unsigned long)addr;
	FILE *f = fopen("/proc/self/maps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, out) == 3 && lo <= a && a < hi) {
			fclose(f);
			return 0;
		}
	fclose(f);
	return -1;
}

static void check_perms(const char *what, void *addr, const char *want)
{
	char got[5] = "";

	if (perms_at(addr, got))
		tgt_check(0, "%s: %p not mapped", what, addr);
	else
		tgt_check(!strcmp(got, want), "%s: perms %s, want %s", what, got, want);
}

static int bus_at(volatile char *p)
{
	struct sigaction sa = { .sa_handler = on_bus }, old;
	int hit = 0;

	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(bus_env, 1) == 0)
		(void)*p;
	else
		hit = 1;
	sigaction(SIGBUS, &old, NULL);
	return hit;
}

/* Every task checks the same layout; `who` tells them apart in messages. */
static void check_all(int who)
{
	long i;

	for (i = 0; i < NP * PAGE; i++) {
		long pg = i / PAGE;
		if (pg == 3 || pg == 5)
			continue;      /* the PROT_NONE hole and the unmapped page */
		if (!tgt_check((unsigned char)shared[i] == pat(1, i), "task %d: shared byte %ld", who, i))
			break;
		if (!tgt_check((unsigned char)private[i] == pat(2 + who, i), "task %d: private byte %ld", who, i))
			break;
	}
	check_perms("shared page 0", shared, "rw-s");
	check_perms("shared page 2 (read-only)", shared + 2 * PAGE, "r--s");
	check_perms("shared page 3 (hole)", shared + 3 * PAGE, "---s");
	check_perms("private page 3 (hole)", private + 3 * PAGE, "---p");
	check_perms("private page 2 (read-only)", private + 2 * PAGE, "r--p");
	tgt_check(perms_at(shared + 5 * PAGE, (char[5]){0}) != 0, "shared page 5 is mapped again");
	tgt_check(perms_at(private + 5 * PAGE, (char[5]){0}) != 0, "private page 5 is mapped again");
	/* page 1 written (a private copy), page 0 and 2 never: the file's */
	tgt_check(filemap[0] == 'F' && filemap[2 * PAGE] == 'H', "task %d: unwritten private file pages %#x %#x",
		  who, filemap[0], filemap[2 * PAGE]);
	tgt_check(filemap[PAGE] == (char)('a' + who), "task %d: private file copy %#x", who, filemap[PAGE]);
	tgt_check(pasteof[0] == 'E', "task %d: past-eof page 0 %#x", who, pasteof[0]);
	tgt_check(bus_at(pasteof + 2 * PAGE), "task %d: no SIGBUS past the file's end", who);
}

static void child(int who)
{
	long i;

	signal(SIGTERM, tgt_on_term);
	for (i = 0; i < NP * PAGE; i++)
		if (i / PAGE != 3 && i / PAGE != 5 && i / PAGE != 2)
			private[i] = pat(2 + who, i);
	mprotect(private + 2 * PAGE, PAGE, PROT_READ | PROT_WRITE);
	for (i = 2 * PAGE; i < 3 * PAGE; i++)
		private[i] = pat(2 + who, i);
	mprotect(private + 2 * PAGE, PAGE, PROT_READ);
	filemap[PAGE] = 'a' + who;
	while (!tgt_stop)
		usleep(2000);
	check_all(who);
	if (tgt_failmsg[0])
		fprintf(stderr, "child %d: %s\n", who, tgt_failmsg);
	_exit(tgt_failmsg[0] ? 1 : 0);
}

int main(int argc, char **argv)
{
	char path[PATH_MAX + 16];
	pid_t kids[2];
	long i;
	int fd, k, status;

	tgt_init(argc, argv);
	shared = mmap(NULL, NP * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	private = mmap(NULL, NP * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED || private == MAP_FAILED)
		tgt_die("mmap: %m");
	for (i = 0; i < NP * PAGE; i++) {
		shared[i] = pat(1, i);
		private[i] = pat(2, i);
	}
	if (mprotect(shared + 2 * PAGE, PAGE, PROT_READ) || mprotect(shared + 3 * PAGE, PAGE, PROT_NONE) ||
	    mprotect(private + 2 * PAGE, PAGE, PROT_READ) || mprotect(private + 3 * PAGE, PAGE, PROT_NONE) ||
	    munmap(shared + 5 * PAGE, PAGE) || munmap(private + 5 * PAGE, PAGE))
		tgt_die("mprotect/munmap: %m");

	snprintf(path, sizeof(path), "%s.map", tgt_result_path);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, 3 * PAGE))
		tgt_die("map file %s: %m", path);
	pwrite(fd, "F", 1, 0);
	pwrite(fd, "G", 1, PAGE);
	pwrite(fd, "H", 1, 2 * PAGE);
	filemap = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	close(fd);
	snprintf(path, sizeof(path), "%s.eof", tgt_result_path);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, PAGE))
		tgt_die("eof file %s: %m", path);
	pwrite(fd, "E", 1, 0);
	pasteof = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	close(fd);
	if (filemap == MAP_FAILED || pasteof == MAP_FAILED)
		tgt_die("mmap file: %m");
	(void)(*(volatile char *)filemap + *(volatile char *)(filemap + 2 * PAGE));   /* read, not written: the file's */
	filemap[PAGE] = 'a' + 2;
	(void)*(volatile char *)pasteof;
	for (k = 0; k < 2; k++) {
		kids[k] = fork();
		if (kids[k] < 0)
			tgt_die("fork: %m");
		if (kids[k] == 0)
			child(k);
	}
	/* wait until the children wrote theirs */
	tgt_msleep(100);
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	for (k = 0; k < 2; k++) {
		kill(kids[k], SIGTERM);
		if (waitpid(kids[k], &status, 0) != kids[k] || !WIFEXITED(status) || WEXITSTATUS(status))
			tgt_check(0, "child %d failed its checks (status %#x)", k, status);
	}
	/* the parent wrote private pages as pattern 2 before fork: who=0 is pat(2) */
	for (i = 0; i < NP * PAGE; i++)
		if (i / PAGE != 3 && i / PAGE != 5 &&
		    !tgt_check((unsigned char)private[i] == pat(2, i), "parent: private byte %ld", i))
			break;
	tgt_check(filemap[PAGE] == 'c', "parent: private file copy %#x", filemap[PAGE]);
	tgt_check(pasteof[0] == 'E', "parent: past-eof page 0");
	tgt_check(bus_at(pasteof + 2 * PAGE), "parent: no SIGBUS past the file's end");
	check_perms("shared page 3 (hole)", shared + 3 * PAGE, "---s");
	tgt_finish();
}
