"""Backends: anything that turns a model file into `eps = model(x_t, t)` on NumPy arrays.

Every loaded model also carries `schedule` (a NoiseSchedule) and `image_shape` (C, H, W),
read from the model file itself, so a sampler needs nothing else; `close()` (or a `with`
block) frees what it holds on the device.

    checkpoint directory / shipped name,
    diffusers pipeline or unet/ folder   -> inductor on CUDA (torch.compile + one CUDA graph per loop);
                                            on a CPU where bf16 is faster, openvino (its ONNX export, made once
                                            and cached) where installed, else inductor (frozen weights);
                                            else torch (PyTorch eager), which is also what runs, with a
                                            note, where inductor has no compiler (inductor_compiler_missing);
                                            loaded by the torch side
    .onnx                                -> openvino     (CPU, where installed: bf16 where it is faster)
                                            onnxruntime  (CPU otherwise, fp32; CUDA with onnxruntime-gpu)
    .plan / .engine                      -> tensorrt     (TensorRT or TensorRT-RTX, on a GPU)
    .pt2                                 -> inductor     (an AOTInductor package, on the device it was built for)

Checkpoints and diffusers folders need the U-Net definition, which lives on the torch side
(ddpmrt.export).  This package never imports it: the torch side declares its loaders under the
entry-point group `ddpmrt.model_loaders` (pyproject.toml), and `model_loader` looks them up
there the first time a checkpoint is loaded.  `register_model_loader` adds one in-process.
"""

from __future__ import annotations

import json
import os
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.errors import UserError, install_hint
from ddpmrt.engine.schedule import NoiseSchedule

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# Every backend load_model runs, by name: the one list the command line, bench (bench_backends.py) and report
# derive theirs from.
BACKENDS = ("auto", "inductor", "onnxruntime", "openvino", "tensorrt", "torch")
# The CPU backends of an .onnx file, fastest first (benchmarks/results/cpu-precision-*/: OpenVINO ahead of
# ONNX Runtime in bf16, on par in fp32).
ONNX_CPU_BACKENDS = ("openvino", "onnxruntime")
DEVICES = ("cpu", "cuda")
ENGINE_SUFFIXES = (".plan", ".engine")
PACKAGE_SUFFIX = ".pt2"  # an AOTInductor package from `export-engine --flavour inductor`
LOADER_GROUP = "ddpmrt.model_loaders"
FOLDER_KINDS = ("checkpoint", "diffusers")
CPU_COMPILE_VARIABLE = "DDPMRT_CPU_COMPILE"  # 0: a checkpoint on the CPU stays eager under backend="auto"
CHECKPOINT_BACKENDS = ("torch", "inductor", "openvino")  # openvino: the checkpoint's cached ONNX export

_loaders: dict[str, Callable] = {}


def register_model_loader(kind: str, loader: Callable) -> None:
    """Make `loader(path, backend=, device=, precision=, cuda_graph=, schedule=, threads=)` load folders of
    `kind`; `backend` is one of CHECKPOINT_BACKENDS."""
    if kind not in FOLDER_KINDS:
        raise ValueError(f"unknown model folder kind {kind!r}; one of {', '.join(FOLDER_KINDS)}")
    _loaders[kind] = loader


def model_loader(kind: str) -> Callable:
    """The loader registered for `kind`, from this process or the `ddpmrt.model_loaders` entry points."""
    if kind not in _loaders:
        found = [ep for ep in entry_points(group=LOADER_GROUP) if ep.name == kind]
        if not found:
            raise UserError(f"no loader for {kind} folders is installed; reinstall ddpmrt with its torch side: "
                            f"{install_hint('export')}")
        try:
            _loaders[kind] = found[0].load()
        except ImportError as exc:
            raise UserError(f"{kind} folders run on the torch backend, which needs {exc.name or 'PyTorch'}: "
                            f"{install_hint('export')} (or use an .onnx model with --backend onnxruntime)") from None
    return _loaders[kind]


def shipped_models() -> list[str]:
    if not SHIPPED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model_path(model: str | Path) -> Path:
    """A path that exists, or the directory of a model shipped inside the package."""
    path = Path(model)
    if path.exists():
        return path
    shipped = SHIPPED_MODELS_DIR / str(model)
    if (shipped / "config.json").is_file():
        return shipped
    text = str(model)
    if "/" in text.replace("\\", "/").strip("/") and not text.startswith((".", "/", "~")) and text.count("/") == 1 \
            and not Path(text).suffix:
        # owner/name: a Hugging Face hub id.  ddpmrt never downloads at run time: the user fetches it once.
        raise UserError(f"model {text!r} not found here; a hub id must be downloaded first, e.g. python -c \"from diffusers "
                        f"import DDPMPipeline; DDPMPipeline.from_pretrained('{text}').save_pretrained('{text.split('/')[-1]}')\" "
                        f"(or: huggingface-cli download {text} --local-dir {text.split('/')[-1]}), then pass that folder")
    raise UserError(f"model {text!r} not found: give a checkpoint directory, a diffusers pipeline or unet/ folder, an "
                    f".onnx, .plan or .pt2 file, or a shipped model ({', '.join(shipped_models()) or 'none installed'})")


def is_diffusers_folder(path: Path) -> bool:
    """A saved diffusers pipeline (model_index.json) or model folder (config.json with a _class_name)."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return True
    try:
        return "_class_name" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


SHIPPED_EXPORT = "model.onnx"   # a checkpoint folder's own fp32 ONNX export (the shipped models carry one)


def is_own_export(folder: Path, metadata: ModelMetadata) -> bool:
    """Whether the ONNX file with this (sealed) metadata is the export of the checkpoint folder's very weights:
    its metadata names their SHA-256.  The shipped models' model.onnx is; an export of other weights is not."""
    from ddpmrt.engine.artifacts.integrity import sha256_file

    weights = Path(folder) / "model.safetensors"
    return weights.is_file() and metadata.source_sha256 == sha256_file(weights)


def _shipped_export(folder: Path, threads: int | None, precision: str):
    """The folder's model.onnx on OpenVINO where it is the export of these very weights (is_own_export): no
    PyTorch import and no export, so a shipped model's first sample is quick.  None otherwise, and the torch side
    exports into the cache as for any checkpoint."""
    from ddpmrt.engine.backends.openvino_backend import OpenVinoModel

    onnx = folder / SHIPPED_EXPORT
    if not onnx.is_file() or not (folder / "model.safetensors").is_file():
        return None
    model = OpenVinoModel(onnx, threads=threads, precision=precision)
    return model if is_own_export(folder, model.metadata) else None


def load_model(model: str | Path, backend: str = "auto", device: str | None = None, threads: int | None = None,
               schedule: NoiseSchedule | None = None, image_shape=None, cuda_graph: bool | None = None,
               precision: str = "auto"):
    """Load a model file as a sampler-ready callable.

    `device` None means the CPU, except for what runs on one device only: an engine (CUDA) and
    an AOTInductor package (the device it was built for, which an explicit other `device` contradicts).
    `schedule` and `image_shape` describe an ONNX file that carries no ddpmrt metadata
    (a file with metadata ignores them); `schedule` also stands in for a bare diffusers UNet
    folder's missing scheduler config.  On a GPU backend (TensorRT, torch on CUDA) sampling
    runs the device loop, and `cuda_graph` replays the whole loop as one CUDA graph (None: the model's
    default, which is a graph for a CUDA `.pt2` only).  An option a model cannot honour is a UserError,
    never dropped: a precision other than an engine's or package's own, threads for a GPU engine.
    `precision`: auto (fp16 on CUDA; on the CPU bf16 where it is faster: AMX-BF16, or AVX512-BF16 on AMD,
    engine/cpu.py; else fp32), fp32
    (always IEEE fp32), tf32, fp16 (CUDA) or bf16; ONNX Runtime computes in fp32 only.  An .onnx on the
    CPU runs on the first installed of ONNX_CPU_BACKENDS unless `backend` names one.
    A checkpoint runs on inductor on CUDA; in bf16 on a CPU where bf16 is faster on OpenVINO (its cached
    ONNX export) where installed, else inductor; else eager torch (`checkpoint_backend`).  `backend`
    torch, inductor or openvino picks one.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device is not None and device not in DEVICES:
        raise UserError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    path = resolve_model_path(model)
    suffix = path.suffix.lower()

    if path.is_dir():
        if backend not in ("auto", *CHECKPOINT_BACKENDS):
            raise UserError(f"{path.name} is a checkpoint, which runs on the {', '.join(CHECKPOINT_BACKENDS)} backends; "
                            f"for {backend}, export it first (ddpmrt export-onnx / export-engine)")
        device = device or "cpu"
        if backend == "auto":
            backend = checkpoint_backend(device, precision)
        if backend == "openvino":
            from ddpmrt.engine.backends import openvino_backend

            if device != "cpu":
                raise UserError("the openvino backend runs on the CPU; use --device cpu, or --backend inductor on cuda")
            if not openvino_backend.available():  # one line naming the extra, before any export
                raise UserError(f"the openvino backend needs OpenVINO: {install_hint('openvino')} (or use "
                                "--backend inductor or torch)")
            shipped = _shipped_export(path, threads, precision)
            if shipped is not None:
                return shipped
        loader = model_loader("diffusers" if is_diffusers_folder(path) else "checkpoint")
        return loader(path, backend=backend, device=device, precision=precision, cuda_graph=bool(cuda_graph),
                      schedule=schedule, threads=threads)

    if suffix == ".onnx":
        return _load_onnx(path, backend, device or "cpu", threads, schedule, image_shape, precision)

    if suffix in ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise UserError(f"{path.name} is a TensorRT engine: use --backend tensorrt (or sample the .onnx it "
                            "was built from with onnxruntime)")
        if device == "cpu":
            raise UserError(f"{path.name} is a TensorRT engine, which runs on a GPU only; use --device cuda, "
                            "or sample the .onnx it was built from on the CPU")
        if threads is not None:
            raise UserError(f"{path.name} is a TensorRT engine, which runs on a GPU: --threads sets CPU threads; drop it")
        from ddpmrt.engine.artifacts.sidecar import ENGINE, read_sidecar

        _check_fixed_precision(path, precision, read_sidecar(path, ENGINE)["tensors"]["x"], "an engine",
                               "build another engine (export-engine)")
        from ddpmrt.engine.backends.tensorrt_backend import TensorRTModel

        return TensorRTModel(path, cuda_graph=bool(cuda_graph))

    if suffix == PACKAGE_SUFFIX:
        if backend not in ("auto", "inductor"):
            raise UserError(f"{path.name} is an inductor package: use --backend inductor (or auto)")
        from ddpmrt.engine.artifacts.sidecar import PACKAGE, read_sidecar
        from ddpmrt.engine.backends.torch_backend import load_aot_package

        _check_fixed_precision(path, precision, read_sidecar(path, PACKAGE).get("precision", "fp32"), "a package",
                               "build another package (export-engine --flavour inductor --precision ...)")
        return load_aot_package(path, device=device, cuda_graph=True if cuda_graph is None else cuda_graph,
                                threads=threads)

    raise UserError(f"{path.name}: unknown model file type; use a checkpoint directory, .onnx, .plan or .pt2")


def _check_fixed_precision(path: Path, asked: str, own: str, what: str, fix: str) -> None:
    """An engine or package computes in the precision it was built with: any other is refused, not ignored."""
    if asked not in ("auto", own):
        raise UserError(f"{path.name} is {what} built for {own}; it cannot run in {asked}: drop --precision "
                        f"(or give {own}), or {fix}")


def inductor_compiler_missing(device: str) -> str | None:
    """Why TorchInductor cannot compile for `device` here, or None: it writes Triton kernels for CUDA (PyTorch
    ships no Triton for Windows) and C++ for the CPU (a compiler on PATH: cl on Windows, $CXX or g++/clang++
    elsewhere).  Without one the first network call fails deep inside torch."""
    import importlib.util
    import shutil
    import sys

    if device == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "needs Triton for CUDA kernels, which is not installed (PyTorch ships none for Windows)"
        return None
    compilers = ["cl"] if sys.platform == "win32" else [os.environ.get("CXX") or "", "g++", "c++", "clang++"]
    if not any(name and shutil.which(name) for name in compilers):
        where = "MSVC's cl (a Developer PowerShell)" if sys.platform == "win32" else "a C++ compiler (g++ or clang++)"
        return f"needs {where} on PATH to compile for the CPU"
    return None


def checkpoint_backend(device: str, precision: str = "auto") -> str:
    """The backend a checkpoint (or diffusers folder) runs on under `backend="auto"`.

    On CUDA inductor (the loop becomes one CUDA graph).  On the CPU, where it computes in bf16 on units
    that make bf16 faster (`cpu.bf16_is_faster`), OpenVINO where installed, else inductor with frozen
    weights; eager torch elsewhere.  OpenVINO runs the checkpoint's ONNX export, made once and cached
    (the torch side's loader, export/conversion/onnx_export.py: cached_export), and beat inductor per call on the
    CPUs measured (benchmarks/results/cpu-precision-epyc-zen4/, -zen5/), with no compile per process
    (cpu-cifar10-ddim20-epyc-zen4/ has its warm start).  Inductor in bf16 is still well ahead of eager
    on AMX (shared measurements of 2026-12-01).  In fp32 eager is as fast as inductor
    (benchmarks/results/cpu-precision-xeon-avx512bf16/) and starts at once.  `DDPMRT_CPU_COMPILE=0` keeps
    eager torch on the CPU for short runs where neither a compile nor an export would pay (the test suite
    sets it).
    """
    if device == "cuda":
        return _inductor_or_torch(device)
    from ddpmrt.engine import cpu
    from ddpmrt.engine.backends import openvino_backend

    if os.environ.get(CPU_COMPILE_VARIABLE, "1") == "0" or not (cpu.bf16_is_faster() and precision in ("auto", "bf16")):
        return "torch"
    return "openvino" if openvino_backend.available() else _inductor_or_torch(device)


def _inductor_or_torch(device: str) -> str:
    """inductor where its compiler exists; else eager torch, with a one-line note of what the speed needs."""
    missing = inductor_compiler_missing(device)
    if missing is None:
        return "inductor"
    warnings.warn(f"running the checkpoint eagerly on torch: the compiled backend (inductor) {missing}", stacklevel=4)
    return "torch"


def _load_onnx(path: Path, backend: str, device: str, threads, schedule, image_shape, precision: str):
    """An .onnx on OpenVINO (CPU) or ONNX Runtime (CPU or CUDA)."""
    from ddpmrt.engine.backends import openvino_backend

    if backend not in ("auto", "onnxruntime", "openvino"):
        raise UserError(f"{path.name} is an ONNX model: use --backend openvino or onnxruntime, or build an engine "
                        "for tensorrt with export-engine")
    if backend == "auto":
        backend = "openvino" if device == "cpu" and openvino_backend.available() else "onnxruntime"
    described = None
    if schedule is not None and image_shape is not None:
        described = ModelMetadata(schedule=schedule, image_shape=image_shape)
    if backend == "openvino":
        if device != "cpu":
            raise UserError("the openvino backend runs on the CPU; use --device cpu, or --backend onnxruntime on cuda")
        return openvino_backend.OpenVinoModel(path, threads=threads, precision=precision, fallback_metadata=described)
    if precision not in ("auto", "fp32", "int8"):
        raise UserError(f"ONNX Runtime computes {path.name} in fp32 (its file's precision on CUDA), not {precision}; "
                        "use --precision fp32, or --backend openvino for bf16 on the CPU")
    from ddpmrt.engine.backends.onnxruntime_backend import OnnxRuntimeModel

    return OnnxRuntimeModel(path, device=device, threads=threads, fallback_metadata=described, precision=precision)
