/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -mavx2 ;
 * needs=avx2 ;
 * what: live extended state: ymm0-ymm15 hold known values, three x87 stack
 *       slots, a non-default x87 control word and MXCSR, all compared in a
 *       loop that makes no syscall, so the dump catches them in registers */
#include <stdint.h>
#include "target.h"

#define MXCSR_WANT 0xDF80u   /* round up + flush-to-zero, all masked */
#define X87_CW_WANT 0x0A7Fu  /* round up, 53-bit precision, all masked */

/* ref[i] is ymm_i's value, nref[i] its complement (see the loop). */
static uint64_t ref[16][4] __attribute__((aligned(32)));
static uint64_t nref[16][4] __attribute__((aligned(32)));
/* An 80-bit x87 constant not representable as a double. */
/* Loop count, in memory: tests wait for it to move before poking. */
static volatile uint64_t iters;
static const unsigned char x87c[10] = {
	0x35, 0x68, 0x2b, 0x9c, 0xd1, 0xe4, 0x07, 0xa5, 0xff, 0x3f
};

static const char *check_name(unsigned int idx)
{
	static char buf[16];
	static const char *const other[] = {
		"x87 st(pi)", "x87 st(1.0)", "x87 st(const)", "MXCSR",
		"x87 control word"
	};

	if (idx < 16) {
		snprintf(buf, sizeof(buf), "ymm%u", idx);
		return buf;
	}
	return idx - 16 < 5 ? other[idx - 16] : "?";
}

/*
 * Equality without a scratch register, so all 16 ymm keep their values:
 * vptest m, y sets CF iff (~y & m) == 0 and ZF iff (y & m) == 0, so
 * CF with m = ref means ref ⊆ y, ZF with m = ~ref means y ⊆ ref.
 */
#define CHK(i)								\
	"mov $" #i ", %%ecx\n\t"					\
	"vptest " #i "*32(%[ref]), %%ymm" #i "\n\t"			\
	"jnc 8f\n\t"							\
	"vptest " #i "*32(%[nref]), %%ymm" #i "\n\t"			\
	"jnz 8f\n\t"
#define LD(i) "vmovdqu " #i "*32(%[ref]), %%ymm" #i "\n\t"

int main(int argc, char **argv)
{
	uint32_t mx = 0, mx_saved, mx_want = MXCSR_WANT;
	uint16_t cw = 0, cw_saved, cw_want = X87_CW_WANT;
	unsigned int bad;
	unsigned char final = 0;
	int i, j;

	tgt_init(argc, argv);
	for (i = 0; i < 16; i++)
		for (j = 0; j < 4; j++) {
			/* Distinct per register and per lane, upper half too. */
			ref[i][j] = 0x0123456789abcdefULL * (i * 4 + j + 1) ^
				    ((uint64_t)getpid() << 32);
			nref[i][j] = ~ref[i][j];
		}
	__asm__ volatile("stmxcsr %0; fnstcw %1" : "=m"(mx_saved), "=m"(cw_saved));
	__asm__ volatile("ldmxcsr %0; fldcw %1" : : "m"(mx_want), "m"(cw_want));
	tgt_info("mxcsr=%#x", MXCSR_WANT);
	tgt_info("x87_cw=%#x", X87_CW_WANT);
	tgt_info("iters=%p", (void *)&iters);
	tgt_ready();

	__asm__ volatile(
		LD(0) LD(1) LD(2) LD(3) LD(4) LD(5) LD(6) LD(7)
		LD(8) LD(9) LD(10) LD(11) LD(12) LD(13) LD(14) LD(15)
		/* x87 stack: st0 = pi, st1 = 1.0, st2 = x87c */
		"fldt %[x87c]\n\t"
		"fld1\n\t"
		"fldpi\n\t"
		"1:\n\t"
		CHK(0) CHK(1) CHK(2) CHK(3) CHK(4) CHK(5) CHK(6) CHK(7)
		CHK(8) CHK(9) CHK(10) CHK(11) CHK(12) CHK(13) CHK(14) CHK(15)
		/* Push a fresh copy, compare with the kept slot, pop it. */
		"mov $16, %%ecx\n\t"
		"fldpi\n\t"
		"fucomip %%st(1), %%st\n\t"
		"jne 8f\n\t"
		"jp 8f\n\t"
		"mov $17, %%ecx\n\t"
		"fld1\n\t"
		"fucomip %%st(2), %%st\n\t"
		"jne 8f\n\t"
		"jp 8f\n\t"
		"mov $18, %%ecx\n\t"
		"fldt %[x87c]\n\t"
		"fucomip %%st(3), %%st\n\t"
		"jne 8f\n\t"
		"jp 8f\n\t"
		"mov $19, %%ecx\n\t"
		"stmxcsr %[mx]\n\t"
		"mov %[mx], %%eax\n\t"
		"cmp %[mxw], %%eax\n\t"
		"jne 8f\n\t"
		"mov $20, %%ecx\n\t"
		"fnstcw %[cw]\n\t"
		"movzwl %[cw], %%eax\n\t"
		"movzwl %[cww], %%edx\n\t"
		"cmp %%edx, %%eax\n\t"
		"jne 8f\n\t"
		"incq %[iters]\n\t"
		"cmpb $0, %[final]\n\t"
		"jne 7f\n\t"
		/*
		 * The only way out besides a mismatch: the SIGTERM flag. It
		 * may be set mid-iteration (the restored task resumes there),
		 * so run one more whole pass of checks before leaving.
		 */
		"cmpl $0, %[stop]\n\t"
		"je 1b\n\t"
		"movb $1, %[final]\n\t"
		"jmp 1b\n\t"
		"7:\n\t"
		"mov $-1, %%ecx\n\t"
		"8:\n\t"
		"fstp %%st(0)\n\t"
		"fstp %%st(0)\n\t"
		"fstp %%st(0)\n\t"
		"vzeroupper\n\t"
		: "=&c"(bad), [iters] "+m"(iters), [mx] "=m"(mx), [cw] "=m"(cw),
		  [final] "+m"(final)
		: [ref] "r"(ref), [nref] "r"(nref), [x87c] "m"(x87c),
		  [mxw] "m"(mx_want), [cww] "m"(cw_want), [stop] "m"(tgt_stop)
		: "rax", "rdx", "cc", "memory",
		  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
		  "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
		  "xmm15", "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)",
		  "st(6)", "st(7)");

	if (bad != (unsigned int)-1) {
		tgt_check(0, "%s changed after %llu good iterations"
			  " (MXCSR %#x, x87 CW %#x)", check_name(bad),
			  (unsigned long long)iters, mx, cw);
		tgt_wait_stop();
	}
	tgt_check(iters > 0, "the register loop never completed an iteration");
	__asm__ volatile("ldmxcsr %0; fldcw %1" : : "m"(mx_saved), "m"(cw_saved));
	tgt_finish();
}
