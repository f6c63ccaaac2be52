"""Backends: anything that turns a model file into `eps = model(x_t, t)` on NumPy arrays.

Every loaded model also carries `schedule` (a NoiseSchedule) and `image_shape` (C, H, W),
read from the model file itself, so a sampler needs nothing else.

    checkpoint directory / shipped name,
    diffusers pipeline or unet/ folder   -> inductor on CUDA (torch.compile + one CUDA graph per loop),
                                            torch on the CPU (PyTorch eager; lazily imported)
    .onnx                                -> onnxruntime  (CPU, or CUDA with onnxruntime-gpu)
    .plan / .engine                      -> tensorrt     (TensorRT or TensorRT-RTX, on a GPU)
    .pt2                                 -> inductor     (an AOTInductor package, for the device it was built for)
"""

from __future__ import annotations

from pathlib import Path

from ddpmrt.engine.errors import UserError
from ddpmrt.engine.metadata import ModelMetadata
from ddpmrt.engine.schedule import NoiseSchedule

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
BACKENDS = ("auto", "inductor", "onnxruntime", "tensorrt", "torch")
DEVICES = ("cpu", "cuda")
ENGINE_SUFFIXES = (".plan", ".engine")
PACKAGE_SUFFIX = ".pt2"  # an AOTInductor package from `export-engine --flavour inductor`


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
    raise UserError(f"model {str(model)!r} not found: give a checkpoint directory, an .onnx or .plan file, "
                    f"or a shipped model ({', '.join(shipped_models()) or 'none installed'})")


def load_model(model: str | Path, backend: str = "auto", device: str = "cpu", threads: int | None = None,
               schedule: NoiseSchedule | None = None, image_shape=None, cuda_graph: bool = False,
               precision: str = "auto"):
    """Load a model file as a sampler-ready callable.

    `schedule` and `image_shape` describe an ONNX file that carries no ddpmrt metadata
    (a file with metadata ignores them); `schedule` also stands in for a bare diffusers UNet
    folder's missing scheduler config.  On a GPU backend (TensorRT, torch on CUDA) sampling
    runs the device loop, and `cuda_graph` replays the whole loop as one CUDA graph.
    `precision` is the torch backends': auto (fp16 on CUDA, fp32 on the CPU), fp32, tf32, fp16 or bf16.
    A checkpoint on CUDA runs on the inductor backend unless `backend="torch"` asks for eager PyTorch.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    path = resolve_model_path(model)
    suffix = path.suffix.lower()

    if path.is_dir():
        if backend not in ("auto", "torch", "inductor"):
            raise UserError(f"{path.name} is a checkpoint, which runs on the torch or inductor backend; for {backend}, "
                            "export it first (ddpmrt export-onnx / export-engine)")
        from ddpmrt.engine.backends.torch_backend import is_diffusers_folder, load_checkpoint, load_diffusers

        compile = backend == "inductor" or (backend == "auto" and device == "cuda")
        if is_diffusers_folder(path):
            return load_diffusers(path, device, precision=precision, cuda_graph=cuda_graph, compile=compile,
                                  schedule=schedule)
        return load_checkpoint(path, device, precision=precision, cuda_graph=cuda_graph, compile=compile)

    if suffix == ".onnx":
        if backend not in ("auto", "onnxruntime"):
            raise UserError(f"{path.name} is an ONNX model: use --backend onnxruntime, or build an engine "
                            "for tensorrt with export-engine")
        from ddpmrt.engine.backends.onnxruntime_backend import OnnxRuntimeModel

        described = None
        if schedule is not None and image_shape is not None:
            described = ModelMetadata(schedule=schedule, image_shape=image_shape)
        return OnnxRuntimeModel(path, device=device, threads=threads, fallback_metadata=described)

    if suffix in ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise UserError(f"{path.name} is a TensorRT engine: use --backend tensorrt (or sample the .onnx it "
                            "was built from with onnxruntime)")
        from ddpmrt.engine.backends.tensorrt_backend import TensorRTModel

        return TensorRTModel(path, cuda_graph=cuda_graph)

    if suffix == PACKAGE_SUFFIX:
        if backend not in ("auto", "inductor"):
            raise UserError(f"{path.name} is an inductor package: use --backend inductor (or auto)")
        from ddpmrt.engine.backends.torch_backend import load_aot_package

        return load_aot_package(path, device=device if device == "cuda" else None, cuda_graph=True)

    raise UserError(f"{path.name}: unknown model file type; use a checkpoint directory, .onnx, .plan or .pt2")

