"""One interface over the two TensorRT flavours: full TensorRT (`tensorrt`) and TensorRT-RTX (`tensorrt_rtx`).

They share the builder, parser and runtime API.  Where they differ:

                        tensorrt (10.x / 11.x)              tensorrt_rtx
    precision           strongly typed network: from the ONNX tensor types (TensorRT 11 has no FP16 flag)
    build without GPU   no                                  yes, for explicit compute-capability targets
    GPU targets         the GPU it builds on                SM75 ... SM121 (no Hopper), `current`
    timing cache        yes                                 deprecated (kernels are compiled at load time)
    CUDA graphs         captured by ddpmrt                  built-in `CudaGraphStrategy.WHOLE_GRAPH_CAPTURE`
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ddpmrt.engine.errors import UserError, install_hint

FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}   # flavour name -> module
PIP_COMMANDS = {"tensorrt": "pip install tensorrt (its libraries come from NVIDIA's package index)",
                "tensorrt-rtx": f"{install_hint('tensorrt-rtx')} (or: pip install tensorrt-rtx)"}

# TensorRT-RTX compute-capability targets by the names --targets accepts.
RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
# What `--targets auto` builds for without a GPU: TensorRT-RTX's own default set (Ampere, Ada, Blackwell RTX)
# and sm121 (GB10), named so that the sidecar says which GPUs the engine runs on.
RTX_DEFAULT_TARGETS = ("sm80", "sm86", "sm89", "sm120", "sm121")


def rtx_target(capability: tuple[int, int]) -> str | None:
    """The --targets name of a GPU's compute capability, if TensorRT-RTX can target it (None: Hopper, ...)."""
    name = f"sm{capability[0]}{capability[1]}"
    return name if name in RTX_TARGETS else None


@dataclass
class Flavour:
    name: str            # "tensorrt" | "tensorrt-rtx"
    trt: ModuleType      # the imported module
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    @property
    def has_timing_cache(self) -> bool:
        return not self.is_rtx

    def network_flags(self) -> int:
        # TensorRT-RTX networks are always strongly typed; full TensorRT needs the flag.
        if self.is_rtx:
            return 0
        return 1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    def compute_capability(self, target: str):
        """The ComputeCapability enum member for `current` or `smXY` (TensorRT-RTX only)."""
        key = "CURRENT" if target == "current" else target.upper()
        try:
            return getattr(self.trt.ComputeCapability, key)
        except AttributeError:
            raise UserError(f"TensorRT-RTX {self.version} cannot target {target}; choose current or "
                            f"{', '.join(RTX_TARGETS)} (Hopper, sm90, is not an RTX target)") from None


def _try_import(name: str) -> Flavour | None:
    try:
        module = importlib.import_module(FLAVOURS[name])
    except ImportError:
        return None
    return Flavour(name, module, getattr(module, "__version__", "unknown"))


def import_flavour(name: str = "auto") -> Flavour:
    """`auto` prefers full TensorRT (it covers data-centre GPUs), else TensorRT-RTX."""
    if name not in ("auto", *FLAVOURS):
        raise UserError(f"unknown TensorRT flavour {name!r}; choose auto, tensorrt or tensorrt-rtx")
    candidates = ["tensorrt", "tensorrt-rtx"] if name == "auto" else [name]
    for candidate in candidates:
        flavour = _try_import(candidate)
        if flavour is not None:
            return flavour
    if name == "auto":
        raise UserError("no TensorRT flavour is installed: " + PIP_COMMANDS["tensorrt-rtx"] +
                        " (Linux and Windows, builds without a GPU), or " + PIP_COMMANDS["tensorrt"])
    raise UserError(f"{name} is not installed: {PIP_COMMANDS[name]}")
