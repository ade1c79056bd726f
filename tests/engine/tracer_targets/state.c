/*
 * state.c - a target for tests/engine/test_tracer.py: sets up the state the
 * tracer dumps and restores, checks it after SIGTERM.
 *
 *   state READY RESULT FILE [pipe FD | big MIB]
 *
 * Sets up: memory patterns (heap, anon private with holes, anon shared,
 * read-only anon, a written page of a private file mapping of FILE, .data),
 * madvise bits (DONTDUMP, WIPEONFORK),
 * a SIGUSR1 handler on a sigaltstack, SIGUSR2 blocked, MXCSR rounding mode
 * and 16 ymm registers held across every nanosleep of the wait loop.
 * Writes "ready", then loops until SIGTERM. With "pipe FD" it instead
 * blocks in read(FD) and checks it gets "hello" (a restarted syscall); with
 * "big MIB" it fills MIB MiB of anonymous memory and checks it.
 * Writes "PASS" or "FAIL: why" to RESULT.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PG 4096
static volatile sig_atomic_t stop;
static volatile int usr1_hits, usr1_on_altstack;
static char altstack[64 * 1024];
static char fail[512];
static unsigned char pat[16][32] __attribute__((aligned(32)));
static unsigned char out[16][32] __attribute__((aligned(32)));
static uint64_t data_pattern[512] = {1, 2, 3};

static void failf(const char *what, long a, long b)
{
	if (!fail[0])
		snprintf(fail, sizeof(fail), "%s (%ld vs %ld)", what, a, b);
}

static void on_term(int sig) { (void)sig; stop = 1; }

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	char here;
	(void)sig; (void)si; (void)uc;
	usr1_hits++;
	usr1_on_altstack = &here >= altstack && &here < altstack + sizeof(altstack);
}

/* nanosleep with ymm0-15 loaded from pat, stored to out after the syscall */
static long ymm_nanosleep(const struct timespec *ts)
{
	long ret;
	asm volatile(
		"vmovdqa 0(%[p]), %%ymm0\n\t"   "vmovdqa 32(%[p]), %%ymm1\n\t"
		"vmovdqa 64(%[p]), %%ymm2\n\t"  "vmovdqa 96(%[p]), %%ymm3\n\t"
		"vmovdqa 128(%[p]), %%ymm4\n\t" "vmovdqa 160(%[p]), %%ymm5\n\t"
		"vmovdqa 192(%[p]), %%ymm6\n\t" "vmovdqa 224(%[p]), %%ymm7\n\t"
		"vmovdqa 256(%[p]), %%ymm8\n\t" "vmovdqa 288(%[p]), %%ymm9\n\t"
		"vmovdqa 320(%[p]), %%ymm10\n\t" "vmovdqa 352(%[p]), %%ymm11\n\t"
		"vmovdqa 384(%[p]), %%ymm12\n\t" "vmovdqa 416(%[p]), %%ymm13\n\t"
		"vmovdqa 448(%[p]), %%ymm14\n\t" "vmovdqa 480(%[p]), %%ymm15\n\t"
		"syscall\n\t"
		"vmovdqa %%ymm0, 0(%[o])\n\t"   "vmovdqa %%ymm1, 32(%[o])\n\t"
		"vmovdqa %%ymm2, 64(%[o])\n\t"  "vmovdqa %%ymm3, 96(%[o])\n\t"
		"vmovdqa %%ymm4, 128(%[o])\n\t" "vmovdqa %%ymm5, 160(%[o])\n\t"
		"vmovdqa %%ymm6, 192(%[o])\n\t" "vmovdqa %%ymm7, 224(%[o])\n\t"
		"vmovdqa %%ymm8, 256(%[o])\n\t" "vmovdqa %%ymm9, 288(%[o])\n\t"
		"vmovdqa %%ymm10, 320(%[o])\n\t" "vmovdqa %%ymm11, 352(%[o])\n\t"
		"vmovdqa %%ymm12, 384(%[o])\n\t" "vmovdqa %%ymm13, 416(%[o])\n\t"
		"vmovdqa %%ymm14, 448(%[o])\n\t" "vmovdqa %%ymm15, 480(%[o])\n\t"
		"vzeroupper\n\t"
		: "=a"(ret)
		: "a"((long)SYS_nanosleep), "D"(ts), "S"(0L), [p] "r"(pat), [o] "r"(out)
		: "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
		  "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
		  "xmm14", "xmm15");
	return ret;
}

static void put(const char *path, const char *text)
{
	char tmp[4200];
	int fd;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, text, strlen(text)) < 0 || close(fd) || rename(tmp, path))
		exit(2);
}

static uint64_t fill(void *p, size_t len, uint64_t seed, size_t step)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < len; i += step) {
		uint64_t v = seed * 0x9E3779B97F4A7C15ull + i;
		*(uint64_t *)((char *)p + i) = v;
		sum += v;
	}
	return sum;
}

static uint64_t sum(const void *p, size_t len, size_t step)
{
	uint64_t s = 0;
	for (size_t i = 0; i < len; i += step)
		s += *(const uint64_t *)((const char *)p + i);
	return s;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	const char *ready = argv[1], *result = argv[2];
	long pid = syscall(SYS_getpid);
	struct sigaction sa = {0};
	sigset_t set;
	char buf[64];

	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	sigaddset(&sa.sa_mask, SIGHUP);
	sigaction(SIGUSR1, &sa, NULL);
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
	sigaltstack(&ss, NULL);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_BLOCK, &set, NULL);

	if (argc >= 6 && !strcmp(argv[4], "pipe")) {
		int fd = atoi(argv[5]);
		put(ready, "ready\n");
		ssize_t n = read(fd, buf, sizeof(buf) - 1);   /* dumped while blocked here */
		if (n != 5 || memcmp(buf, "hello", 5))
			failf("read from the pipe", n, 5);
		if (syscall(SYS_getpid) != pid)
			failf("pid", syscall(SYS_getpid), pid);
		put(result, fail[0] ? fail : "PASS\n");
		return 0;
	}

	if (argc >= 6 && !strcmp(argv[4], "big")) {
		size_t len = (size_t)atol(argv[5]) << 20;
		char *big = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		uint64_t big_sum = fill(big, len, 7, 512);
		put(ready, "ready\n");
		/* not pause(): a SIGTERM landing between the check and the syscall
		 * would leave it asleep, and a restore re-runs that syscall */
		struct timespec ts = {0, 5000000};
		while (!stop)
			nanosleep(&ts, NULL);
		if (sum(big, len, 512) != big_sum)
			failf("big pattern", 0, 0);
		put(result, fail[0] ? fail : "PASS\n");
		return 0;
	}

	/* memory */
	size_t heap_len = 8 << 20, anon_len = 4 << 20;
	char *heap = malloc(heap_len + 64);                    /* mmap'd by malloc */
	uint64_t heap_sum = fill(heap, heap_len, 1, 64);
	char *brk_heap = malloc(64 * 1024);                    /* from [heap] */
	uint64_t brk_sum = fill(brk_heap, 64 * 1024, 6, 8);
	char *anon = mmap(NULL, anon_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t anon_sum = 0;
	for (size_t i = 0; i < anon_len; i += 3 * PG)          /* holes: 2 of 3 pages absent */
		anon_sum += fill(anon + i, PG, 2 + i, 8);
	char *shared = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t shared_sum = fill(shared, 4 * PG, 3, 8);
	char *ro = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t ro_sum = fill(ro, 2 * PG, 4, 8);
	mprotect(ro, 2 * PG, PROT_READ);
	madvise(ro, 2 * PG, MADV_DONTDUMP);                    /* kept in Vma.madv */
	madvise(anon, anon_len, MADV_WIPEONFORK);
	int ffd = open(argv[3], O_RDONLY);
	char *file = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, ffd, 0);
	close(ffd);
	if (file == MAP_FAILED)
		return 3;
	uint64_t file_sum0 = sum(file, 4 * PG, 8);            /* the file's own content */
	memset(file + PG, 0x5A, PG);                           /* one page copied: ours now */
	uint64_t file_sum = sum(file, 4 * PG, 8);
	uint64_t data_sum = fill(data_pattern, sizeof(data_pattern), 5, 8);
	for (int i = 0; i < 16; i++)
		for (int j = 0; j < 32; j++)
			pat[i][j] = (unsigned char)(i * 37 + j * 11 + 1);
	unsigned int mxcsr = 0x7F80;                           /* round toward zero */
	asm volatile("ldmxcsr %0" : : "m"(mxcsr));
	volatile uint64_t counter = 0, *shadow = (uint64_t *)(heap + heap_len);

	snprintf(buf, sizeof(buf), "ready\nfile_sum0=%lu\n", (unsigned long)file_sum0);
	put(ready, buf);
	struct timespec ts = {0, 1000000};
	while (!stop) {
		ymm_nanosleep(&ts);
		if (memcmp(out, pat, sizeof(pat)))
			failf("ymm registers changed across nanosleep", out[0][0], pat[0][0]);
		counter++;
		*shadow = counter;
	}

	/* checks */
	if (syscall(SYS_getpid) != pid)
		failf("pid", syscall(SYS_getpid), pid);
	if (!counter || *shadow != counter)
		failf("counter", (long)counter, (long)*shadow);
	if (sum(heap, heap_len, 64) != heap_sum)
		failf("malloc'd pattern", 0, 0);
	if (sum(brk_heap, 64 * 1024, 8) != brk_sum)
		failf("[heap] pattern", 0, 0);
	uint64_t a = 0;
	for (size_t i = 0; i < anon_len; i += 3 * PG)
		a += sum(anon + i, PG, 8);
	if (a != anon_sum)
		failf("anon private pattern", (long)a, (long)anon_sum);
	if (sum(anon + PG, PG, 8) != 0)
		failf("anon hole not zero", (long)sum(anon + PG, PG, 8), 0);
	if (sum(shared, 4 * PG, 8) != shared_sum)
		failf("anon shared pattern", 0, 0);
	if (sum(ro, 2 * PG, 8) != ro_sum)
		failf("read-only pattern", 0, 0);
	if (sum(file, 4 * PG, 8) != file_sum)
		failf("private file mapping", (long)sum(file, 4 * PG, 8), (long)file_sum);
	if (sum(data_pattern, sizeof(data_pattern), 8) != data_sum)
		failf(".data pattern", 0, 0);
	asm volatile("stmxcsr %0" : "=m"(mxcsr));
	if ((mxcsr & 0xFFC0) != 0x7F80)
		failf("mxcsr", mxcsr, 0x7F80);
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, SIGUSR2) || sigismember(&cur, SIGUSR1))
		failf("signal mask", sigismember(&cur, SIGUSR2), 1);
	struct sigaction old;
	sigaction(SIGUSR1, NULL, &old);
	if (old.sa_sigaction != on_usr1 || !sigismember(&old.sa_mask, SIGHUP))
		failf("SIGUSR1 action", 0, 0);
	raise(SIGUSR1);
	if (usr1_hits != 1 || !usr1_on_altstack)
		failf("SIGUSR1 handler on the altstack", usr1_hits, usr1_on_altstack);
	put(result, fail[0] ? (strcat(fail, "\n"), fail) : "PASS\n");
	return 0;
}
