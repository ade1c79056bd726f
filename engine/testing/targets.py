"""Test targets: their headers, and building them.

A target's header is the first comment holding ``engine-target:`` (like
zdtm's ``.desc``); fields are ``key=value`` or ``key: value``, separated by
``;``::

    /* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -mavx2 ;
     * needs=avx2 ; args: --mib N ; what: what the target proves */

``variants`` (first is the default) come from VARIANTS, ``flags`` are extra
gcc flags, ``needs`` are skipped with a reason when unmet (NEEDS);
``interpreter`` is for ``.py`` targets.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest

TARGETS_ENV = "ENGINE_TARGETS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]

# gcc flags per link mode; the header picks which ones a target is built in.
VARIANTS = {
    "dynamic-pie": ["-fPIE", "-pie"],
    "dynamic-nopie": ["-fno-pie", "-no-pie"],
    "static-pie": ["-fPIE", "-static-pie"],
    "static-nopie": ["-fno-pie", "-no-pie", "-static"],
}
BASE_CFLAGS = ["-g", "-Wall", "-Wextra", "-std=gnu11"]


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """What a target's header says about it."""

    name: str
    source: Path
    variants: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    what: str = ""
    args: str = ""
    interpreter: str = ""

    @property
    def compiled(self) -> bool:
        return self.source.suffix == ".c"


def targets_dir() -> Path:
    """tests/targets of this checkout, or $ENGINE_TARGETS_DIR."""
    return Path(os.environ.get(TARGETS_ENV) or REPO_ROOT / "tests" / "targets")


_HEADER = re.compile(r"engine-target:(.*?)(?:\*/|\n(?!\s*[#*]))", re.S)


def parse_header(source: Path) -> TargetSpec:
    """Read the ``engine-target:`` header of a .c or .py target."""
    head = source.read_text()[:4096]
    m = _HEADER.search(head)
    if not m:
        raise ValueError(f"{source}: no 'engine-target:' header")
    # Drop comment leaders so fields may span lines.
    text = re.sub(r"\n\s*[#*]+ ?", " ", m.group(1))
    # "what" comes last and is prose: it may hold ';' and ':'.
    parts = re.split(r"(?:^|;)\s*what\s*[:=]", text, maxsplit=1)
    text, what = parts if len(parts) == 2 else (text, "")
    fields = {"what": " ".join(what.split())} if what else {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = re.match(r"([\w-]+)\s*([=:])?\s*(.*)", part).groups()
        if not sep:
            raise ValueError(f"{source}: header field without value: {part!r}")
        fields[key] = " ".join(value.split())
    known = {f.name for f in dataclasses.fields(TargetSpec)}
    unknown = set(fields) - (known - {"name", "source"})
    if unknown:
        raise ValueError(f"{source}: unknown header keys {sorted(unknown)}")
    spec = TargetSpec(
        # counter.c is "counter", counter.py keeps its suffix.
        name=source.stem if source.suffix == ".c" else source.name,
        source=source,
        variants=_split(fields.get("variants", ""), ",")
        or (("dynamic-pie",) if source.suffix == ".c" else ()),
        flags=_split(fields.get("flags", "")),
        needs=_split(fields.get("needs", ""), ","),
        what=fields.get("what", ""),
        args=fields.get("args", ""),
        interpreter=fields.get("interpreter", ""),
    )
    bad = set(spec.variants) - set(VARIANTS)
    if bad:
        raise ValueError(f"{source}: unknown variants {sorted(bad)}")
    bad = set(spec.needs) - set(NEEDS)
    if bad:
        raise ValueError(f"{source}: unknown needs {sorted(bad)}")
    return spec


def _split(value: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(sep) if v.strip())


def list_targets(directory: Path | None = None) -> list[TargetSpec]:
    """Every target (.c and .py) in the targets directory, by name."""
    directory = directory or targets_dir()
    return [parse_header(p) for p in sorted(directory.iterdir())
            if p.suffix in (".c", ".py") and not p.name.startswith(".")]


def _has_cpu_flag(flag: str) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and flag in line.split()
               for line in text.splitlines())


# need -> (is it met?, reason for the skip)
NEEDS = {
    "root": (lambda: os.geteuid() == 0, "needs root"),
    "avx2": (lambda: _has_cpu_flag("avx2"), "CPU lacks AVX2"),
}


def unmet_needs(spec: TargetSpec) -> list[str]:
    """Reasons the target cannot run here (empty when it can)."""
    return [NEEDS[n][1] for n in spec.needs if not NEEDS[n][0]()]


def compile_target(spec: TargetSpec, variant: str, outdir: Path) -> Path:
    """gcc SOURCE -> OUTDIR/NAME-VARIANT; usable outside pytest (bench)."""
    exe = outdir / f"{spec.name}-{variant}"
    cmd = ["gcc", *BASE_CFLAGS, *VARIANTS[variant], *spec.flags,
           "-I", str(spec.source.parent), str(spec.source), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"building {spec.name} ({variant}) failed:\n"
                           f"$ {' '.join(cmd)}\n{proc.stderr}")
    return exe


class TargetBuilder:
    """Builds targets into one directory, once per (name, variant). The
    directory may be shared by several builders (pytest-xdist workers): a
    lock file per target lets one build it, the others wait and use it."""

    def __init__(self, outdir: Path, directory: Path | None = None):
        self.outdir = outdir
        self.directory = directory or targets_dir()
        self._built: dict[tuple[str, str], Path] = {}

    def spec(self, name: str) -> TargetSpec:
        source = self.directory / (name if "." in name else name + ".c")
        if not source.exists():
            raise FileNotFoundError(f"no target {source}")
        return parse_header(source)

    def __call__(self, name: str, variant: str | None = None) -> Path:
        """Path of the built target; skips when its needs are unmet."""
        spec = self.spec(name)
        reasons = unmet_needs(spec)
        if reasons:
            pytest.skip(f"target {name}: {', '.join(reasons)}")
        if not spec.compiled:
            return spec.source
        variant = variant or spec.variants[0]
        if variant not in spec.variants:
            raise ValueError(f"target {name} has no variant {variant!r} "
                             f"(header: {', '.join(spec.variants)})")
        key = (spec.name, variant)
        if key not in self._built:
            try:
                self._built[key] = self._build_once(spec, variant)
            except RuntimeError as e:
                pytest.fail(str(e), pytrace=False)
        return self._built[key]

    def _build_once(self, spec: TargetSpec, variant: str) -> Path:
        import fcntl
        with open(self.outdir / f"{spec.name}-{variant}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = self.outdir / f"{spec.name}-{variant}.built"
            if done.exists():
                return self.outdir / f"{spec.name}-{variant}"
            exe = compile_target(spec, variant, self.outdir)
            done.touch()
            return exe
