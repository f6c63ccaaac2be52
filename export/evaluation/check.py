"""`ddpmrt check`: every artifact of a model against PyTorch fp32, with Polygraphy's Comparator.

    ddpmrt check digits                          # exports fp32 and fp16 ONNX into ./check and compares them
    ddpmrt check digits engines/digits.plan m.pt2  # and these (an engine where a GPU and TensorRT exist)

The runners: OnnxrtRunner for each ONNX file (ONNX Runtime on the CPU), TrtRunner for an engine,
and one of our own (`ModelRunner`) around any ddpmrt model: the PyTorch fp32 reference and a `.pt2`.
The inputs span the timesteps the samplers visit, t from 0 to T-1 in buckets (fp16 overflow at
large t is the classic failure), at the smallest and a larger batch size every artifact's profile
admits; x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε as in training.  Comparator.validate looks for NaN and Inf; the
max and mean |ε - ε_ref| per artifact and bucket are held against TOLERANCES (by the artifact's
precision).  The report is check.json and check.md; a tolerance exceeded, or a NaN or an Inf, is
CheckFailed (exit status 1) naming the worst artifact and bucket.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.errors import UserError
from ddpmrt.export.conversion.polygraphy_tools import load_polygraphy

# (max, mean) |ε - ε_ref| allowed, by the precision an artifact computes in.  ε has unit variance;
# fp16 keeps 11 significant bits (about 5e-4 relative per operation, accumulated over the network).
# int8 (export-onnx --precision int8): digits' calibrated file measured max 0.22, mean 0.046 in its worst bucket
# (t near 0), so twice that; a file whose ranges do not fit (calibrated on other data) errs by about ε itself.
TOLERANCES = {"fp32": (1e-3, 1e-4), "fp16": (5e-2, 5e-3), "bf16": (1e-1, 1e-2), "int8": (5e-1, 1e-1)}
ARTIFACT_SUFFIXES = (".onnx", ".plan", ".engine", ".pt2")
MAX_CHECK_BATCH = 8
ANY_BATCH = 65536  # the batch range of an ONNX file with a dynamic batch (export-engine's largest profile)


class CheckFailed(UserError):
    """An artifact's output is off its reference: exit status 1 (not a user mistake: the artifact is wrong)."""

    exit_status = 1


def timestep_buckets(num_train_timesteps: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges covering 0..T-1: the first steps alone, then wider toward T."""
    T = num_train_timesteps
    edges = sorted({0, 1, 10, 100, T // 4, T // 2, 3 * T // 4, 9 * T // 10, T} & set(range(T + 1)))
    return [(lo, hi) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def check_inputs(schedule, image_shape, batches: list[int], seed: int = 0) -> list[tuple[tuple[int, int], dict]]:
    """(bucket, feed dict) pairs: for every bucket and batch size, timesteps spread over the bucket."""
    rng = np.random.default_rng(seed)
    abar = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    feeds = []
    for lo, hi in timestep_buckets(schedule.num_train_timesteps):
        for n in batches:
            t = np.round(np.linspace(lo, hi - 1, n)).astype(np.int64)
            x0 = rng.uniform(-1, 1, (n, *image_shape))
            a = abar[t].reshape(-1, 1, 1, 1)
            x = (np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal((n, *image_shape))).astype(np.float32)
            feeds.append(((lo, hi), OrderedDict(x=x, t=t)))
    return feeds


def model_runner(model, name: str):
    """A Polygraphy runner around a ddpmrt model (eps = model(x, t) on NumPy): the PyTorch reference, a .pt2."""
    load_polygraphy()
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata
    from polygraphy.datatype import DataType

    class ModelRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name, prefix="ddpmrt-runner")

        def get_input_metadata_impl(self):
            return (TensorMetadata().add("x", DataType.FLOAT32, (-1, *model.image_shape))
                    .add("t", DataType.INT64, (-1,)))

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            eps = np.asarray(model(np.asarray(feed_dict["x"], np.float32), np.asarray(feed_dict["t"], np.int64)))
            self.inference_time = time.perf_counter() - start
            return OrderedDict(eps=eps.astype(np.float32))

    return ModelRunner()


@dataclass
class Artifact:
    path: Path
    kind: str                 # onnx, engine, package
    precision: str
    batch_range: tuple[int, int]
    runner: object = None
    skipped: str | None = None
    errors: dict = field(default_factory=dict)  # bucket -> [max, sum, count of finite errors, count of NaN/Inf]
    inspection: dict | None = None              # an engine's, as Polygraphy reads it back (or why not)


def describe(path: Path) -> Artifact:
    """An artifact file as check compares it: its kind, precision and batch range; a UserError for a
    damaged or foreign file (the same checks as loading it)."""
    from ddpmrt.engine.artifacts.sidecar import ENGINE, PACKAGE, read_sidecar
    from ddpmrt.export.conversion.engine_build import read_onnx_metadata

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: give the .onnx, .plan or .pt2 files to compare")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        metadata = read_onnx_metadata(path)  # a damaged or foreign file is one line here
        batches = (metadata.static_batch,) * 2 if metadata.static_batch else (1, ANY_BATCH)
        return Artifact(path, "onnx", "int8" if metadata.quantization else metadata.precision, batches)
    if suffix in (".plan", ".engine"):
        sidecar = read_sidecar(path, ENGINE)
        profile = sidecar["profile"]
        return Artifact(path, "engine", sidecar["tensors"]["x"], (profile["min"], profile["max"]))
    if suffix == ".pt2":
        sidecar = read_sidecar(path, PACKAGE)
        profile = sidecar["profile"]
        return Artifact(path, "package", sidecar.get("precision", "fp32"), (profile["min"], profile["max"]))
    raise UserError(f"{path.name}: check compares .onnx, .plan and .pt2 files; this is none of them")


def _runner(artifact: Artifact):
    """The Polygraphy runner of an artifact, or the reason it cannot run here (set on the artifact)."""
    from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability

    if artifact.kind == "onnx":
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        return OnnxrtRunner(SessionFromOnnx(artifact.path.read_bytes(), providers=["CPUExecutionProvider"]),
                            name=artifact.path.name)
    capability = device_compute_capability()
    if artifact.kind == "engine":
        if capability is None:
            artifact.skipped = "no GPU here: an engine runs on one"
            return None
        from ddpmrt.engine.artifacts.sidecar import ENGINE, read_sidecar
        from ddpmrt.engine.backends.tensorrt_flavour import import_flavour

        flavour = import_flavour(read_sidecar(artifact.path, ENGINE)["flavour"])
        load_polygraphy(flavour.is_rtx)
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        return TrtRunner(EngineFromBytes(BytesFromPath(str(artifact.path))), name=artifact.path.name)
    from ddpmrt.engine.artifacts.sidecar import PACKAGE, read_sidecar

    if read_sidecar(artifact.path, PACKAGE).get("device") == "cuda" and capability is None:
        artifact.skipped = "no GPU here: this package was built for CUDA"
        return None
    from ddpmrt.engine.backends.torch_backend import load_aot_package

    return model_runner(load_aot_package(artifact.path), artifact.path.name)


def _engine_inspection(plan: Path) -> dict:
    from ddpmrt.engine.artifacts.sidecar import ENGINE, read_sidecar
    from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
    from ddpmrt.export.conversion.engine_build import engine_inspection

    try:
        flavour = import_flavour(read_sidecar(plan, ENGINE)["flavour"])
    except UserError as exc:
        return {"skipped": str(exc)}
    return engine_inspection(plan, flavour)


def engines_flavour(artifacts: list[Path]) -> bool | None:
    """Whether the engines among `artifacts` are TensorRT-RTX ones (True), TensorRT ones (False) or absent (None),
    from their sidecars; engines of both flavours are one line (Polygraphy runs one flavour per process)."""
    from ddpmrt.engine.artifacts.sidecar import sidecar_path
    from ddpmrt.engine.backends import ENGINE_SUFFIXES

    flavours = {}
    for path in artifacts:
        if Path(path).suffix.lower() in ENGINE_SUFFIXES and sidecar_path(path).is_file():
            try:
                flavours[Path(path).name] = json.loads(sidecar_path(path).read_text(encoding="utf-8")).get("flavour")
            except (OSError, ValueError, AttributeError):
                continue  # describe() reports a damaged sidecar in its own words
    kinds = set(flavours.values()) - {None}
    if len(kinds) > 1:
        raise UserError("check compares engines of one TensorRT flavour at a time ("
                        + ", ".join(f"{name}: {flavour}" for name, flavour in flavours.items()) + "); check them apart")
    return None if not kinds else kinds.pop() == "tensorrt-rtx"


def run_check(source, artifacts: list[Path], out: Path, seed: int = 0) -> dict:
    """Compare `artifacts` against `source` (a Source: the PyTorch fp32 module and its metadata); write
    out/check.json and out/check.md.  CheckFailed where a tolerance is exceeded or an output is not finite."""
    load_polygraphy(engines_flavour(artifacts))  # before anything imports Polygraphy's TensorRT backend
    from polygraphy.comparator import Comparator

    from ddpmrt.engine.backends.torch_backend import TorchModel

    if not artifacts:
        raise UserError("nothing to compare: give the .onnx, .plan or .pt2 files of this model, or let check "
                        "export its ONNX files (no --no-export)")
    described = [describe(path) for path in artifacts]
    names = [a.path.name for a in described]
    if len(set(names)) != len(names):
        raise UserError(f"two artifacts share a file name ({', '.join(names)}); rename one")
    schedule, image_shape = source.metadata.schedule, tuple(source.metadata.image_shape)
    lo = max(a.batch_range[0] for a in described)
    hi = min(min(a.batch_range[1] for a in described), MAX_CHECK_BATCH)
    if lo > hi:
        raise UserError(f"the artifacts' batch profiles have no batch size in common ({lo} > {hi}); check them apart")
    batches = sorted({lo, max(lo, min(hi, 4))})
    feeds = check_inputs(schedule, image_shape, batches, seed)
    reference = model_runner(TorchModel(source.eps_module(), schedule, image_shape, "cpu", precision="fp32"),
                             "pytorch-fp32")
    for artifact in described:
        artifact.runner = _runner(artifact)
        if artifact.kind == "engine":
            artifact.inspection = _engine_inspection(artifact.path)
    runners = [reference] + [a.runner for a in described if a.runner is not None]

    start = time.perf_counter()
    results = Comparator.run(runners, data_loader=[feed for _, feed in feeds])
    finite = Comparator.validate(results, check_inf=True, check_nan=True)
    outputs = dict(results)
    for artifact in described:
        if artifact.runner is None:
            continue
        for (bucket, _), ref, got in zip(feeds, outputs["pytorch-fp32"], outputs[artifact.path.name]):
            error = np.abs(np.asarray(got["eps"], np.float64) - np.asarray(ref["eps"], np.float64))
            counted = np.isfinite(error)  # the error of the finite outputs; the others are counted
            tally = artifact.errors.setdefault(bucket, [0.0, 0.0, 0, 0])
            if counted.any():
                tally[0] = max(tally[0], float(error[counted].max()))
            tally[1] += float(error[counted].sum())
            tally[2] += int(counted.sum())
            tally[3] += int((~counted).sum())
    report = _report(source, described, batches, bool(finite), time.perf_counter() - start)
    _write(report, Path(out))
    if report["failures"]:
        worst = report["failures"][0]
        raise CheckFailed(f"check failed: {worst['artifact']} at t {worst['timesteps']}: {worst['what']} "
                          f"(report: {Path(out) / 'check.md'})")
    return report


def _report(source, described: list[Artifact], batches: list[int], finite: bool, seconds: float) -> dict:
    artifacts, failures = [], []
    for a in described:
        max_tol, mean_tol = TOLERANCES.get(a.precision, TOLERANCES["fp32"])
        rows = []
        for (lo, hi), (worst, total, count, nonfinite) in sorted(a.errors.items()):
            mean = total / count if count else 0.0
            ok = nonfinite == 0 and worst <= max_tol and mean <= mean_tol
            rows.append({"timesteps": f"{lo}-{hi - 1}", "max_abs_error": worst, "mean_abs_error": mean,
                         "nonfinite_outputs": nonfinite, "ok": bool(ok)})
            if not ok:
                what = (f"NaN or Inf in {nonfinite} output values" if nonfinite else
                        f"max error {worst:.2e} (limit {max_tol:g}), mean {mean:.2e} (limit {mean_tol:g})")
                failures.append({"artifact": a.path.name, "timesteps": f"{lo}-{hi - 1}", "what": what,
                                 "excess": 1e300 * nonfinite + worst / max_tol})
        artifacts.append({"file": str(a.path), "kind": a.kind, "precision": a.precision,
                          "tolerance": {"max": max_tol, "mean": mean_tol}, "skipped": a.skipped, "buckets": rows,
                          **({"inspection": a.inspection} if a.inspection is not None else {}),
                          "ok": a.skipped is None and all(r["ok"] for r in rows)})
    failures.sort(key=lambda f: -f["excess"])
    import polygraphy

    from ddpmrt.engine.version import __version__

    return {"reference": f"{source.metadata.source or 'model'} in PyTorch fp32", "batches": batches,
            "all_finite": finite, "seconds": round(seconds, 2), "artifacts": artifacts, "failures": failures,
            "versions": {"ddpmrt": __version__, "polygraphy": polygraphy.__version__},
            "date": time.strftime("%Y-%m-%d")}


def summary(report: dict) -> str:
    """One line: how many artifacts passed, and which were skipped and why."""
    checked = [Path(a["file"]).name for a in report["artifacts"] if not a["skipped"]]
    skipped = [f"{Path(a['file']).name} ({a['skipped']})" for a in report["artifacts"] if a["skipped"]]
    return (f"ddpmrt check: {', '.join(checked)} within tolerance of {report['reference']} at every timestep"
            + (f"; skipped {', '.join(skipped)}" if skipped else ""))


def _write(report: dict, out: Path) -> None:
    with atomic_write(out / "check.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [f"# ddpmrt check: against {report['reference']}", "",
             f"Batches {', '.join(map(str, report['batches']))}; Polygraphy {report['versions']['polygraphy']}; "
             f"NaN/Inf: {'none' if report['all_finite'] else 'found'}.", "",
             "| artifact | precision | t | max abs error | mean abs error | NaN/Inf | ok |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for a in report["artifacts"]:
        name = Path(a["file"]).name
        if a["skipped"]:
            lines.append(f"| {name} | {a['precision']} | - | - | - | - | skipped: {a['skipped']} |")
        for row in a["buckets"]:
            lines.append(f"| {name} | {a['precision']} | {row['timesteps']} | {row['max_abs_error']:.2e} | "
                         f"{row['mean_abs_error']:.2e} | {row['nonfinite_outputs']} | {'yes' if row['ok'] else '**no**'} |")
    for a in report["artifacts"]:
        inspection = a.get("inspection")
        if inspection and "skipped" in inspection:
            lines += ["", f"Engine {Path(a['file']).name}: not inspected ({inspection['skipped']})."]
        elif inspection:
            tensors = ", ".join(f"{t['name']} ({t['mode']}, {t['dtype']}, {t['shape']})" for t in inspection["tensors"])
            lines += ["", f"Engine {Path(a['file']).name}: {inspection['layers']} layers; {tensors}; profiles "
                      f"{inspection['profiles']}."]
    lines += ["", "Tolerances (max, mean) by precision: "
              + ", ".join(f"{p} {m:g} / {n:g}" for p, (m, n) in TOLERANCES.items()) + "."]
    with atomic_write(out / "check.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
