"""cpu: cpuinfo.img written at dump, and a restore refused on a CPU that lacks
what the dumped one had (issue 6, CPU check)."""
import subprocess

from engine.images import ImageDir
from engine.testing import engine_fails, task_gone
from plugins.cpu import INSTRUCTIONS, XFEATURES, current


KERNEL_MAY_HIDE = {"rdseed"}


def _proc_cpuinfo_flags() -> set[str]:
    text = open("/proc/cpuinfo").read()
    return set(text.split("flags\t\t: ", 1)[1].split("\n", 1)[0].split())


def test_recorded_features_are_the_ones_the_kernel_reports(dumped_counter):
    """What dump records agrees with the kernel's own view (/proc/cpuinfo),
    and crit reads the image."""
    _, img = dumped_counter
    x = ImageDir(str(img)).read_one("cpuinfo").x86_entry[0]
    words = list(x.capability)
    recorded = {name for (word, bit), name in INSTRUCTIONS.items() if words[word] >> bit & 1}
    flags = _proc_cpuinfo_flags()
    kernel = {name for name in INSTRUCTIONS.values() if name in flags}
    # The record is CPUID's (what a program sees); the kernel hides a few
    # bits it distrusts (RDSEED on AMD Zen 5, arch/x86/kernel/cpu/amd.c),
    # and never shows one CPUID lacks.
    assert kernel <= recorded
    assert recorded - kernel <= KERNEL_MAY_HIDE
    assert {"sse2", "lm"} <= recorded
    assert x.xfeatures_mask & 0b11 == 0b11              # x87 and sse at least
    out = subprocess.run(["crit", "decode", "-i", str(img / "cpuinfo.img"), "--pretty"],
                         capture_output=True, text=True, check=True).stdout
    assert '"capability_ver": 2' in out


def _claim_absent_features(img):
    """Edit cpuinfo.img so the dumped CPU had an instruction feature and an
    xsave component this one lacks; return their names."""
    images = ImageDir(str(img))
    entry = images.read_one("cpuinfo")
    x = entry.x86_entry[0]
    here = current().x86_entry[0]
    word, bit = next(k for k in INSTRUCTIONS
                     if not list(here.capability)[k[0]] >> k[1] & 1)
    x.capability[word] |= 1 << bit
    xbit = next(b for b in sorted(XFEATURES) if not here.xfeatures_mask >> b & 1)
    x.xfeatures_mask |= 1 << xbit
    images.write("cpuinfo", [entry])
    return INSTRUCTIONS[word, bit], XFEATURES[xbit]


def test_hook_engine_addoption_cpu_cap(dumped_counter, engine_cli):
    target, img = dumped_counter
    instruction, xfeature = _claim_absent_features(img)
    line = engine_fails("restore", "-D", img)
    assert line.startswith("engine: error: cpuinfo.img: this CPU lacks")
    assert instruction in line and xfeature in line
    assert task_gone(target.pid)
    # fpu: only the register state must fit, and it does not.
    line = engine_fails("restore", "-D", img, "--cpu-cap", "fpu")
    assert xfeature in line and instruction not in line
    assert task_gone(target.pid)
    # none: the user takes the risk; the counter never used those features.
    engine_cli("restore", "-D", img, "--cpu-cap", "none")
    assert target.verdict() == "PASS"


def test_image_from_another_architecture_is_refused(dumped_counter):
    target, img = dumped_counter
    images = ImageDir(str(img))
    entry = images.read_one("cpuinfo")
    del entry.x86_entry[:]
    images.write("cpuinfo", [entry])
    line = engine_fails("restore", "-D", img)
    assert "cpuinfo.img: no x86_entry" in line
    assert task_gone(target.pid)
