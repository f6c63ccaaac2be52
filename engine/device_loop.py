"""The sampling loop on the GPU: x, ε and the network input never leave the device.

Per step the network runs (a TensorRT engine, or torch on CUDA), then one fused kernel
(engine/kernels.py) does the whole sampler update and writes the next network input in the
network's dtype.  The host enqueues work and copies twice per run: the run parameters (and
the sampler's tables, when the sampler changed) before, the images after.

    x_T = noise(seed)                     initial-noise kernel (or the caller's x_T, copied once)
    for i in range(steps):
        ε = network(x_in, t[i])           x_in: fp16 copy of x (or x itself for an fp32 network)
        x, x_in = update(x, ε, row i)     fused kernel, in place

With `cuda_graph=True` this whole loop is captured into one CUDA graph per (batch, steps,
x_T given) and replayed.  What a run may change without a re-capture lives in device memory
the graph reads: the coefficient table (steps × 6), the timestep table (inside the network)
and the run parameters (seed, first image, clip).

A network plugs in through five methods (TensorRTModel and TorchCudaModel implement them):

    input_dtype, eps_dtype            what the network reads (the kernel writes it) and writes
    stream_handle()                   the stream to enqueue on now (torch: its current stream)
    prepare(n, timesteps)             set the batch, copy the timestep table if it changed (outside any graph)
    input_ptr(n)                      the fixed device address the network reads x from
    forward(n, step) -> eps_ptr       enqueue one network call at timesteps[step]
    capture(record) -> replay         record `record()` into a CUDA graph, return its launcher
                                      (and leave what the graph holds in last_graph_shape)

and the device memory through `memory` (cuda_runtime.DeviceMemory; the CPU tests use a host
fake), so the orchestration below is tested without a GPU.
"""

from __future__ import annotations

import time

import numpy as np

from ddpmrt.engine.errors import UserError
from ddpmrt.engine.kernels import run_params


class DeviceLoop:
    """Runs a Sampler's steps on a GPU network with the fused kernel, optionally as one CUDA graph."""

    def __init__(self, network, kernel=None, memory=None, cuda_graph: bool = False, max_steps: int = 1000):
        if kernel is None:
            from ddpmrt.engine.kernels import FusedUpdate

            kernel = FusedUpdate()
        if memory is None:
            from ddpmrt.engine.cuda_runtime import DeviceMemory

            memory = DeviceMemory()
        self.network, self.kernel, self.memory = network, kernel, memory
        self.cuda_graph = cuda_graph
        self.max_steps = int(max_steps)
        self.image_shape = tuple(network.image_shape)
        self.elements = int(np.prod(self.image_shape))
        # Allocated once: the kernel and any captured graph hold these addresses.
        self.coefficients = memory.alloc(self.max_steps * 6 * 4)
        self.params = memory.alloc(16)
        self._x: dict[int, object] = {}        # fp32 x per batch size (fp16 networks only)
        self._graphs: dict[tuple, object] = {}
        self.captures = 0                      # how many graphs were recorded (tests and benchmarks read it)
        self.graph_shapes: dict[tuple, dict | None] = {}  # per key: nodes by type, straight line or not
        self.last_enqueue_seconds = 0.0
        self._uploaded_coefficients = None

    def x_ptr(self, n: int) -> int:
        """fp32 x: the network's own input buffer when it reads fp32, else a buffer of ours."""
        if np.dtype(self.network.input_dtype) == np.float32:
            return self.network.input_ptr(n)
        if n not in self._x:
            self._x[n] = self.memory.alloc(n * self.elements * 4)
        return self._x[n].ptr

    def half_ptr(self, n: int) -> int:
        return 0 if np.dtype(self.network.input_dtype) == np.float32 else self.network.input_ptr(n)

    def update(self, n: int, eps_ptr: int, step: int, num_steps: int, stream) -> None:
        """Enqueue the fused update of step `step` on x (and the network's next input)."""
        self.kernel.update(self.x_ptr(n), eps_ptr, self.network.eps_dtype, self.coefficients.ptr, self.params.ptr,
                           step, num_steps, self.elements, n, x_half_ptr=self.half_ptr(n), stream=stream)

    def _record(self, n: int, num_steps: int, make_noise: bool) -> None:
        """Enqueue the whole loop: what a graph captures, or what runs eagerly."""
        net = self.network
        stream = net.stream_handle()  # while capturing with torch, its capture stream
        if make_noise:
            self.kernel.initial_noise(self.x_ptr(n), self.params.ptr, self.elements, n, x_half_ptr=self.half_ptr(n),
                                      stream=stream)
        for i in range(num_steps):
            self.update(n, net.forward(n, i), i, num_steps, stream)

    def sample(self, sampler, n: int, seed: int = 0, first_image: int = 0, x_T: np.ndarray | None = None) -> np.ndarray:
        """Images (n, C, H, W) float32: the same as sampler.sample on the host, up to network precision."""
        net, memory = self.network, self.memory
        steps = sampler.num_steps
        if steps > self.max_steps:
            raise UserError(f"{steps} steps exceed this loop's table of {self.max_steps}; use fewer steps")
        if hasattr(net, "check_batch"):
            net.check_batch(n)
        stream = net.stream_handle()
        # 1. Tables and run parameters into device memory (a replayed graph reads them from there).
        #    The tables are copied only when the sampler changed: a new seed costs one 16-byte copy.
        net.prepare(n, sampler.timesteps)
        coefficients = np.ascontiguousarray(sampler.coefficients, np.float32)
        if self._uploaded_coefficients is None or not np.array_equal(self._uploaded_coefficients, coefficients):
            memory.copy_from_host(self.coefficients.ptr, coefficients, stream)
            self._uploaded_coefficients = coefficients
        memory.copy_from_host(self.params.ptr, run_params(seed, first_image, sampler.clip_sample), stream)
        # 2. x_T: generated on the device, or the caller's copied once (fp32 and the network's copy).
        x, x_half = self.x_ptr(n), self.half_ptr(n)
        if x_T is not None:
            x_T = np.ascontiguousarray(x_T, np.float32)
            if x_T.shape != (n, *self.image_shape):
                raise ValueError(f"x_T has shape {x_T.shape}, expected {(n, *self.image_shape)}")
            memory.copy_from_host(x, x_T, stream)
            if x_half:
                memory.copy_from_host(x_half, x_T.astype(np.float16), stream)
        # 3. The loop: replay its graph, or run it eagerly (the first run at a key warms up, then is captured).
        key = (n, steps, x_T is None)
        start = time.perf_counter()
        if self.cuda_graph and key in self._graphs:
            self._graphs[key]()
        else:
            self._record(n, steps, x_T is None)
        # Host time spent enqueuing the loop (the GPU runs behind it): the profiler's host overhead.
        self.last_enqueue_seconds = time.perf_counter() - start
        if self.cuda_graph and key not in self._graphs:
            self._graphs[key] = net.capture(lambda: self._record(n, steps, x_T is None))
            self.graph_shapes[key] = getattr(net, "last_graph_shape", None)
            self.captures += 1
        # 4. One copy back.
        out = np.empty((n, *self.image_shape), np.float32)
        memory.copy_to_host(out, x, stream)
        memory.synchronize(stream)
        if not np.isfinite(out).all():
            raise UserError("the network produced NaN or Inf while sampling on the GPU; an fp16 model may "
                            "overflow: try the fp32 model or engine")
        return out
