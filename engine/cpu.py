"""What the CPU's matrix units can do: what precision `auto` means on the CPU, and what a benchmark reports.

Sample quality does not move measurably in bf16 (benchmarks/results/cpu-bf16-quality/), so bf16 is
worth it wherever it is faster, and that depends on the CPU's bf16 instructions:

- AMX-BF16 (Xeon Sapphire Rapids and later): tile units with 16x the FLOP per cycle of fp32 FMA;
  bf16 measured faster (shared measurements of 2026-12-01; docs/backends.md, "Backends").
- AVX512-BF16 on AMD (Zen 4 and 5): dot products that do twice the FLOP of an fp32 FMA per
  instruction; bf16 measured faster than fp32 on PyTorch eager, Inductor and OpenVINO alike
  (benchmarks/results/cpu-precision-epyc-zen4/, -zen5/).
- AVX512-BF16 on Intel without AMX (Cooper Lake, or a Xeon whose hypervisor hides AMX): bf16 measured
  *slower* than fp32 on all three (benchmarks/results/cpu-precision-xeon-avx512bf16/), with oneDNN
  running its avx512_core_bf16 convolutions: without AMX tiles its bf16 dot products did not outrun
  fp32 FMA, and the conversions cost the rest.

So `auto` means bf16 where the CPU has AMX-BF16, or AVX512-BF16 on an AMD CPU, and fp32 elsewhere,
for every CPU backend (OpenVINO's own default picks bf16 on an Intel CPU with AVX512-BF16 alone too,
and is slower than its f32 there); `fp32` always means IEEE fp32; `bf16` runs anywhere, with a note
where it is expected to be slower than fp32.

The instructions come from /proc/cpuinfo on Linux and from NumPy's table of the CPU features it
dispatches on elsewhere (which lists AVX512-BF16 from NumPy 2.4 on, and never AMX, so `auto` on an Intel CPU
is fp32 there: the slower choice on an AMX CPU, never a slowdown against fp32); `undetectable_flags` names
what cannot be seen, and reports say "not detectable here" rather than that it is absent.  The vendor comes
from /proc/cpuinfo or `platform.processor()`.
"""

from __future__ import annotations

import functools
import platform
import sys
import warnings

from ddpmrt.engine.errors import UserError

# The flags, by their Linux names, that say what the CPU's matrix and vector units compute.
MATRIX_FLAGS = ("amx_bf16", "amx_int8", "amx_fp16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni",
                "avx512f", "avx_vnni", "avx2", "fma")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")   # bf16 computed natively (not emulated)
FAST_BF16_FLAGS = ("amx_bf16",)              # bf16 faster than fp32 on any vendor's CPU (the module docstring)
FAST_BF16_VENDOR_FLAGS = {"AMD": ("avx512_bf16",)}  # and on this vendor's CPUs with these
CPU_PRECISIONS = ("auto", "fp32", "bf16")
_NUMPY_NAMES = {"AVX512_BF16": "avx512_bf16", "AVX512BF16": "avx512_bf16", "AVX512FP16": "avx512_fp16",
                "AVX512VNNI": "avx512_vnni", "AVX512F": "avx512f", "AVX2": "avx2", "FMA3": "fma", "AVXVNNI": "avx_vnni"}


def _proc_cpuinfo_flags() -> frozenset[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (Linux names); see undetectable_flags for what cannot be seen."""
    if sys.platform.startswith("linux"):
        flags = _proc_cpuinfo_flags()
        if flags is not None:
            return flags
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return frozenset()
    return frozenset(name for key, name in _NUMPY_NAMES.items() if features.get(key))


def _numpy_version() -> tuple[int, int]:
    import numpy

    return tuple(int(part) for part in numpy.__version__.split(".")[:2])


def undetectable_flags() -> list[str]:
    """The flags ddpmrt cannot see on this system, so that reports say "not detectable here" instead of
    stating their absence: AMX everywhere but Linux (NumPy's table has no AMX), and AVX512-BF16 where the
    table is read from a NumPy older than 2.4, which does not list it."""
    if sys.platform.startswith("linux") and _proc_cpuinfo_flags() is not None:
        return []
    missing = ["amx_bf16", "amx_int8", "amx_fp16", "amx_tile"]
    if _numpy_version() < (2, 4):
        missing.append("avx512_bf16")
    return missing


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """The CPU's vendor: "AMD", "Intel", or "" where it is not reported."""
    text = ""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                text = next((line for line in f if line.startswith("vendor_id")), "")
        except OSError:
            pass
    text = text or platform.processor()  # Windows: "AMD64 Family 26 Model 2 Stepping 0, AuthenticAMD"
    for marker, vendor in (("AuthenticAMD", "AMD"), ("GenuineIntel", "Intel")):
        if marker in text:
            return vendor
    return ""


def matrix_instructions() -> list[str]:
    """The matrix and vector instructions of this CPU that decide a network's speed, for reports."""
    flags = cpu_flags()
    return [flag for flag in MATRIX_FLAGS if flag in flags]


def has_bf16_units() -> bool:
    """Whether the CPU computes bf16 natively (AMX-BF16 or AVX512-BF16)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def bf16_is_faster() -> bool:
    """Whether bf16 beats fp32 here: AMX-BF16 tiles, or AVX512-BF16 on AMD (see the module docstring)."""
    fast = FAST_BF16_FLAGS + FAST_BF16_VENDOR_FLAGS.get(cpu_vendor(), ())
    return any(flag in cpu_flags() for flag in fast)


def resolve_cpu_precision(precision: str) -> str:
    """auto -> bf16 where bf16_is_faster(), fp32 elsewhere; bf16 runs anywhere, with a note where it is slower."""
    if precision not in CPU_PRECISIONS:
        raise UserError(f"unknown CPU precision {precision!r}; choose one of {', '.join(CPU_PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_is_faster() else "fp32"
    if precision == "bf16" and not has_bf16_units():
        warnings.warn("bf16 on this CPU (no AMX-BF16 or AVX512-BF16) is emulated and will be slower than fp32",
                      stacklevel=3)
    elif precision == "bf16" and not bf16_is_faster():
        if "amx_bf16" in undetectable_flags():  # an AMX Xeon looks like an AVX512-BF16 one here: say so
            warnings.warn("bf16 on this Intel CPU is faster than fp32 only with AMX, which ddpmrt cannot detect on "
                          f"{sys.platform}; --precision auto picks fp32 here", stacklevel=3)
        else:
            warnings.warn("bf16 on this CPU (Intel AVX512-BF16 without AMX) measured slower than fp32; --precision "
                          "auto picks fp32 here", stacklevel=3)
    return precision


# Dense FLOP per cycle and core of the fastest matrix path for a precision (two FMA ports where there are
# two): AMX-BF16 tiles 1,024; AVX512-BF16 dot products 2 × 16 × 2 pairs × 2 = 128; AVX-512 fp32 FMA
# 2 × 16 × 2 = 64; AVX2 fp32 FMA 2 × 8 × 2 = 32.
FLOP_PER_CYCLE = (("bf16", "amx_bf16", 1024), ("bf16", "avx512_bf16", 128), ("bf16", "avx512f", 64),
                  ("fp32", "avx512f", 64), ("fp32", "avx2", 32),
                  # int8 multiply-adds (counted as 2 ops): AMX-INT8 2,048; AVX512-VNNI 2 × 64 × 2 = 256.
                  ("int8", "amx_int8", 2048), ("int8", "avx512_vnni", 256))


def clock_ghz() -> float | None:
    """The CPU's reported clock (Linux), for a peak estimate; None where it is not reported."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1]) / 1e3
    except (OSError, ValueError):
        pass
    return None


def peak_tflops(precision: str, cores: int) -> float | None:
    """An estimate of the dense peak of `cores` cores in `precision` (FLOP per cycle × clock), or None."""
    ghz = clock_ghz()
    flags = cpu_flags()
    for wanted, flag, flop in FLOP_PER_CYCLE:
        if wanted == precision and flag in flags and ghz:
            return flop * ghz * cores / 1e3
    return None
