"""Whether INT8 earns a place: static quantization calibrated on the sampler's own trajectory, its speed and its FID.

    python benchmarks/cpu_int8.py --out benchmarks/results/cpu-int8-<cpu>-<date>
    python benchmarks/cpu_int8.py --models digits --samples 64 --speed-config tiny --runs 2 --out /tmp/int8   # quick

Issue 20 offers `--precision int8` only if FID on digits and shapes stays within 10 % of fp32's.
This measures that, the way Q-Diffusion and PTQ4DM calibrate a diffusion U-Net: the activations'
ranges come from the inputs the network really sees while sampling, (x_t, t) collected along the
fp32 model's own DDIM trajectory at every step, not from one timestep or random noise.

The int8 file is what `ddpmrt export-onnx --precision int8` writes (export/conversion/quantize.py: ONNX
Runtime's static QDQ quantizer, per-channel 7-bit int8 weights, uint8 activations, the first and last
convolutions and everything but Conv/Gemm/MatMul kept in float).  It runs on OpenVINO (its Q/DQ
pairs become int8 kernels: AVX512-VNNI or AMX-INT8) and on ONNX Runtime, each compared with the
fp32 file on the same backend:

- quality: per shipped model (digits, shapes) `--samples` images from DDIM-`--steps`, seed 0, the same
  noise, scored by the data set's classifier judge (FID, KID, recognised share), fp32 and int8;
- speed: the `--speed-config` U-Net (cifar10, random weights), one call, median ms after warm-up,
  batch 1 and 8, fp32 and int8 on each backend;
- verdict: int8 FID within 10 % of fp32's on every model, or not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ddpmrt.engine import DDIMSampler, load_model
from ddpmrt.engine.backends import openvino_backend, resolve_model_path
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.profiling import environment, time_calls
from ddpmrt.export.conversion.onnx_export import export_onnx
from ddpmrt.export.conversion.quantize import Calibration, quantize_onnx
from ddpmrt.export.evaluation.bench import batch_sizes_arg
from ddpmrt.export.evaluation.quality import ClassifierJudge
from ddpmrt.export.model.checkpoint import read_config, write_json, write_random_checkpoint
from ddpmrt.export.model.sources import from_checkpoint

FID_TOLERANCE = 0.10  # the issue's bar: int8 FID at most 10 % above fp32's


def quantized(fp32: Path, int8: Path, calibration: Calibration) -> dict:
    result = quantize_onnx(fp32, int8, calibration)
    return {"seconds": result.seconds, "calibration_inputs": result.calibration_inputs,
            "quantized_tensors": result.quantized_nodes, "relative_error_vs_fp32": result.relative_error,
            "calibration": {"images": calibration.images, "steps": calibration.steps, "batch": calibration.batch,
                            "seed": calibration.seed}}


def backends() -> list[str]:
    return ["openvino", "onnxruntime"] if openvino_backend.available() else ["onnxruntime"]


def quality(model_name: str, work: Path, args) -> dict:
    source = from_checkpoint(model_name, "fp32")
    fp32, int8 = work / f"{model_name}-fp32.onnx", work / f"{model_name}-int8.onnx"
    export_onnx(source.module, source.metadata, fp32, check=False)
    built = quantized(fp32, int8, Calibration(images=args.calibration_images, steps=args.steps,
                                              batch=args.calibration_batch))
    config = read_config(resolve_model_path(model_name))
    judge = ClassifierJudge.train(config["data"]["name"], image_size=config["image_shape"][-1])
    result = {"model": model_name, "quantization": built, "samples": args.samples, "sampler": f"DDIM-{args.steps}",
              "rows": []}
    for backend in backends():
        scores = {}
        for precision, path in (("fp32", fp32), ("int8", int8)):
            model = load_model(path, backend=backend, precision="fp32" if precision == "fp32" else "int8")
            sampler = DDIMSampler(model.schedule, args.steps, clip_sample=1.0)
            images = sampler.sample(model, (args.samples, *model.image_shape), seed=0, progress=False)
            scores[precision] = judge.scores(images)
            row = {"backend": backend, "precision": precision, **scores[precision]}
            result["rows"].append(row)
            print(json.dumps({"model": model_name, **row}), flush=True)
        result.setdefault("int8_fid_over_fp32", {})[backend] = scores["int8"]["fid"] / scores["fp32"]["fid"]
    result["real_vs_real_fid"] = judge.floor()["fid"]
    return result


def speed(work: Path, args) -> dict:
    checkpoint = write_random_checkpoint(work / args.speed_config, args.speed_config)
    source = from_checkpoint(checkpoint, "fp32")
    fp32, int8 = work / "speed-fp32.onnx", work / "speed-int8.onnx"
    export_onnx(source.module, source.metadata, fp32, check=False)
    built = quantized(fp32, int8, Calibration(images=8, steps=args.steps, batch=4))
    rows = []
    for batch in args.batches:
        rng = np.random.default_rng(1)
        x = rng.standard_normal((batch, *source.metadata.image_shape)).astype(np.float32)
        t = np.full(batch, 500)
        for backend in backends():
            reference = None
            for precision, path in (("fp32", fp32), ("int8", int8)):
                model = load_model(path, backend=backend, precision=precision, threads=args.threads)
                eps = model(x, t)
                reference = eps if reference is None else reference
                row = {"backend": backend, "batch": batch, "precision": precision,
                       "ms_per_call": time_calls(lambda: model(x, t), args.runs, args.warmup),
                       "error_vs_fp32": float(np.abs(eps - reference).max() / np.abs(reference).max())}
                rows.append(row)
                print(json.dumps({**row, "ms_per_call": row["ms_per_call"]["median"]}), flush=True)
    return {"config": args.speed_config, "quantization": built, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits,shapes", help="shipped models to judge (default digits,shapes)")
    p.add_argument("--samples", type=int, default=500, help="images per model and precision (default 500)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps, for calibration and samples (default 10)")
    p.add_argument("--calibration-images", type=int, default=64, help="trajectories to calibrate on (default 64)")
    p.add_argument("--calibration-batch", type=int, default=16, help="images per calibration batch (default 16)")
    p.add_argument("--speed-config", default="cifar10", help="U-Net config timed with random weights (default cifar10)")
    p.add_argument("--batch", dest="batches", type=batch_sizes_arg, default="1,8", help="batches timed (default 1,8)")
    p.add_argument("--runs", type=int, default=10, help="timed calls per row (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--threads", type=int, help="CPU threads (default: the backend's)")
    p.add_argument("--out", type=Path, required=True, help="folder for int8.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = [quality(name, work, args) for name in args.models.split(",") if name]
        timing = speed(work, args)
    verdict = all(ratio <= 1 + FID_TOLERANCE for m in models for ratio in m["int8_fid_over_fp32"].values())
    report = {"what": "cpu_int8", "fid_tolerance": FID_TOLERANCE, "quality": models, "speed": timing,
              "int8_within_tolerance": verdict, "environment": environment(args.threads)}
    write_json(args.out / "int8.json", report)
    print(json.dumps({"int8_fid_over_fp32": {m["model"]: m["int8_fid_over_fp32"] for m in models},
                      "int8_within_tolerance": verdict}))


if __name__ == "__main__":
    sys.exit(run_script(main))
