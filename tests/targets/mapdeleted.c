/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: files deleted while mapped, no fd held: one mapped MAP_SHARED by
 *       the parent and a child (the child echoes a word: after restore each
 *       sees the other's writes) and MAP_PRIVATE (a private write kept, not
 *       in the file); another mapped twice, read-only, as a library's
 *       segments are (one inode after restore). --also-open: the first one
 *       is held open too (refused at dump: not one inode yet). */
#include "target.h"
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define PG 4096
#define PAGES 3

static unsigned char pattern(long off)
{
	return (unsigned char)(off * 11 + off / PG * 5 + 3);
}

static void *map_file(const char *path, int pages, int flags, int prot, int *keep)
{
	unsigned char page[PG];
	void *at;
	long p, i;
	int fd;

	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0604);
	for (p = 0; fd >= 0 && p < pages; p++) {
		for (i = 0; i < PG; i++)
			page[i] = pattern(p * PG + i) ^ (flags == MAP_PRIVATE);
		if (write(fd, page, PG) != PG)
			tgt_die("write %s: %m", path);
	}
	if (fd < 0)
		tgt_die("open %s: %m", path);
	at = mmap(NULL, pages * PG, prot, flags, fd, 0);
	if (at == MAP_FAILED)
		tgt_die("mmap %s: %m", path);
	if (keep)
		*keep = fd;
	else
		close(fd);
	return at;
}

/* Map an existing file and close it again. */
static void *map_again(const char *path, int pages, int prot, long off)
{
	int fd = open(path, O_RDONLY);
	void *at = fd < 0 ? MAP_FAILED : mmap(NULL, pages * PG, prot, MAP_PRIVATE, fd, off);

	if (at == MAP_FAILED)
		tgt_die("mmap %s: %m", path);
	close(fd);
	return at;
}

static ino_t ino_of(void *at, int pages)
{
	char path[64];
	struct stat sb;

	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)at,
		 (unsigned long)at + pages * PG);
	return stat(path, &sb) ? 0 : sb.st_ino;
}

static int named_deleted(void *at, const char *path)
{
	char line[512], want[PATH_MAX + 32];
	unsigned long lo;
	FILE *f = fopen("/proc/self/maps", "r");
	int ok = 0;

	snprintf(want, sizeof(want), "%s (deleted)", path);
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-", &lo) == 1 && lo == (unsigned long)at)
			ok = strstr(line, want) != NULL;
	if (f)
		fclose(f);
	return ok;
}

int main(int argc, char **argv)
{
	char shared_path[PATH_MAX + 16], lib_path[PATH_MAX + 16];
	unsigned char *sh, *pv, *lib1, *lib2;
	volatile unsigned long *echo;
	unsigned long token, i;
	int status, ok, held = -1;
	pid_t kid;
	long p;

	tgt_init(argc, argv);
	snprintf(shared_path, sizeof(shared_path), "%s.mapped", tgt_result_path);
	snprintf(lib_path, sizeof(lib_path), "%s.lib", tgt_result_path);
	sh = map_file(shared_path, PAGES, MAP_SHARED, PROT_READ | PROT_WRITE,
		      tgt_flag("also-open") ? &held : NULL);
	pv = map_again(shared_path, PAGES, PROT_READ | PROT_WRITE, 0);
	lib1 = map_file(lib_path, 2, MAP_PRIVATE, PROT_READ, NULL);
	lib2 = map_again(lib_path, 1, PROT_READ, PG);
	if (unlink(shared_path) || unlink(lib_path))
		tgt_die("unlink: %m");
	memcpy(pv + PG, "private-copy", 12);
	memcpy(sh + 2 * PG, "shared-word", 11);
	echo = (volatile unsigned long *)(sh + 2 * PG + 64);
	kid = fork();
	if (kid == 0) {
		signal(SIGTERM, SIG_DFL);
		for (;;) {
			echo[1] = echo[0];
			usleep(1000);
		}
	}
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	for (p = 0; p < 2; p++)
		for (i = 0; i < PG; i++)
			if (!tgt_check(sh[p * PG + i] == pattern(p * PG + i), "byte %ld of page %ld", i, p))
				break;
	tgt_check(!memcmp(sh + 2 * PG, "shared-word", 11), "the shared write is lost");
	tgt_check(!memcmp(pv + PG, "private-copy", 12), "the private copy is lost");
	tgt_check(pv[0] == pattern(0), "the private mapping's unwritten page is not the file's");
	tgt_check(named_deleted(sh, shared_path) && named_deleted(lib1, lib_path) &&
		  named_deleted(lib2, lib_path), "the mappings are not of the deleted files");
	tgt_check(lib1[0] == (pattern(0) ^ 1) && lib2[0] == (pattern(PG) ^ 1),
		  "the library's pages are not its own");
	tgt_check(ino_of(lib1, 2) && ino_of(lib1, 2) == ino_of(lib2, 1) &&
		  ino_of(sh, PAGES) == ino_of(pv, PAGES),
		  "two mappings of one deleted file are not one inode");
	tgt_check(access(shared_path, F_OK) != 0, "%s exists again", shared_path);

	token = 0x6768737400000000UL + (unsigned long)getpid();
	echo[0] = token;
	for (ok = 0, i = 0; i < 2000 && !ok; i++) {
		ok = echo[1] == token;
		tgt_msleep(1);
	}
	tgt_check(ok, "the child does not see the parent's write: not shared");
	tgt_check(pv[2 * PG + 64] == (token & 0xff), "the private mapping's unwritten page does "
		  "not follow the file");
	kill(kid, SIGKILL);
	waitpid(kid, &status, 0);
	(void)held;
	tgt_finish();
}
