"""The diffusers side of `ddpmrt bench`: the same weights in diffusers' pipeline (DDIMPipeline,
DDPMPipeline, or DPM-Solver++ / UniPC schedulers in a plain loop), configured as the ddpmrt side
runs (bench.BENCH_SAMPLER_OPTIONS), as shipped or with torch.compile, and timed alike."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddpmrt.engine.profiling import gpu_memory_used_mb, peak_rss_mb, summarize
from ddpmrt.export.model.sources import from_checkpoint, from_diffusers


def bench_source(model: Path, precision: str):
    """The weights as an export Source: a ddpmrt checkpoint or a diffusers pipeline / unet folder."""
    from ddpmrt.engine.backends import is_diffusers_folder

    return from_diffusers(model, precision) if is_diffusers_folder(model) else from_checkpoint(model, precision)


def diffusers_pipeline(checkpoint: Path, device: str, dtype=torch.float32, sampler: str = "ddim", compiled: bool = False):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    from ddpmrt.export.model.diffusers_convert import diffusers_schedule, to_diffusers

    source = bench_source(checkpoint, "fp32")
    # A ddpmrt U-Net is converted to UNet2DModel; a diffusers folder's UNet2DModel is used as it is.
    unet = source.module if source.unwrap is not None else to_diffusers(source.module)
    schedule = diffusers_schedule(source.metadata.schedule)
    if sampler == "ddim":
        pipe = DDIMPipeline(unet=unet,
                            scheduler=DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=True))
    elif sampler == "ddpm":
        pipe = DDPMPipeline(unet=unet,
                            scheduler=DDPMScheduler(**schedule, clip_sample=True, variance_type="fixed_small"))
    else:
        from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

        if sampler == "dpmsolver":
            scheduler = DPMSolverMultistepScheduler(**schedule, solver_order=2, algorithm_type="dpmsolver++",
                                                    final_sigmas_type="zero")
        else:
            scheduler = UniPCMultistepScheduler(**schedule, solver_order=2, predict_x0=True, final_sigmas_type="zero")
        pipe = _SchedulerLoop(unet, scheduler)
    pipe = pipe.to(device)
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if compiled:
        # The one line an experienced diffusers user adds: Inductor plus its own CUDA graphs.
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
    return pipe


class _SchedulerLoop:
    """A UNet2DModel and a multistep scheduler in the sampling loop of diffusers' unconditional pipelines.

    DDPMPipeline's loop is what a diffusers user writes around these schedulers, but it passes
    `generator` to `scheduler.step`, which UniPCMultistepScheduler does not take: this is that loop
    (noise, `set_timesteps`, UNet, `step`, the same conversion to images) without it.
    """

    def __init__(self, unet, scheduler):
        self.unet, self.scheduler = unet, scheduler

    @property
    def device(self):
        return next(self.unet.parameters()).device

    def to(self, device=None, dtype=None):
        self.unet = self.unet.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        pass

    @torch.no_grad()
    def __call__(self, batch_size: int, num_inference_steps: int, generator=None, output_type: str = "np"):
        from diffusers.utils.torch_utils import randn_tensor

        size = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        dtype = next(self.unet.parameters()).dtype
        image = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            image = self.scheduler.step(self.unet(image, t).sample, t, image).prev_sample
        return (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()


def time_diffusers(pipe, batch: int, steps: int, runs: int, warmup: int, sampler: str) -> dict:
    totals, first_run_s = [], None
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    extra = {"eta": 0.0} if sampler == "ddim" else {}  # DDPMPipeline takes no eta
    for run in range(warmup + runs):
        start = time.perf_counter()
        pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(run),
             output_type="np", **extra)  # returns host arrays: synchronized, like ddpmrt's loop
        if run == 0:
            first_run_s = time.perf_counter() - start  # compilation included, where there is one
        if run >= warmup:
            totals.append(time.perf_counter() - start)
    row = {"batch": batch, "steps": steps, "runs": runs, "warmup": warmup, "first_run_s": first_run_s,
           "total_s": summarize(totals),
           "ms_per_image": summarize(1e3 * t / batch for t in totals),
           "images_per_s": summarize(batch / t for t in totals)}
    row["peak_rss_mb"] = peak_rss_mb()
    if pipe.device.type == "cuda":
        row["torch_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        row["gpu_memory_used_mb"] = gpu_memory_used_mb()
    return row


