"""The torch backend: a ddpmrt checkpoint run by PyTorch, behind the NumPy model interface.

torch is imported here, on first use, never by `import ddpmrt.engine`.

On CUDA the module runs in half precision with channels_last weights (the default; fp32 on
request), and sampling goes through engine/device_loop.py: the input, timestep table and ε
stay in torch tensors on the GPU, the fused kernel is launched on torch's current stream, and
with `cuda_graph=True` the network and the kernel are captured together by torch.cuda.graph,
so torch's allocator keeps the graph's memory in its private pool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmrt.engine.errors import UserError
from ddpmrt.engine.schedule import NoiseSchedule

PRECISIONS = ("auto", "fp32", "fp16")


class TorchModel:
    """eps = model(x_t, t) on NumPy arrays, around a torch nn.Module."""

    backend = "torch"

    def __init__(self, module, schedule: NoiseSchedule, image_shape, device: str = "cpu", source: str = "",
                 precision: str = "auto", cuda_graph: bool = False):
        import torch

        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self._torch = torch
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        if precision == "fp16" and not on_cuda:
            raise UserError("fp16 on the torch backend needs --device cuda; on the CPU use fp32")
        self.module = module.to(self.device).eval()
        if on_cuda and precision in ("auto", "fp16"):
            # Half precision with NHWC weights: the tensor-core path for convolutions.
            self.module = self.module.half().to(memory_format=torch.channels_last)
        self.dtype = next(self.module.parameters()).dtype
        self.schedule = schedule
        self.image_shape = tuple(image_shape)
        self.source = source
        self.cuda_graph = cuda_graph
        # The device loop's network interface (CUDA only).
        self.input_dtype = np.dtype(np.float16 if self.dtype == torch.float16 else np.float32)
        self.eps_dtype = "fp16" if self.input_dtype == np.float16 else "fp32"
        self._io: dict[int, dict] = {}      # per batch size: static x, timestep table, last ε
        self._graphs: list = []             # keeps captured graphs (and their memory pool) alive
        self._device_loop = None if on_cuda else False

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device, self.dtype)
            tt = torch.from_numpy(np.ascontiguousarray(t, np.int64)).to(self.device)
            return self.module(xt, tt).float().cpu().numpy()

    # -- the network interface of engine/device_loop.py (CUDA) ------------------------------------

    @property
    def device_loop(self):
        """The GPU sampling loop (CUDA only; built on first use: it compiles the fused kernel)."""
        if self._device_loop is None:
            from ddpmrt.engine.device_loop import DeviceLoop
            from ddpmrt.engine.kernels import FusedUpdate

            self._device_loop = DeviceLoop(self, kernel=FusedUpdate(self.device.index or 0), cuda_graph=self.cuda_graph,
                                           max_steps=self.schedule.num_train_timesteps)
        return self._device_loop or None

    def stream_handle(self) -> int:
        return self._torch.cuda.current_stream(self.device).cuda_stream

    def _buffers(self, n: int) -> dict:
        torch = self._torch
        if n not in self._io:
            # x stays NCHW-contiguous: the kernel indexes elements in (C, H, W) order, as the noise spec does.
            self._io[n] = {"x": torch.zeros((n, *self.image_shape), dtype=self.dtype, device=self.device),
                           "t": torch.zeros((self.schedule.num_train_timesteps, n), dtype=torch.int64, device=self.device),
                           "eps": None}
        return self._io[n]

    def prepare(self, n: int, timesteps: np.ndarray) -> None:
        io = self._buffers(n)
        timesteps = np.asarray(timesteps, np.int64)
        if io.get("timesteps") is None or not np.array_equal(io["timesteps"], timesteps):
            table = np.repeat(timesteps[:, None], n, axis=1)
            io["t"][:len(table)].copy_(self._torch.from_numpy(table))
            io["timesteps"] = timesteps

    def input_ptr(self, n: int) -> int:
        return self._buffers(n)["x"].data_ptr()

    def forward(self, n: int, step: int) -> int:
        io = self._buffers(n)
        with self._torch.inference_mode():
            eps = self.module(io["x"], io["t"][step]).contiguous()  # NCHW, whatever layout the convs chose
        io["eps"] = eps  # alive until the next step: the kernel reads it on the same stream
        return eps.data_ptr()

    def capture(self, record):
        torch = self._torch
        # As torch's CUDA-graph recipe asks: run once on the capture stream first, so that cuBLAS and
        # cuDNN set up their per-stream state outside the capture.
        side, current = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for n in self._io:
                self.forward(n, 0)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, stream=side):
            record()
        self._graphs.append(graph)
        return graph.replay


def load_checkpoint(path: Path, device: str = "cpu", precision: str = "auto", cuda_graph: bool = False) -> TorchModel:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("the torch backend needs PyTorch: pip install 'ddpmrt[export]' "
                        "(or use an .onnx model with --backend onnxruntime)") from None
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    from ddpmrt.export.checkpoint import load_unet

    module, config = load_unet(path, device)
    return TorchModel(module, NoiseSchedule.from_dict(config["schedule"]), config["image_shape"], device, str(path),
                      precision=precision, cuda_graph=cuda_graph)
