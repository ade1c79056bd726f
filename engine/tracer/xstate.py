"""NT_X86_XSTATE buffer <-> CRIU's FpRegs fields.

Standard (non-compacted) XSAVE layout, as ptrace gives it: the 512-byte
FXSAVE legacy area, the 64-byte header (xstate_bv first), then each
component at the offset CPUID leaf 0xD reports (AVX is 576 everywhere;
PKRU is 2432 on AMD Zen, 2688 on Intel with AVX-512).
"""
from __future__ import annotations

import functools
import struct

from engine.tracer.binding import cpuid
from engine.tracer.model import FpRegs

LEGACY = struct.Struct("<HHHHQQII32I64I24I")
LEGACY_NAMES = ("cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr", "mxcsr_mask")
# component -> (field, element format, count)
# pkru is 2 words: CRIU's struct pkru_state {u32 pkru; u32 pad;}
COMPONENTS = {2: ("ymmh_space", "I", 64), 3: ("bndreg_state", "Q", 8),
              4: ("bndcsr_state", "Q", 2), 5: ("opmask_reg", "Q", 8),
              6: ("zmm_upper", "Q", 64), 7: ("hi16_zmm", "Q", 128), 9: ("pkru", "I", 2)}


@functools.lru_cache(maxsize=None)
def layout() -> tuple[int, int, dict[int, int]]:
    """(supported component mask, xstate size, component -> offset)."""
    eax, _, _, edx = cpuid(0xD, 0)
    mask = eax | (edx << 32)
    _, _, size, _ = cpuid(0xD, 0)
    offsets = {c: cpuid(0xD, c)[1] for c in COMPONENTS if mask & (1 << c)}
    return mask, size, offsets


def from_xstate(raw: bytes) -> FpRegs:
    """Split an NT_X86_XSTATE buffer at this CPU's XSAVE offsets."""
    values = LEGACY.unpack_from(raw, 0)
    fp = FpRegs(**dict(zip(LEGACY_NAMES, values[:8])))
    fp.st_space = list(values[8:40])
    fp.xmm_space = list(values[40:104])
    fp.padding = list(values[104:128])
    if len(raw) > 512 + 8:
        (fp.xstate_bv,) = struct.unpack_from("<Q", raw, 512)
    _, _, offsets = layout()
    for comp, off in offsets.items():
        name, fmt, count = COMPONENTS[comp]
        if off + struct.calcsize(f"<{count}{fmt}") <= len(raw):
            setattr(fp, name, list(struct.unpack_from(f"<{count}{fmt}", raw, off)))
    return fp


def to_xstate(fp: FpRegs) -> bytes:
    """The NT_X86_XSTATE buffer for PTRACE_SETREGSET (this CPU's layout)."""
    mask, size, offsets = layout()
    buf = bytearray(size)
    LEGACY.pack_into(buf, 0, *(getattr(fp, n) for n in LEGACY_NAMES),
                     *_fit(fp.st_space, 32), *_fit(fp.xmm_space, 64), *_fit(fp.padding, 24))
    bv = fp.xstate_bv & mask
    for comp, off in offsets.items():
        name, fmt, count = COMPONENTS[comp]
        values = getattr(fp, name)
        if values:
            struct.pack_into(f"<{count}{fmt}", buf, off, *_fit(values, count))
        else:
            bv &= ~(1 << comp)   # no data: let the CPU init the component
    struct.pack_into("<QQ", buf, 512, bv, 0)
    # sw_reserved (bytes 464..511) tells the kernel the size of the buffer.
    return bytes(buf)


def _fit(values, count):
    values = list(values)[:count]
    return values + [0] * (count - len(values))
