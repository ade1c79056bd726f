/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * args: --mib N (anonymous buffer size, default 256), --memfd (the buffer is
 *       a memfd's, mapped MAP_SHARED, its fd closed) ;
 * what: an N MiB anonymous mapping with a per-word pattern (every 64th page
 *       left untouched and checked to read zero), a brk-heap block and a
 *       stack array, all checked byte for byte after restore */
#include "target.h"          /* first: its _GNU_SOURCE declares memfd_create */
#include <stdint.h>
#include <sys/mman.h>

#define PAGE 4096UL
#define K 0x9E3779B97F4A7C15ULL   /* odd: offset*K never repeats per word */
#define HOLE_EVERY 64             /* page index % 64 == 63 is never touched */
#define HEAP_SIZE (64 * 1024)     /* under the mmap threshold: lands in brk */
#define STACK_SIZE (16 * 1024)

static uint64_t seed;

static int is_hole(size_t page)
{
	return page % HOLE_EVERY == HOLE_EVERY - 1;
}

static void fill_buf(uint64_t *buf, size_t size)
{
	size_t page, i, words = PAGE / 8;

	for (page = 0; page < size / PAGE; page++) {
		if (is_hole(page))
			continue;
		for (i = page * words; i < (page + 1) * words; i++)
			buf[i] = i * 8 * K + seed;
	}
}

static void check_buf(const uint64_t *buf, size_t size)
{
	size_t page, i, words = PAGE / 8, bad = 0, first = 0;
	uint64_t want, got = 0;

	for (page = 0; page < size / PAGE; page++) {
		for (i = page * words; i < (page + 1) * words; i++) {
			want = is_hole(page) ? 0 : i * 8 * K + seed;
			if (buf[i] != want) {
				if (!bad++) {
					first = i;
					got = buf[i];
				}
			}
		}
	}
	if (bad)
		tgt_check(0, "buffer: %zu bad words, first at offset %#zx: "
			  "%#llx, want %#llx", bad, first * 8,
			  (unsigned long long)got,
			  (unsigned long long)(is_hole(first / words) ? 0 :
					       first * 8 * K + seed));
}

static unsigned char small_pattern(size_t i, int salt)
{
	return (unsigned char)(i * 31 + (i >> 8) + salt + seed);
}

__attribute__((noinline))
static void fill_small(unsigned char *p, size_t n, int salt)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = small_pattern(i, salt);
}

__attribute__((noinline))
static void check_small(const unsigned char *p, size_t n, int salt,
			const char *what)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!tgt_check(p[i] == small_pattern(i, salt),
			       "%s: byte %zu is %#x, want %#x", what, i, p[i],
			       small_pattern(i, salt)))
			return;
}

int main(int argc, char **argv)
{
	unsigned char stack[STACK_SIZE];
	unsigned char *heap;
	uint64_t *buf;
	size_t size;
	long mib;

	tgt_init(argc, argv);
	mib = tgt_arg_long("mib", 256);
	if (mib <= 0)
		tgt_die("--mib must be positive");
	size = (size_t)mib << 20;
	seed = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();

	if (tgt_flag("memfd")) {
		int fd = memfd_create("bigmem", 0);

		if (fd < 0 || ftruncate(fd, size))
			tgt_die("memfd of %zu bytes: %m", size);
		buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
	} else {
		buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
	if (buf == MAP_FAILED)
		tgt_die("mmap %zu bytes: %m", size);
	heap = malloc(HEAP_SIZE);
	if (!heap)
		tgt_die("malloc");
	fill_buf(buf, size);
	fill_small(heap, HEAP_SIZE, 1);
	fill_small(stack, STACK_SIZE, 2);

	tgt_info("buf=%p", (void *)buf);
	tgt_info("size=%zu", size);
	tgt_info("hole_every=%d", HOLE_EVERY);
	tgt_info("heap=%p", (void *)heap);
	tgt_info("stack=%p", (void *)stack);
	tgt_ready();

	tgt_wait_stop();
	check_buf(buf, size);
	check_small(heap, HEAP_SIZE, 1, "heap");
	check_small(stack, STACK_SIZE, 2, "stack");
	tgt_finish();
}
