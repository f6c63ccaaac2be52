"""What `ddpmrt report` runs (export/evaluation/report.py): the model under test and the Gaussian's exact ε*,
side by side on one backend.

The model is either weights (a checkpoint or a diffusers folder), which the report exports or loads for the backend
asked for, or a file a user ships (an .onnx in fp32, fp16 or int8, a TensorRT .plan, an AOTInductor .pt2), which
runs as it is, so that the quality measured is that file's.  The data set a report judges on comes from the model's
metadata (`ModelMetadata.dataset`), or from --dataset where the model does not say.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from ddpmrt.engine import load_model
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.backends import ENGINE_SUFFIXES, PACKAGE_SUFFIX, SHIPPED_EXPORT, is_diffusers_folder, is_own_export
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.gaussian import GaussianData
from ddpmrt.export.conversion.engine_build import read_onnx_metadata
from ddpmrt.export.conversion.onnx_export import export_onnx
from ddpmrt.export.evaluation.bench_backends import REPORT_BACKENDS
from ddpmrt.export.evaluation.judged import JUDGED_DATASETS, NO_DATASET
from ddpmrt.export.model.sources import from_checkpoint, from_diffusers

# The backends a model file runs on in a report, the first being the default: a file runs as it is.
FILE_BACKENDS = {".onnx": ("onnxruntime", "openvino"), **{s: ("tensorrt",) for s in ENGINE_SUFFIXES},
                 PACKAGE_SUFFIX: ("inductor",)}


def weights_source(path: Path):
    """The fp32 torch module and metadata of a checkpoint or diffusers folder."""
    return from_diffusers(path, "fp32") if is_diffusers_folder(path) else from_checkpoint(path, "fp32")


def file_metadata(path: Path) -> ModelMetadata:
    """What a model file says about itself (schedule, image shape, data set), read without loading it."""
    from ddpmrt.engine.artifacts.sidecar import ENGINE, PACKAGE, read_sidecar, sidecar_metadata

    suffix = path.suffix.lower()
    if suffix not in FILE_BACKENDS:
        raise UserError(f"{path.name}: report takes a checkpoint or diffusers folder, or an .onnx, .plan or .pt2 file")
    if suffix == ".onnx":
        from ddpmrt.export.conversion.engine_build import read_onnx_metadata

        return read_onnx_metadata(path)
    return sidecar_metadata(read_sidecar(path, PACKAGE if suffix == PACKAGE_SUFFIX else ENGINE), path.name)


def report_backend(model: Path, asked: str | None, weights: bool) -> str:
    """The backend a report runs on: for weights the one asked for (default onnxruntime), for a file one it runs on
    as it is (FILE_BACKENDS)."""
    if weights:
        if (asked or "onnxruntime") not in REPORT_BACKENDS:
            raise UserError(f"unknown report backend {asked!r}; choose one of {', '.join(REPORT_BACKENDS)}")
        return asked or "onnxruntime"
    choices = FILE_BACKENDS[model.suffix.lower()]
    if asked is not None and asked not in choices:
        raise UserError(f"{model.name} runs as it is: on {' or '.join(choices)} in a report; leave out --backend, or "
                        "report the weights it came from")
    return asked or choices[0]


def judged_dataset(metadata: ModelMetadata, asked: str | None, name: str) -> str | None:
    """The data set whose classifier judges the samples: --dataset, else the model's own; None: not judged."""
    dataset = asked or metadata.dataset
    if not dataset:
        raise UserError(f"{name} does not say which data set it was trained on (files exported before ddpmrt recorded "
                        f"it, and diffusers folders, do not); pass --dataset {', '.join(JUDGED_DATASETS)} or "
                        f"{NO_DATASET} ({NO_DATASET}: latency and the Gaussian check only)")
    return dataset if dataset in JUDGED_DATASETS else None


class ReportModels:
    """The U-Net and the Gaussian's exact ε* on one backend (report_backend); what is exported or built goes into
    the report folder.  `precision` None: fp32 for weights, a file's own precision for a file."""

    def __init__(self, model: Path, metadata: ModelMetadata, out: Path, backend: str, device: str,
                 threads: int | None, max_batch: int, gaussian_batch: int, precision: str | None = None,
                 source=None):
        self.out, self.device, self.threads = out, device, threads
        self.built: dict[str, str] = {}  # file name -> what it is: the report lists what it wrote
        self.schedule, self.image_shape = metadata.schedule, metadata.image_shape
        self.data = GaussianData.random((2, 2, 2), self.schedule, seed=3)
        self.backend = backend
        if source is not None:
            self._from_weights(model, source, max_batch, gaussian_batch, precision or "fp32")
        else:
            self._from_file(model, gaussian_batch, precision or "auto")
        computed = getattr(self.unet, "precision", None) or metadata.precision
        where = {"onnxruntime": device, "openvino": "cpu", "torch": device}.get(self.backend)
        self.description = f"{self.backend} ({', '.join(filter(None, (where, computed)))})"

    def _from_weights(self, model: Path, source, max_batch: int, gaussian_batch: int, precision: str) -> None:
        if precision != "fp32" and self.backend not in ("torch", "openvino"):
            raise UserError(f"report --precision {precision} runs on --backend torch or openvino (onnxruntime computes "
                            "fp32, tensorrt the engine's fp16)")
        if self.backend == "tensorrt":
            self._require_gpu()
            from ddpmrt.export.model.sources import Source

            # The U-Net as an fp16 engine (what users ship); the Gaussian check stays fp32: it measures
            # the sampler, and its closed-form tables would lose digits in fp16.
            fp16 = Source(source.module, dataclasses.replace(source.metadata, precision="fp16"), source.unwrap)
            self.unet = self._engine(fp16, "model-fp16", max_batch)
            self.gaussian = self._engine(self._gaussian_source(), "gaussian-optimal-eps", gaussian_batch)
        elif self.backend == "torch":
            # Both the U-Net and the Gaussian's ε* in the precision asked for: the Gaussian then measures
            # what that precision costs the sampler, exactly.
            self.unet = load_model(model, backend="torch", device=self.device, cuda_graph=self.device == "cuda",
                                   precision=precision)
            self.gaussian = self._torch_gaussian(self.unet.precision)
        else:
            # ONNX Runtime in fp32, or OpenVINO in the precision asked for (the U-Net and the Gaussian's ε*, as
            # on torch); the fp32 files either way.
            self.unet = self._onnx(source, "model-fp32", precision, ready=own_export(model))
            self.gaussian = self._onnx(self._gaussian_source(), "gaussian-optimal-eps", self.unet.precision)

    def _from_file(self, path: Path, gaussian_batch: int, precision: str) -> None:
        if self.backend == "tensorrt":
            self._require_gpu()
        device = None if self.backend in ("tensorrt", "inductor") else self.device
        threads = None if self.backend == "tensorrt" else self.threads
        self.unet = load_model(path, backend=self.backend, device=device, threads=threads, precision=precision,
                               cuda_graph=True if self.backend == "tensorrt" else None)
        # The Gaussian's ε* beside it in fp32 (or the precision the file's backend computes a float file in):
        # it measures the sampler; an fp16 or int8 Gaussian table would measure the table.
        own = getattr(self.unet, "precision", "fp32")
        if self.backend == "tensorrt":
            self.gaussian = self._engine(self._gaussian_source(), "gaussian-optimal-eps", gaussian_batch)
        elif self.backend == "inductor":
            self.gaussian = self._torch_gaussian("fp32", device=str(self.unet.device))
        else:
            self.gaussian = self._onnx(self._gaussian_source(), "gaussian-optimal-eps",
                                       own if own in ("fp32", "bf16") else "fp32")

    @staticmethod
    def _require_gpu() -> None:
        from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability

        if device_compute_capability() is None:
            raise UserError("report --backend tensorrt needs an NVIDIA GPU (it builds and runs engines for the "
                            "GPU it runs on); use --backend onnxruntime here")

    def _gaussian_source(self):
        from ddpmrt.engine import __version__
        from ddpmrt.export.evaluation.quality import GaussianEpsModule
        from ddpmrt.export.model.sources import Source

        metadata = ModelMetadata(schedule=self.schedule, image_shape=self.data.image_shape, precision="fp32",
                                 source="gaussian-optimal-eps", ddpmrt_version=__version__,
                                 model_config={"family": "gaussian-optimal-eps", "dim": self.data.dim})
        return Source(GaussianEpsModule(self.data), metadata)

    def _torch_gaussian(self, precision: str, device: str | None = None):
        from ddpmrt.engine.backends.torch_backend import TorchModel

        device = device or self.device
        return TorchModel(self._gaussian_source().module, self.schedule, self.data.image_shape, device,
                          precision=precision, cuda_graph=device.startswith("cuda"))

    def _onnx(self, source, name: str, precision: str = "fp32", ready: Path | None = None):
        """`source` exported to ONNX in the report folder (or `ready`, the same export made before, copied)."""
        path = self.out / f"{name}.onnx"
        if not path.is_file() and ready is not None:
            with atomic_write(path) as tmp:
                shutil.copyfile(ready, tmp)
        elif not path.is_file():
            export_onnx(source.eps_module(), source.metadata, path)
        self.built[path.name] = _WHAT.get(name, "") + f"ONNX, {source.metadata.precision}"
        return load_model(path, backend=self.backend, device=self.device, threads=self.threads, precision=precision)

    def _engine(self, source, name: str, max_batch: int):
        from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
        from ddpmrt.export.conversion.engine_build import BatchProfile, build_engine, parse_targets
        from ddpmrt.export.model.sources import sha256_file

        flavour = import_flavour("auto")
        onnx_path, plan = self.out / f"{name}.onnx", self.out / f"{name}.plan"
        if not onnx_path.is_file():
            export_onnx(source.eps_module(), source.metadata, onnx_path)
        build_engine(onnx_path, plan, source.metadata, sha256_file(onnx_path), flavour,
                     BatchProfile(1, max_batch, max_batch), parse_targets("current", flavour))
        what = _WHAT.get(name, "")
        self.built.update({onnx_path.name: what + f"ONNX, {source.metadata.precision}",
                           plan.name: what + f"{flavour.name} engine for this GPU, {source.metadata.precision}",
                           plan.name + ".json": "that engine's sidecar (metadata, batch profile, checksums)"})
        return load_model(plan, backend="tensorrt", cuda_graph=True)


def own_export(folder: Path) -> Path | None:
    """A checkpoint folder's model.onnx where it is the fp32 export of that folder's very weights (its sealed
    metadata names their SHA-256; the shipped models carry one), so that a report copies it instead of exporting."""
    onnx = Path(folder) / SHIPPED_EXPORT
    if not onnx.is_file():
        return None
    try:
        metadata = read_onnx_metadata(onnx)
    except UserError:
        return None
    return onnx if metadata.precision == "fp32" and is_own_export(folder, metadata) else None


_WHAT = {"model-fp32": "the model the report sampled, as ", "model-fp16": "the model the report sampled, as ",
         "gaussian-optimal-eps": "the Gaussian data's exact optimal ε* (the Gaussian check), as "}


def batch_within(model, n: int) -> int:
    """The batch size nearest n that the model runs (an .onnx exported for one batch, an engine's profile)."""
    low, high = model.batch_range
    return max(low, min(n, high if high is not None else n))


def sample_all(sampler, model, n: int, seed: int) -> np.ndarray:
    """n images, in chunks the model can run where n is outside its batch range.  Noise is keyed by image index
    (Sampler.sample), so the images are those of one batch of n; a last short chunk is filled and cut."""
    size = batch_within(model, n)
    if size == n:
        return sampler.sample(model, (n, *model.image_shape), seed=seed, progress=False)
    parts = [sampler.sample(model, (size, *model.image_shape), seed=seed, image_indices=np.arange(start, start + size),
                            progress=False) for start in range(0, n, size)]
    return np.concatenate(parts)[:n]
