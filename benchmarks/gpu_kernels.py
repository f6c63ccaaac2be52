"""The fused update kernel on a GPU: accuracy against the NumPy update, and memory bandwidth.

    python benchmarks/gpu_kernels.py --out benchmarks/results/gpu-kernels-<gpu>-<date>.json

1. Accuracy: for DDPM and DDIM (η 0 and 1), clip on and off, fp32 and fp16 ε, a vectorized and an
   odd element count: max |kernel − NumPy| over three steps, and the initial noise against
   philox.gaussian_noise.  Target: ≤ 1e-5 on the fp32 path.
2. Bandwidth: one update over `--elements` (default 64 M, at least 16 M) with fp16 ε and the
   fp16 copy (12 bytes per element), with and without noise, against a device-to-device copy
   measured in the same run (bytes read + written / time).  Target: ≥ 80 % of the copy.

Buffers are torch tensors on the GPU (pointers passed to the kernel); times are CUDA events,
medians over `--runs` after warm-up.  Needs a GPU, PyTorch with CUDA, cuda-python and NVRTC.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ddpmrt.engine import DDIMSampler, DDPMSampler, NoiseSchedule
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.gpu.kernels import FusedUpdate, image_keys, run_params
from ddpmrt.engine.philox import STREAM_INITIAL, STREAM_STEP, gaussian_noise
from ddpmrt.engine.profiling import environment, summarize


def _device_copy(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).cuda()


def accuracy(kernel: FusedUpdate) -> list[dict]:
    schedule = NoiseSchedule.linear()
    samplers = {"ddpm": lambda clip: DDPMSampler(schedule, 20, clip_sample=clip),
                "ddim": lambda clip: DDIMSampler(schedule, 20, clip_sample=clip),
                "ddim-eta1": lambda clip: DDIMSampler(schedule, 20, eta=1.0, clip_sample=clip)}
    stream = torch.cuda.current_stream().cuda_stream
    rows = []
    for name, make in samplers.items():
        for clip in (None, 1.0):
            sampler = make(clip)
            for eps_dtype in ("fp32", "fp16"):
                for image_shape in ((3, 32, 32), (3, 5, 5)):
                    n, seeds = 4, (2024, 2024, 7, 7)  # two requests' images in one batch
                    rng = np.random.default_rng(1)
                    x = rng.standard_normal((n, *image_shape)).astype(np.float32)
                    eps = rng.standard_normal((n, *image_shape)).astype(np.float16 if eps_dtype == "fp16" else np.float32)
                    coeffs = _device_copy(sampler.coefficients.astype(np.float32))
                    params = _device_copy(run_params(clip).view(np.uint8))
                    keys = _device_copy(image_keys(seeds, [0, 1, 0, 1]).view(np.uint8))
                    eps_dev, worst = _device_copy(eps), 0.0
                    for step in (0, 9, 19):
                        x_dev = _device_copy(x)
                        kernel.update(x_dev.data_ptr(), eps_dev.data_ptr(), eps_dtype, coeffs.data_ptr(), keys.data_ptr(),
                                      params.data_ptr(), step, sampler.num_steps, int(np.prod(image_shape)), n,
                                      stream=stream)
                        noise = gaussian_noise(seeds, [0, 1, 0, 1], step, STREAM_STEP, image_shape)
                        expected = sampler.step(x, eps.astype(np.float32), step, noise=noise)
                        worst = max(worst, float(np.abs(x_dev.cpu().numpy() - expected).max()))
                    rows.append({"sampler": name, "clip": clip, "eps_dtype": eps_dtype, "image_shape": list(image_shape),
                                 "max_abs_diff": worst})
    n, image_shape = 3, (3, 7, 9)
    x_dev = torch.empty((n, *image_shape), dtype=torch.float32, device="cuda")
    keys = _device_copy(image_keys(11, np.arange(n)).view(np.uint8))
    kernel.initial_noise(x_dev.data_ptr(), keys.data_ptr(), int(np.prod(image_shape)), n, stream=stream)
    diff = np.abs(x_dev.cpu().numpy() - gaussian_noise(11, np.arange(n), 0, STREAM_INITIAL, image_shape)).max()
    rows.append({"sampler": "initial-noise", "image_shape": list(image_shape), "max_abs_diff": float(diff)})
    return rows


def _time_ms(fn, runs: int, warmup: int) -> dict:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for run in range(warmup + runs):
        start.record()
        fn()
        end.record()
        end.synchronize()
        if run >= warmup:
            times.append(start.elapsed_time(end))
    return summarize(times)


def bandwidth(kernel: FusedUpdate, elements: int, runs: int, warmup: int) -> dict:
    per_image = 3 * 64 * 64
    n = -(-elements // per_image)
    count = n * per_image
    x = torch.randn(count, device="cuda")
    eps = torch.randn(count, device="cuda", dtype=torch.float16)
    x_half = torch.empty(count, device="cuda", dtype=torch.float16)
    ddpm = DDPMSampler(NoiseSchedule.linear(), 1000)
    coeffs = _device_copy(ddpm.coefficients.astype(np.float32))
    params = _device_copy(run_params(None).view(np.uint8))
    keys = _device_copy(image_keys(0, np.arange(n)).view(np.uint8))
    stream = torch.cuda.current_stream().cuda_stream
    bytes_per_update = count * (4 + 2 + 4 + 2)  # read x, ε; write x, fp16 x

    def update(step):
        return lambda: kernel.update(x.data_ptr(), eps.data_ptr(), "fp16", coeffs.data_ptr(), keys.data_ptr(),
                                     params.data_ptr(), step, ddpm.num_steps, per_image, n,
                                     x_half_ptr=x_half.data_ptr(), stream=stream)

    src = torch.empty(bytes_per_update // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy = _time_ms(lambda: dst.copy_(src), runs, warmup)
    with_noise = _time_ms(update(0), runs, warmup)      # σ > 0: Philox inside
    without_noise = _time_ms(update(999), runs, warmup)  # last DDPM step: σ = 0
    gb = lambda ms, nbytes: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
    copy_gbs = gb(copy["median"], 2 * src.numel())
    result = {"elements": count, "bytes_per_update": bytes_per_update, "copy_ms": copy, "copy_gb_s": copy_gbs,
              "update_with_noise_ms": with_noise, "update_without_noise_ms": without_noise,
              "update_with_noise_gb_s": gb(with_noise["median"], bytes_per_update),
              "update_without_noise_gb_s": gb(without_noise["median"], bytes_per_update)}
    result["fraction_of_copy_with_noise"] = result["update_with_noise_gb_s"] / copy_gbs
    result["fraction_of_copy_without_noise"] = result["update_without_noise_gb_s"] / copy_gbs
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--elements", type=int, default=64 * 2 ** 20, help="elements of the bandwidth test (>= 16 M)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bandwidth-only", action="store_true",
                        help="skip the accuracy checks: with --runs 1 --warmup 0 the update kernel's first two launches "
                             "are the noisy and the noiseless update (what gpu_session.sh profiles with ncu)")
    ns = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_kernels: needs a CUDA GPU and PyTorch with CUDA", file=sys.stderr)
        return 2
    kernel = FusedUpdate()
    acc = [] if ns.bandwidth_only else accuracy(kernel)
    fp32_worst = max((r["max_abs_diff"] for r in acc if r.get("eps_dtype", "fp32") == "fp32"), default=None)
    bw = bandwidth(kernel, ns.elements, ns.runs, ns.warmup)
    result = {"benchmark": "gpu_kernels", "environment": environment(), "torch_cuda": torch.version.cuda,
              "kernel_arch": kernel.arch, "accuracy": acc, "accuracy_fp32_worst": fp32_worst,
              "accuracy_target": 1e-5, "bandwidth": bw, "bandwidth_target_fraction": 0.8,
              "runs": ns.runs, "warmup": ns.warmup}
    out = Path(ns.out)
    with atomic_write(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if acc:
        print(f"accuracy: worst fp32 |kernel - numpy| = {fp32_worst:.2e} (target 1e-5); "
              f"worst overall {max(r['max_abs_diff'] for r in acc):.2e}")
    print(f"bandwidth: copy {bw['copy_gb_s']:.0f} GB/s; update {bw['update_with_noise_gb_s']:.0f} GB/s with noise "
          f"({bw['fraction_of_copy_with_noise']:.0%}), {bw['update_without_noise_gb_s']:.0f} GB/s without "
          f"({bw['fraction_of_copy_without_noise']:.0%}); target 80%")
    print(f"wrote {out} (medians of {ns.runs} runs after {ns.warmup} warm-up)")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
