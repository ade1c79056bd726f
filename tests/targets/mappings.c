/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a file mapped MAP_SHARED (written through the mapping before and
 *       after the dump: the file sees both), the same file mapped
 *       MAP_PRIVATE and written (the private copy is kept, the file never
 *       sees it), a MAP_SHARED|MAP_ANONYMOUS region, a PROT_NONE guard and
 *       a read-only page; the file's fd is closed before ready, so only the
 *       mappings hold it */
#include <sys/mman.h>
#include "target.h"

#define PAGE 4096
#define PAGES 4

int main(int argc, char **argv)
{
	char path[PATH_MAX + 16], *shared, *private, *anon, *guard, *ro, buf[PAGE];
	int fd, i;

	tgt_init(argc, argv);
	snprintf(path, sizeof(path), "%s.map", tgt_result_path);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, PAGES * PAGE))
		tgt_die("map file %s: %m", path);
	shared = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	private = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	anon = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	guard = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED || private == MAP_FAILED || anon == MAP_FAILED ||
	    guard == MAP_FAILED || ro == MAP_FAILED)
		tgt_die("mmap: %m");
	close(fd);
	memset(shared, 'S', 2 * PAGE);         /* reaches the file */
	memset(private + PAGE, 'P', PAGE);     /* a private copy of page 1 */
	for (i = 0; i < PAGES * PAGE; i++)
		anon[i] = (char)(i * 31);
	memset(ro, 'R', PAGE);
	if (mprotect(ro, PAGE, PROT_READ))
		tgt_die("mprotect: %m");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);

	tgt_check(shared[0] == 'S' && shared[2 * PAGE - 1] == 'S', "shared mapping content lost");
	tgt_check(private[PAGE] == 'P' && private[2 * PAGE - 1] == 'P', "private copy lost");
	/* Page 0 of the private mapping was never written: it still shows the file. */
	tgt_check(private[0] == 'S', "private page 0 shows %#x, want the file's 'S'", private[0]);
	for (i = 0; i < PAGES * PAGE; i++)
		if (!tgt_check(anon[i] == (char)(i * 31), "shared anon byte %d", i))
			break;
	tgt_check(ro[0] == 'R', "read-only page lost");
	/* The shared mapping still writes through to the file after restore. */
	memset(shared + 3 * PAGE, 'T', PAGE);
	if (msync(shared, PAGES * PAGE, MS_SYNC))
		tgt_check(0, "msync: %m");
	fd = open(path, O_RDONLY);
	if (fd < 0 || pread(fd, buf, PAGE, 3 * PAGE) != PAGE)
		tgt_check(0, "read back %s: %m", path);
	else
		tgt_check(buf[0] == 'T' && buf[PAGE - 1] == 'T', "file does not see a write "
			  "through the shared mapping after restore");
	if (fd >= 0 && pread(fd, buf, PAGE, PAGE) == PAGE)
		tgt_check(buf[0] == 'S', "file page 1 shows %#x: the private copy leaked", buf[0]);
	tgt_finish();
}
