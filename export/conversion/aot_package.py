"""Ahead-of-time packages: `export-engine --flavour inductor` writes an AOTInductor `.pt2`.

    build_aot_package(source, out.pt2, device, precision, profile)  ->  out.pt2 + out.pt2.json

The U-Net (its native form, time shifts precomputed) is exported by torch.export with a dynamic
batch and compiled by AOTInductor into a self-contained package for one device kind (cpu or
cuda): a new process loads it in milliseconds with no tracing or compiling, which is what
low-latency users start with.  The package takes x and returns ε in fp32, whatever precision it computes in.  Its
sidecar (`model.pt2.json`) carries the ddpmrt metadata, device, precision, batch range, torch
version, the package's SHA-256 and its own checksum, like an engine's.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.artifacts.sidecar import PACKAGE, cached_sidecar, write_sidecar
from ddpmrt.engine.errors import UserError, first_line, is_out_of_memory, out_of_memory
from ddpmrt.engine.version import __version__
from ddpmrt.export.conversion.engine_build import BatchProfile

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class PackageResult:
    path: Path
    sidecar: dict
    seconds: float
    cached: bool


class _Fp32Io(torch.nn.Module):
    """ε = module(x.to(dtype), t) returned in fp32: the package's interface in every precision."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x, t):
        return self.module(x.to(self.dtype), t).float()


def build_aot_package(source, out: Path, device: str, precision: str, profile: BatchProfile,
                      force: bool = False, progress: Callable[[str], None] | None = None) -> PackageResult:
    """`progress(line)` hears each stage before it starts (a build is tens of seconds with no other output)."""
    out = Path(out)
    progress = progress or (lambda line: None)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} for an inductor package; choose one of {', '.join(PRECISIONS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: AOTInductor compiles for the GPU it runs on and PyTorch sees none; "
                        "build on a GPU machine, or use --device cpu")
    if precision == "fp16" and device == "cpu":
        raise UserError("an fp16 inductor package needs --device cuda; on the CPU use --precision fp32 or bf16")
    key = {"source_sha256": source.metadata.source_sha256, "device": device, "precision": precision,
           "profile": [profile.min, profile.opt, profile.max], "torch": torch.__version__, "ddpmrt": __version__}
    existing = None if force else cached_sidecar(out, PACKAGE, key)
    if existing is not None:
        return PackageResult(out, existing, 0.0, cached=True)

    start = time.perf_counter()
    dtype = PRECISIONS[precision]
    module = source.eps_module().eval()
    if hasattr(source.module, "set_execution_form"):
        source.module.set_execution_form("native")
        source.module.precompute_time_table(source.metadata.schedule.num_train_timesteps)
    module = module.to(device=device, dtype=dtype)
    if device == "cuda" and dtype != torch.float32:
        module = module.to(memory_format=torch.channels_last)
    network = _Fp32Io(module, dtype).eval()
    n = max(profile.opt, 2)  # an example batch of 1 would be specialised despite the dynamic dimension
    example = (torch.randn(n, *source.metadata.image_shape, device=device), torch.zeros(n, dtype=torch.int64, device=device))
    batch = torch.export.Dim("batch", min=profile.min, max=max(profile.max, 2))
    progress(f"tracing the U-Net with torch.export (dynamic batch {profile.min}-{profile.max})")
    try:
        with torch.no_grad(), _quiet_torch_internals():
            exported = torch.export.export(network, example, dynamic_shapes={"x": {0: batch}, "t": {0: batch}})
    except (RuntimeError, ValueError, TypeError, NotImplementedError, MemoryError) as exc:
        # torch.export's errors (its UserError and Unsupported types derive from RuntimeError) are long: keep the first line.
        if is_out_of_memory(exc):
            raise out_of_memory("tracing the U-Net with torch.export") from None
        raise UserError(f"torch.export failed: {first_line(exc)}") from exc
    progress(f"compiling it with AOTInductor for {device} in {precision} (generated C++"
             f"{' and CUDA' if device == 'cuda' else ''}: about 20-90 s on 2 CPU cores, once; the .pt2 then loads in milliseconds)")
    with atomic_write(out) as tmp, _quiet_torch_internals():
        staging = tmp.with_suffix(".pt2")  # AOTInductor insists on the .pt2 suffix
        try:
            torch._inductor.aoti_compile_and_package(exported, package_path=str(staging))
            staging.replace(tmp)
        finally:
            staging.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    sidecar = write_sidecar(out, PACKAGE, {
        "metadata": source.metadata.to_strings(),
        "device": device,
        "precision": precision,
        "io": "fp32",
        "profile": {"min": profile.min, "opt": profile.opt, "max": profile.max},
        "torch_version": torch.__version__,
        "build_seconds": round(seconds, 2),
        "cache_key": key,
    })
    return PackageResult(out, sidecar, seconds, cached=False)


@contextlib.contextmanager
def _quiet_torch_internals():
    """Warnings torch raises inside its own export code about its own internals, which a user can do nothing
    about (torch 2.13: pytree's `LeafSpec` deprecation, raised while torch.export copies its tree specs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        yield
