"""Serving past one machine: a Ray Serve deployment around load_model and the samplers.

    ddpmrt serve model.onnx --replicas 2 --max-batch 16 --port 8000

HTTP (JSON in, images out):

    POST /sample    {"sampler": "ddim", "steps": 50, "eta": 0.0, "spacing": "leading", "clip_sample": 1.0,
                     "timesteps": [999, ...] (instead of steps and spacing), "seed": 0, "n": 4, "format": "png" | "npz"}
                    -> a PNG grid, or an .npz (images: uint8 N×H×W×C); the sampler options are
                       `ddpmrt sample`'s, with its defaults (sampler_factory.make_sampler)
    GET  /healthz   -> {"status": "ok"}
    GET  /metadata  -> model, schedule, image shape, backend, device, version, limits

From Python, `serve.run(build_app(...))` returns a handle: `handle.sample.remote({...}).result()`
gives the uint8 images.

Batching (`@serve.batch`): requests arriving within `batch_wait_ms` of each other are run together,
grouped by their sampler settings, as one call of the sampler.  Noise is keyed by (seed, image
index), and a batch carries each request's own seed and indices 0..n-1 (Sampler.sample takes
one seed per image), so a request's images are bitwise the same batched or alone, as long as
the network's output for an image does not depend on the batch (true of ONNX Runtime and OpenVINO on the CPU;
tests/test_serve.py checks it).  Batching changes throughput, never an image.

Hostile bodies: a body over `max_body_bytes` (default 4 KiB, `--max-body-bytes`) is answered 413
before it is read to the end; a body that is not one flat JSON object of the request's fields, or
nests anything but a flat array, 400; an unexpected exception in a request 500 with one line (logged once, one
line), and the replica stays up.

Back-pressure: at most `max_ongoing` requests run or wait inside a replica and `max_queued` wait
in front of the replicas; past that Serve answers 503.  A request that takes longer than
`request_timeout_s` is answered 408 by Serve's proxy; a replica that dies is restarted by Serve.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at
# definition time, and Request is imported inside build_app (Ray Serve is an optional extra).
import asyncio
import io
import json
import logging
import threading

import numpy as np

from ddpmrt.engine.errors import UserError, first_line, install_hint
from ddpmrt.engine.serve_requests import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IMAGES,
    BadRequest,
    SampleRequest,
    batch_chunks,
    decode_body,
    parse_request,
    too_large,
)

__all__ = ["BadRequest", "SampleRequest", "SamplingService", "answer_sample", "batch_chunks", "build_app", "check_model",
           "check_model_apart", "decode_body", "parse_request"]

logger = logging.getLogger("ddpmrt.serve")


class SamplingService:
    """The model and the batched sampling, without Ray: what a replica runs (and what tests call)."""

    def __init__(self, model: str, backend: str = "auto", device: str = "cpu", threads: int | None = None,
                 max_images: int = DEFAULT_MAX_IMAGES):
        from ddpmrt.engine import load_model

        self.model_name = str(model)
        self.model = load_model(model, backend=backend, device=device, threads=threads)
        self.model.serve_traffic()
        from ddpmrt.engine.artifacts.schedules import TunedSchedules
        from ddpmrt.engine.backends import resolve_model_path

        self.tuned = TunedSchedules(resolve_model_path(model), self.model_name)  # "spacing": "tuned"
        self.backend, self.device, self.max_images = self.model.backend, device, max_images
        # A model is one stream of work (an ONNX Runtime binding, a GPU's buffers and graphs): requests
        # running in threads at once (batching off) take turns.
        self._lock = threading.Lock()

    def parse(self, body) -> SampleRequest:
        request = parse_request(body, self.model.schedule, self.max_images, self.tuned)
        self.model.check_batch(request.n)  # a request the model cannot run alone is a 400 of its own
        return request

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
        for members in (chunk for group in groups.values()
                        for chunk in batch_chunks(group, [requests[i].n for i in group], self.model.batch_range[1])):
            batch = [requests[i] for i in members]
            # Each image keeps its request's seed and its index within the request.
            seeds = tuple(r.seed for r in batch for _ in range(r.n))
            indices = np.concatenate([np.arange(r.n) for r in batch])
            images = batch[0].make_sampler(self.model.schedule).sample(self.model, (len(seeds), *self.model.image_shape), seed=seeds,
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
    """(body, media type): a PNG grid (images.png_grid, as `ddpmrt sample` writes it), or an .npz with
    array `images` (uint8 N×H×W×C)."""
    if fmt == "npz":
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=images)
        return buffer.getvalue(), "application/octet-stream"
    from ddpmrt.engine.images import png_grid

    return png_grid(images), "image/png"


def build_app(model: str, backend: str = "auto", device: str = "cpu", replicas: int | None = None,
              max_batch: int = 8, batch_wait_ms: float = 5.0, max_ongoing: int | None = None, max_queued: int = 64,
              threads: int | None = None, max_images: int = DEFAULT_MAX_IMAGES, batching: bool = True,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    """The Ray Serve application: one replica per GPU on CUDA (num_gpus=1), CPU replicas otherwise."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import Response
        from ray import serve
    except ImportError:
        raise UserError(f"serving needs Ray Serve: {install_hint('serve')}") from None
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
            return {**self.service.metadata(), "max_batch": max_batch, "batching": batching,
                    "max_body_bytes": max_body_bytes}

        @http.post("/sample")
        async def sample_http(self, request: Request):
            status, content, media_type, headers = await answer_sample(
                request.headers.get("content-length"), request.stream(), self.service.parse, self._run, max_body_bytes)
            return Response(content, status_code=status, media_type=media_type, headers=headers)

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


async def read_body(content_length: str | None, stream, max_body_bytes: int) -> bytes:
    """The body, read no further than the limit: a Content-Length over it is refused unread, and a
    chunked body is cut off once it passes it."""
    if content_length is not None and (not content_length.isdigit() or int(content_length) > max_body_bytes):
        raise too_large(max_body_bytes) if content_length.isdigit() else BadRequest("the Content-Length header is not a number")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_body_bytes:
            raise too_large(max_body_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def answer_sample(content_length, stream, parse, run, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    """POST /sample without the web framework: (status, body, media type, headers).

    `parse(body)` checks a decoded body (SamplingService.parse) and `run(request)` samples it
    (images, requests in its batch).  Bad input is 400 (413 for a body too large) with a one-line
    error; anything else raised is a fault of the server: 500 with one line, logged once.
    """
    try:
        request = parse(decode_body(await read_body(content_length, stream, max_body_bytes), max_body_bytes))
        images, batch_size = await run(request)
        content, media_type = encode(images, request.format)
    except UserError as exc:
        return _error(exc.status if isinstance(exc, BadRequest) else 400, str(exc))
    except Exception as exc:  # a bug or a fault of the replica: one line to the client and to the log
        logger.error("POST /sample failed: %s: %s", type(exc).__name__, first_line(exc))
        return _error(500, f"internal error ({type(exc).__name__}: {first_line(exc, 120)}); the server logged it")
    return 200, content, media_type, {"X-Batch-Requests": str(batch_size)}


def _error(status: int, message: str):
    return status, json.dumps({"error": message}).encode(), "application/json", {}


def check_model(model: str, backend: str = "auto", device: str = "cpu", threads: int | None = None) -> None:
    """What a replica will load, loaded once here before Ray starts: a damaged, missing or
    unsupported model is one UserError in seconds rather than Serve's retries.

    On --device cuda the GPU may be on another node of the cluster, so the file is checked on the
    CPU: an engine or a CUDA package by its sidecar and checksum (and a package by the device it was
    built for), anything else by loading it on the CPU.
    """
    from ddpmrt.engine import load_model
    from ddpmrt.engine.artifacts.sidecar import ENGINE, PACKAGE, check_device, read_sidecar
    from ddpmrt.engine.backends import ENGINE_SUFFIXES, PACKAGE_SUFFIX, resolve_model_path

    path = resolve_model_path(model)
    if device == "cuda" and path.suffix.lower() in ENGINE_SUFFIXES:
        read_sidecar(path, ENGINE)  # the sidecar, and the engine's bytes against its checksum
        return
    if device == "cuda" and path.suffix.lower() == PACKAGE_SUFFIX:
        check_device(read_sidecar(path, PACKAGE), "cuda", path.name)  # a CPU package on cuda is refused here
        return
    if device == "cuda":
        backend = "onnxruntime" if path.suffix.lower() == ".onnx" else "torch" if path.is_dir() else backend
    loaded = load_model(path, backend=backend, device="cpu", threads=threads or 1)
    getattr(loaded, "close", lambda: None)()


def check_model_apart(model: str, backend: str = "auto", device: str = "cpu", threads: int | None = None,
                      timeout_s: float = 300) -> None:
    """check_model in a process of its own, as `ddpmrt serve` runs it before Ray starts: the runtime
    it loads (OpenVINO's thread pool above all) leaves with that process instead of competing on the
    CPU with Ray's proxy and replicas, which must be ready within seconds."""
    import subprocess
    import sys

    script = ("import sys\nfrom ddpmrt.engine.errors import UserError\nfrom ddpmrt.engine.serve import check_model\n"
              "try:\n    check_model(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) or None)\n"
              "except UserError as exc:\n    print(exc, file=sys.stderr)\n    sys.exit(2)\n")
    result = subprocess.run([sys.executable, "-c", script, str(model), backend, device, str(threads or 0)],
                            capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        if result.returncode == 2 and lines:
            raise UserError(lines[-1])
        raise RuntimeError(f"checking {model} failed (exit status {result.returncode}):\n{result.stderr[-2000:]}")


def _gpu_count() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
