"""cpu: the CPU a tree was dumped on, checked before a restore (criu/cpu.c).

Dump writes cpuinfo.img as CRIU does: vendor, family, model, the 19 feature
words of compel's ``enum cpuid_leafs`` (capability_ver 2), the xsave feature
mask the kernel lets user space use (ARCH_GET_XCOMP_SUPP) and the xsave sizes.

Restore compares, before any task exists. A dumped process may execute any
instruction its CPU had and may hold registers of any xsave component, so
with ``--cpu-cap ins`` (the default) every recorded instruction feature of
the table below and every recorded xsave component must be here too; with
``--cpu-cap fpu`` only the xsave components (CRIU's default: the register
state must fit); ``--cpu-cap none`` checks nothing. A refusal lists every
missing feature. An image set without cpuinfo.img (CRIU writes it only with
``criu cpuinfo dump``) is not checked. Disabling the plugin skips the check.
"""
from __future__ import annotations

import ctypes
import logging

from engine import hookimpl
from engine.images import ImageError

log = logging.getLogger("engine.plugins.cpu")

CAPABILITY_VER = 2
NCAPINTS = 19
ARCH_GET_XCOMP_SUPP = 0x1021

# CRIU's word index -> (cpuid leaf, subleaf, register) it is read from; the
# words Linux synthesizes (3, 7, 8) stay zero, as they carry no instruction.
WORDS = {0: (0x1, 0, "edx"), 1: (0x80000001, 0, "edx"), 4: (0x1, 0, "ecx"),
         6: (0x80000001, 0, "ecx"), 9: (0x7, 0, "ebx"), 10: (0xD, 1, "eax"),
         11: (0x7, 0, "ecx"), 13: (0x80000008, 0, "ebx"), 18: (0x7, 0, "edx")}

# Instruction features a user-space program may use: (word, bit) -> name,
# the names /proc/cpuinfo prints.
INSTRUCTIONS = {
    (0, 23): "mmx", (0, 24): "fxsr", (0, 25): "sse", (0, 26): "sse2",
    (1, 27): "rdtscp", (1, 29): "lm",
    (4, 0): "pni", (4, 1): "pclmulqdq", (4, 9): "ssse3", (4, 12): "fma", (4, 13): "cx16",
    (4, 19): "sse4_1", (4, 20): "sse4_2", (4, 22): "movbe", (4, 23): "popcnt",
    (4, 25): "aes", (4, 26): "xsave", (4, 28): "avx", (4, 29): "f16c", (4, 30): "rdrand",
    (6, 0): "lahf_lm", (6, 5): "abm", (6, 6): "sse4a", (6, 11): "xop", (6, 16): "fma4",
    (6, 21): "tbm",
    (9, 0): "fsgsbase", (9, 3): "bmi1", (9, 5): "avx2", (9, 8): "bmi2", (9, 9): "erms",
    (9, 11): "rtm", (9, 16): "avx512f", (9, 17): "avx512dq", (9, 18): "rdseed",
    (9, 19): "adx", (9, 21): "avx512ifma", (9, 23): "clflushopt", (9, 24): "clwb",
    (9, 26): "avx512pf", (9, 27): "avx512er", (9, 28): "avx512cd", (9, 29): "sha_ni",
    (9, 30): "avx512bw", (9, 31): "avx512vl",
    (10, 0): "xsaveopt", (10, 1): "xsavec", (10, 2): "xgetbv1",
    (11, 1): "avx512vbmi", (11, 3): "pku", (11, 6): "avx512_vbmi2", (11, 8): "gfni",
    (11, 9): "vaes", (11, 10): "vpclmulqdq", (11, 11): "avx512_vnni",
    (11, 12): "avx512_bitalg", (11, 14): "avx512_vpopcntdq", (11, 22): "rdpid",
    (13, 0): "clzero",
    (18, 2): "avx512_4vnniw", (18, 3): "avx512_4fmaps", (18, 4): "fsrm",
    (18, 8): "avx512_vp2intersect", (18, 14): "serialize", (18, 22): "amx_bf16",
    (18, 23): "avx512_fp16", (18, 24): "amx_tile", (18, 25): "amx_int8",
}

XFEATURES = {0: "x87", 1: "sse", 2: "avx (ymm)", 3: "mpx bndregs", 4: "mpx bndcsr",
             5: "avx512 opmask", 6: "avx512 zmm_hi256", 7: "avx512 hi16_zmm",
             9: "pkru", 11: "cet_u", 17: "amx tilecfg", 18: "amx tiledata"}

CHECKS = ("ins", "fpu", "none")


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("cpuinfo", "cpuinfo.img", 0x61404013, P + "cpuinfo_pb2", "cpuinfo_entry",
                                magic_name="CPUINFO"))


# --- options -----------------------------------------------------------------

@hookimpl
def engine_addoption(parser):
    parser.add_argument("--cpu-cap", choices=CHECKS, default="ins",
                        help="restore: what of the dumped CPU must be here: 'ins' "
                             "instruction features and xsave state (default), 'fpu' "
                             "xsave state only, 'none' nothing")


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_finish(ctx):
    ctx.images.write("cpuinfo", [current()])


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    mode = getattr(ctx.options, "cpu_cap", "ins")
    if mode == "none" or not ctx.images.exists("cpuinfo"):
        return
    dumped = ctx.images.read_one("cpuinfo")
    if not dumped.x86_entry:
        raise ValueError("cpuinfo.img: no x86_entry: the images come from another "
                         "architecture")
    missing = missing_features(dumped.x86_entry[0], current().x86_entry[0], mode)
    if missing:
        raise ImageError("cpuinfo.img", f"this CPU lacks {', '.join(missing)} "
                                        "(--cpu-cap none restores anyway)")


# --- helpers -----------------------------------------------------------------

def current():
    """This machine's cpuinfo_entry."""
    from engine.images.proto import cpuinfo_pb2
    from engine.tracer.binding import cpuid
    _, ebx, ecx, edx = cpuid(0)
    vendor = (ebx.to_bytes(4, "little") + edx.to_bytes(4, "little")
              + ecx.to_bytes(4, "little")).decode(errors="replace")
    eax = cpuid(1)[0]
    family = (eax >> 8) & 0xF
    model = (eax >> 4) & 0xF
    if family in (6, 15):
        model |= ((eax >> 16) & 0xF) << 4
    if family == 15:
        family += (eax >> 20) & 0xFF
    max_basic, max_ext = cpuid(0)[0], cpuid(0x80000000)[0]
    words = [0] * NCAPINTS
    for word, (leaf, sub, reg) in WORDS.items():
        if leaf <= (max_ext if leaf & 0x80000000 else max_basic):
            words[word] = cpuid(leaf, sub)["eax ebx ecx edx".split().index(reg)]
    x = cpuinfo_pb2.cpuinfo_x86_entry(
        vendor_id={"GenuineIntel": 1, "AuthenticAMD": 2}.get(vendor, 0),
        cpu_family=family, model=model, stepping=eax & 0xF,
        capability_ver=CAPABILITY_VER, capability=words,
        model_id=_model_id(max_ext), xfeatures_mask=_xfeatures())
    _, x.xsave_size, x.xsave_size_max, _ = cpuid(0xD, 0)
    return cpuinfo_pb2.cpuinfo_entry(x86_entry=[x])


def missing_features(dumped, here, mode: str) -> list[str]:
    """Names of what the dumped CPU had and this one lacks."""
    missing = []
    lost = dumped.xfeatures_mask & ~here.xfeatures_mask
    missing += [XFEATURES.get(b, f"xfeature {b}") for b in range(64) if lost >> b & 1]
    if mode == "ins":
        if dumped.capability_ver != CAPABILITY_VER:
            raise ImageError("cpuinfo.img", f"capability_ver {dumped.capability_ver} is "
                                            f"not {CAPABILITY_VER}")
        had, has = list(dumped.capability), list(here.capability)
        for (word, bit), name in INSTRUCTIONS.items():
            if _bit(had, word, bit) and not _bit(has, word, bit):
                missing.append(name)
    return missing


def _bit(words, word: int, bit: int) -> bool:
    return word < len(words) and bool(words[word] >> bit & 1)


def _xfeatures() -> int:
    """The xsave components the kernel lets user space use."""
    from engine import libc
    mask = ctypes.c_uint64()
    if libc.syscall("arch_prctl", ARCH_GET_XCOMP_SUPP, ctypes.addressof(mask)) != 0:
        return 0
    return mask.value


def _model_id(max_ext: int) -> str:
    from engine.tracer.binding import cpuid
    if max_ext < 0x80000004:
        return ""
    raw = b"".join(r.to_bytes(4, "little") for leaf in range(0x80000002, 0x80000005)
                   for r in cpuid(leaf))
    return raw.split(b"\0", 1)[0].decode(errors="replace").strip()
