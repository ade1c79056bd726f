/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a program that unmaps its own [vdso] and [vvar] (default) or, with
 *       --move, moves them elsewhere with mremap; after restore the vdso is
 *       still gone, or still where it was moved (/proc/self/maps). Nothing
 *       here calls into the vdso once it is touched (no clock_gettime). */
#include "target.h"
#include <sys/mman.h>

struct span { unsigned long lo, hi; };

/* [vvar*] and [vdso] from /proc/self/maps; returns how many found. */
static int specials(struct span *vdso, struct span *all)
{
	char line[512], name[64];
	unsigned long lo, hi;
	int n = 0;
	FILE *f = fopen("/proc/self/maps", "r");

	all->lo = ~0UL, all->hi = 0, vdso->lo = vdso->hi = 0;
	while (f && fgets(line, sizeof(line), f)) {
		name[0] = 0;
		if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %63s", &lo, &hi, name) < 2)
			continue;
		if (strncmp(name, "[vdso]", 6) && strncmp(name, "[vvar", 5))
			continue;
		n++;
		if (!strcmp(name, "[vdso]"))
			vdso->lo = lo, vdso->hi = hi;
		if (lo < all->lo)
			all->lo = lo;
		if (hi > all->hi)
			all->hi = hi;
	}
	if (f)
		fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	struct span vdso, all, after_vdso, after_all;
	int move, n;
	unsigned long len, dest = 0;
	void *hole;

	tgt_init(argc, argv);
	move = tgt_flag("move");
	if (specials(&vdso, &all) < 1 || !vdso.lo)
		tgt_die("no [vdso] to start with");
	len = all.hi - all.lo;
	if (move) {
		/* a spot of our own, then the block moved there in one piece per VMA */
		hole = mmap(NULL, len + (1 << 21), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (hole == MAP_FAILED)
			tgt_die("mmap: %m");
		dest = ((unsigned long)hole + (1 << 20)) & ~0xfffUL;
		munmap(hole, len + (1 << 21));
		{
			char line[512], name[64];
			unsigned long lo, hi, parts[8][2];
			int k = 0, i;
			FILE *f = fopen("/proc/self/maps", "r");
			while (f && fgets(line, sizeof(line), f) && k < 8) {
				name[0] = 0;
				if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %63s", &lo, &hi, name) >= 2 &&
				    (!strncmp(name, "[vdso]", 6) || !strncmp(name, "[vvar", 5)))
					parts[k][0] = lo, parts[k++][1] = hi;
			}
			fclose(f);
			for (i = 0; i < k; i++)
				if (mremap((void *)parts[i][0], parts[i][1] - parts[i][0], parts[i][1] - parts[i][0],
					   MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(dest + parts[i][0] - all.lo)) == MAP_FAILED)
					tgt_die("mremap: %m");
		}
	} else if (munmap((void *)all.lo, len)) {
		tgt_die("munmap: %m");
	}
	tgt_ready();

	while (!tgt_stop)
		usleep(5000);
	n = specials(&after_vdso, &after_all);
	if (move) {
		tgt_check(after_vdso.lo == dest + vdso.lo - all.lo,
			  "[vdso] at %#lx, moved to %#lx", after_vdso.lo, dest + vdso.lo - all.lo);
		tgt_check(after_all.lo == dest && after_all.hi - after_all.lo == len,
			  "vvar/vdso block at %#lx-%#lx, want %#lx-%#lx",
			  after_all.lo, after_all.hi, dest, dest + len);
	} else {
		tgt_check(n == 0, "%d vdso/vvar mappings came back (%#lx-%#lx)", n, after_all.lo, after_all.hi);
	}
	tgt_finish();
}
