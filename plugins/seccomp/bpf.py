"""Classic BPF programs as seccomp takes them: checked before anything starts.

The kernel's own checks, in Python, so that a program of an image that
SECCOMP_SET_MODE_FILTER would refuse (or that could not mean what the dump
saw) is refused at collect naming its field, not half-way through a
restore: bpf_check_classic() (net/core/filter.c: known opcodes, jumps
inside the program, a return last, no division by a constant zero, scratch
memory written before it is read) and seccomp_check_filter()
(kernel/seccomp.c: the opcodes seccomp allows, 32-bit aligned loads inside
struct seccomp_data).
"""
from __future__ import annotations

import struct

MAXINSNS = 4096                  # BPF_MAXINSNS: per filter
MAX_INSNS_PER_PATH = 32768       # kernel/seccomp.c: a chain, 4 more per filter
PATH_PENALTY = 4
MEMWORDS = 16                    # BPF_MEMWORDS
SECCOMP_DATA_SIZE = 64           # sizeof(struct seccomp_data)
INSN = struct.Struct("<HBBI")    # struct sock_filter: code, jt, jf, k

# opcodes (include/uapi/linux/bpf_common.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, ABS, IMM, MEM, LEN = 0x00, 0x20, 0x00, 0x60, 0x80
K, X, A = 0x00, 0x08, 0x10
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, XOR = (0x00, 0x10, 0x20, 0x30, 0x40, 0x50,
                                                 0x60, 0x70, 0x80, 0xA0)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
TAX, TXA = 0x00, 0x80
RET_K, RET_A = RET | K, RET | A
LD_ABS = LD | W | ABS
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000

_ALU = {ALU | op | src for op in (ADD, SUB, MUL, DIV, AND, OR, XOR, LSH, RSH) for src in (K, X)}
_COND = {JMP | op | src for op in (JEQ, JGT, JGE, JSET) for src in (K, X)}
# seccomp_check_filter()'s list (BPF_MOD and the packet loads are not in it)
ALLOWED = (_ALU | _COND | {RET_K, RET_A, ALU | NEG, LD | IMM, LDX | IMM, MISC | TAX,
                           MISC | TXA, LD | MEM, LDX | MEM, ST, STX, JMP | JA,
                           LD_ABS, LD | W | LEN, LDX | W | LEN})


def insns(program: bytes) -> list[tuple[int, int, int, int]]:
    return list(INSN.iter_unpack(program))


def problem(program: bytes) -> str | None:
    """Why the kernel would refuse `program` as a seccomp filter, or None."""
    if len(program) % INSN.size:
        return f"{len(program)} bytes, not a whole number of {INSN.size}-byte instructions"
    code = insns(program)
    if not 1 <= len(code) <= MAXINSNS:
        return f"{len(code)} instructions, not 1 to {MAXINSNS}"
    for pc, (op, jt, jf, k) in enumerate(code):
        left = len(code) - pc - 1            # instructions after this one
        if op not in ALLOWED:
            return f"instruction {pc}: opcode {op:#x} is not one seccomp allows"
        if op == LD_ABS and (k >= SECCOMP_DATA_SIZE or k & 3):
            return f"instruction {pc}: load at {k} is outside struct seccomp_data or unaligned"
        if op == ALU | DIV | K and k == 0:
            return f"instruction {pc}: division by zero"
        if op in (ALU | LSH | K, ALU | RSH | K) and k >= 32:
            return f"instruction {pc}: shift by {k}"
        if op in (LD | MEM, LDX | MEM, ST, STX) and k >= MEMWORDS:
            return f"instruction {pc}: scratch memory word {k} of {MEMWORDS}"
        if op == JMP | JA and k >= left:
            return f"instruction {pc}: jump past the end"
        if op in _COND and max(jt, jf) >= left:
            return f"instruction {pc}: jump past the end"
    if code[-1][0] not in (RET_K, RET_A):
        return "the last instruction is not a return"
    return _unset_memory(code)


def may_notify(program: bytes) -> bool:
    """Whether the filter may return SECCOMP_RET_USER_NOTIF (to a listener
    the restored filter would not have): a return of that action, or of
    the accumulator, whose value the program computes."""
    return any(op == RET_A or op == RET_K and k & SECCOMP_RET_ACTION_FULL ==
               SECCOMP_RET_USER_NOTIF for op, _, _, k in insns(program))


def _unset_memory(code) -> str | None:
    """check_load_and_stores(): a scratch word read on a path that never wrote it."""
    everything = (1 << MEMWORDS) - 1
    masks = [everything] * len(code)
    valid = 0
    for pc, (op, jt, jf, k) in enumerate(code):
        valid &= masks[pc]
        if op in (ST, STX):
            valid |= 1 << k
        elif op in (LD | MEM, LDX | MEM) and not valid >> k & 1:
            return f"instruction {pc}: scratch memory word {k} read before it is written"
        elif op == JMP | JA:
            masks[pc + 1 + k] &= valid
            valid = everything
        elif op in _COND:
            masks[pc + 1 + jt] &= valid
            masks[pc + 1 + jf] &= valid
            valid = everything
    return None
