"""What every loaded model shares: a `with` block that frees it, and the defaults of the model interface.

    with load_model("model.plan", cuda_graph=True) as model:
        images = sampler.sample(model, (64, *model.image_shape))
    # the engine's buffers, stream and captured graphs are freed here

A backend overrides what it has: `close()` (device memory, graphs), `check_batch(n)` (a batch
its artifact cannot run; `batch_range` says which run), `serve_traffic()` (how it runs under a
server), and `device_loop` (the GPU loop of engine/gpu/device_loop.py, or None).
"""

from __future__ import annotations


class LoadedModel:
    backend = "unknown"
    device_loop = None   # a DeviceLoop on GPU backends; None means the host loop of Sampler.sample
    static_batch: int | None = None   # an ONNX file exported for one batch size
    sidecar: dict | None = None       # an engine's or package's sidecar, with the batch profile it was built for

    @property
    def batch_range(self) -> tuple[int, int | None]:
        """The batch sizes this model runs, (smallest, largest); largest None: no limit."""
        if self.sidecar is not None:
            return int(self.sidecar["profile"]["min"]), int(self.sidecar["profile"]["max"])
        if self.static_batch is not None:
            return self.static_batch, self.static_batch
        return 1, None

    def check_batch(self, n: int) -> None:
        """Nothing to check: any batch runs."""

    def serve_traffic(self) -> None:
        """Set up for a server's traffic, whose batch sizes vary request by request (nothing to do here)."""

    def close(self) -> None:
        """Nothing held beyond ordinary Python objects."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
