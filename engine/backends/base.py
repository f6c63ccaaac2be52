"""What every loaded model shares: a `with` block that frees it, and the defaults of the model interface.

    with load_model("model.plan", cuda_graph=True) as model:
        images = sampler.sample(model, (64, *model.image_shape))
    # the engine's buffers, stream and captured graphs are freed here

A backend overrides what it has: `close()` (device memory, graphs), `check_batch(n)` (a batch
its artifact cannot run), and `device_loop` (the GPU loop of engine/gpu/device_loop.py, or None).
"""

from __future__ import annotations


class LoadedModel:
    backend = "unknown"
    device_loop = None   # a DeviceLoop on GPU backends; None means the host loop of Sampler.sample

    def check_batch(self, n: int) -> None:
        """Nothing to check: any batch runs."""

    def close(self) -> None:
        """Nothing held beyond ordinary Python objects."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
