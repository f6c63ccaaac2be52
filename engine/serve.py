"""Serving past one machine: a Ray Serve deployment around load_model and the samplers.

    ddpmrt serve model.onnx --replicas 2 --max-batch 16 --port 8000

HTTP (JSON in, images out):

    POST /sample    {"sampler": "ddim", "steps": 50, "eta": 0.0, "spacing": "leading", "clip_sample": 1.0,
                     "seed": 0, "n": 4, "format": "png" | "npz"}  -> a PNG grid, or an .npz (images: uint8 N×H×W×C)
    GET  /healthz   -> {"status": "ok"}
    GET  /metadata  -> model, schedule, image shape, backend, device, version, limits

From Python, `serve.run(build_app(...))` returns a handle: `handle.sample.remote({...}).result()`
gives the uint8 images.

Batching (`@serve.batch`): requests arriving within `batch_wait_ms` of each other are run together,
grouped by their sampler settings, as one call of the sampler.  Noise is keyed by (seed, image
index), and a batch carries each request's own seed and indices 0..n-1 (Sampler.sample takes
one seed per image), so a request's images are bitwise the same batched or alone, as long as
the network's output for an image does not depend on the batch (true of ONNX Runtime on the CPU;
tests/test_serve.py checks it).  Batching changes throughput, never an image.

Back-pressure: at most `max_ongoing` requests run or wait inside a replica and `max_queued` wait
in front of the replicas; past that Serve answers 503.  A request that takes longer than
`request_timeout_s` is answered 408 by Serve's proxy; a replica that dies is restarted by Serve.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at
# definition time, and Request is imported inside build_app (Ray Serve is an optional extra).
import asyncio
import io
import threading
from dataclasses import dataclass

import numpy as np

from ddpmrt.engine.checks import check_int, check_real
from ddpmrt.engine.errors import UserError

SAMPLERS = ("ddim", "ddpm")
FORMATS = ("png", "npz")
FIELDS = ("sampler", "steps", "eta", "spacing", "clip_sample", "seed", "n", "format")
DEFAULT_MAX_IMAGES = 64


@dataclass(frozen=True)
class SampleRequest:
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    spacing: str = "leading"
    clip_sample: float | None = 1.0
    seed: int = 0
    n: int = 1
    format: str = "png"

    @property
    def settings(self) -> tuple:
        """What must be equal for requests to share one sampler call."""
        return self.sampler, self.steps, self.eta, self.spacing, self.clip_sample


def _choice(body: dict, key: str, default: str, choices) -> str:
    value = body.get(key, default)
    if value not in choices:
        raise UserError(f"unknown {key} {value!r}; choose one of {', '.join(choices)}")
    return value


def parse_request(body, num_train_timesteps: int, max_images: int = DEFAULT_MAX_IMAGES) -> SampleRequest:
    """A request body (parsed JSON) as a SampleRequest; a UserError of one line for anything else."""
    from ddpmrt.engine.samplers import SPACINGS

    if not isinstance(body, dict):
        raise UserError("the body must be a JSON object such as {\"sampler\": \"ddim\", \"steps\": 50, \"n\": 4}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown fields {unknown}; a request takes {', '.join(FIELDS)}")
    def field(key, default, check, low, high):
        return check(body.get(key, default), f"'{key}'", low, high)

    clip = body.get("clip_sample", 1.0)
    clip = None if clip is None else field("clip_sample", 1.0, check_real, 0.0, 100.0)
    return SampleRequest(sampler=_choice(body, "sampler", "ddim", SAMPLERS),
                         steps=field("steps", 50, check_int, 1, num_train_timesteps),
                         eta=field("eta", 0.0, check_real, 0.0, 10.0),
                         spacing=_choice(body, "spacing", "leading", SPACINGS),
                         clip_sample=clip or None,
                         seed=field("seed", 0, check_int, 0, 2 ** 64 - 1),
                         n=field("n", 1, check_int, 1, max_images),
                         format=_choice(body, "format", "png", FORMATS))


class SamplingService:
    """The model and the batched sampling, without Ray: what a replica runs (and what tests call)."""

    def __init__(self, model: str, backend: str = "auto", device: str = "cpu", threads: int | None = None,
                 max_images: int = DEFAULT_MAX_IMAGES):
        from ddpmrt.engine import load_model

        self.model_name = str(model)
        self.model = load_model(model, backend=backend, device=device, threads=threads)
        self.backend, self.device, self.max_images = self.model.backend, device, max_images
        # A model is one stream of work (an ONNX Runtime binding, a GPU's buffers and graphs): requests
        # running in threads at once (batching off) take turns.
        self._lock = threading.Lock()

    def parse(self, body) -> SampleRequest:
        return parse_request(body, self.model.schedule.num_train_timesteps, self.max_images)

    def sampler(self, request: SampleRequest):
        from ddpmrt.engine import DDIMSampler, DDPMSampler

        if request.sampler == "ddim":
            return DDIMSampler(self.model.schedule, request.steps, eta=request.eta, spacing=request.spacing,
                               clip_sample=request.clip_sample)
        return DDPMSampler(self.model.schedule, request.steps, clip_sample=request.clip_sample, spacing=request.spacing)

    def run_batch(self, requests: list[SampleRequest]) -> list[np.ndarray]:
        """uint8 images (n, H, W, C) per request; requests with equal settings share one sampler call."""
        with self._lock:
            return self._run_batch(requests)

    def _run_batch(self, requests: list[SampleRequest]) -> list[np.ndarray]:
        from ddpmrt.engine.images import to_uint8

        results: list[np.ndarray | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.settings, []).append(index)
        for members in groups.values():
            batch = [requests[i] for i in members]
            # Each image keeps its request's seed and its index within the request.
            seeds = tuple(r.seed for r in batch for _ in range(r.n))
            indices = np.concatenate([np.arange(r.n) for r in batch])
            images = self.sampler(batch[0]).sample(self.model, (len(seeds), *self.model.image_shape), seed=seeds,
                                                   image_indices=indices, progress=False)
            images = to_uint8(images)
            start = 0
            for i, r in zip(members, batch):
                results[i] = images[start:start + r.n]
                start += r.n
        return results

    def metadata(self) -> dict:
        from ddpmrt.engine import __version__

        return {"model": self.model_name, "schedule": self.model.schedule.to_dict(),
                "image_shape": list(self.model.image_shape), "backend": self.backend, "device": self.device,
                "version": __version__, "max_images": self.max_images}


def encode(images: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """(body, media type): a PNG grid, or an .npz with array `images` (uint8 N×H×W×C)."""
    buffer = io.BytesIO()
    if fmt == "npz":
        np.savez_compressed(buffer, images=images)
        return buffer.getvalue(), "application/octet-stream"
    from PIL import Image

    from ddpmrt.engine.images import make_grid

    grid = make_grid(images)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


def build_app(model: str, backend: str = "auto", device: str = "cpu", replicas: int | None = None,
              max_batch: int = 8, batch_wait_ms: float = 5.0, max_ongoing: int | None = None, max_queued: int = 64,
              threads: int | None = None, max_images: int = DEFAULT_MAX_IMAGES, batching: bool = True):
    """The Ray Serve application: one replica per GPU on CUDA (num_gpus=1), CPU replicas otherwise."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, Response
        from ray import serve
    except ImportError:
        raise UserError("serving needs Ray Serve: pip install 'ddpmrt[serve]'") from None
    if replicas is None:
        replicas = _gpu_count() if device == "cuda" else 1
    if device == "cuda" and replicas < 1:
        raise UserError("--device cuda: the Ray cluster has no GPU; serve on --device cpu or add GPU nodes")
    actor = {"num_gpus": 1} if device == "cuda" else {"num_cpus": threads or 1}
    http = FastAPI(title="ddpmrt")

    @serve.deployment(name="ddpmrt", num_replicas=replicas, ray_actor_options=actor,
                      max_ongoing_requests=max_ongoing or max(2 * max_batch, 4), max_queued_requests=max_queued)
    @serve.ingress(http)
    class Sampler:
        def __init__(self):
            self.service = SamplingService(model, backend, device, threads, max_images)

        @http.get("/healthz")
        def healthz(self):
            return {"status": "ok"}

        @http.get("/metadata")
        def metadata(self):
            return {**self.service.metadata(), "max_batch": max_batch, "batching": batching}

        @http.post("/sample")
        async def sample_http(self, request: Request):
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"error": "the body is not JSON; send e.g. {\"steps\": 50, \"n\": 4}"}, status_code=400)
            try:
                parsed = self.service.parse(body)
            except UserError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            images, batch_size = await self._run(parsed)
            content, media_type = encode(images, parsed.format)
            return Response(content, media_type=media_type, headers={"X-Batch-Requests": str(batch_size)})

        async def sample(self, body: dict) -> np.ndarray:
            """The handle API: uint8 images (n, H, W, C); a bad body raises UserError."""
            images, _ = await self._run(self.service.parse(body))
            return images

        async def _run(self, request: SampleRequest):
            if batching:
                return await self._batched(request)
            images = await asyncio.to_thread(self.service.run_batch, [request])
            return images[0], 1

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_ms / 1000)
        async def _batched(self, requests: list[SampleRequest]):
            # Off the event loop: the replica keeps accepting (and batching) requests meanwhile.
            images = await asyncio.to_thread(self.service.run_batch, requests)
            return [(i, len(requests)) for i in images]

    return Sampler.bind()


def _gpu_count() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
