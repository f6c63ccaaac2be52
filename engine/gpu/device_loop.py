"""The sampling loop on the GPU: x, ε and the network input never leave the device.

Per step the network runs (a TensorRT engine, or torch on CUDA), then one fused kernel
(engine/gpu/kernels.py) does the whole sampler update and writes the next network input in the
network's dtype.  The host enqueues work and copies twice per run: the run's small tables
before, the images after.

    x_T = noise(keys)                     initial-noise kernel (or the caller's x_T, copied once)
    for i in range(steps):
        ε = network(x_in, t[i])           x_in: fp16 copy of x (or x itself for an fp32 network)
        x, x_in = update(x, ε, row i)     fused kernel, in place

With `cuda_graph=True` this whole loop is captured into one CUDA graph per (batch, steps,
x_T given) and replayed.  What a run may change without a re-capture lives in device memory
the graph reads: the coefficient table (steps × 6), the timestep table (inside the network),
the image keys (one seed and image index per image, so a batch of several requests, each with
its own seed, runs here too) and the run parameters (the clip value).  Multistep samplers
(DPM-Solver++, UniPC) also keep earlier steps' x̂₀ in a ring of four device buffers and UniPC its
corrected sample in one more; the kernel reads and writes them in the same pass.

Every GPU backend (TensorRTModel, TorchModel on CUDA) implements `DeviceNetwork`, and the
device memory comes through `memory` (cuda_runtime.DeviceMemory; the CPU tests use a host
fake), so the orchestration below is tested without a GPU.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ddpmrt.engine.errors import UserError
from ddpmrt.engine.gpu.kernels import HISTORY_SLOTS, image_keys, run_params
from ddpmrt.engine.samplers import COEFFS_PER_STEP


@runtime_checkable
class CapturedGraph(Protocol):
    """A recorded loop: `launch()` replays it on the network's stream; `close()` frees it."""

    shape: dict | None  # cuda_runtime.graph_shape of what it holds, where the capture could read it

    def launch(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class DeviceNetwork(Protocol):
    """What a network must offer the device loop.

    io_dtype                  NumPy float16 or float32: what the network reads (the kernel writes it) and writes
    image_shape               (C, H, W)
    stream_handle()           the stream to enqueue on now (torch: its current stream)
    check_batch(n)            a UserError where the network cannot run batch n (an engine's profile)
    prepare(n, timesteps)     set the batch, copy the timestep table if it changed (outside any graph)
    input_ptr(n)              the fixed device address the network reads x from
    forward(n, step)          enqueue one network call at timesteps[step]; returns where ε is
    capture(record)           record `record()` (which enqueues on stream_handle()) into a CapturedGraph, or
                              None where the stream cannot be captured (that loop then runs eagerly)
    close()                   free the network's device buffers
    """

    io_dtype: np.dtype
    image_shape: tuple

    def stream_handle(self) -> int: ...

    def check_batch(self, n: int) -> None: ...

    def prepare(self, n: int, timesteps: np.ndarray) -> None: ...

    def input_ptr(self, n: int) -> int: ...

    def forward(self, n: int, step: int) -> int: ...

    def capture(self, record: Callable[[], None]) -> CapturedGraph | None: ...

    def close(self) -> None: ...


def eps_dtype_name(io_dtype) -> str:
    """The kernel's name for what the network writes: fp16 or fp32."""
    return "fp16" if np.dtype(io_dtype) == np.float16 else "fp32"


class DeviceLoop:
    """Runs a Sampler's steps on a GPU network with the fused kernel, optionally as one CUDA graph."""

    def __init__(self, network: DeviceNetwork, kernel=None, memory=None, cuda_graph: bool = False,
                 max_steps: int = 1000):
        if kernel is None:
            from ddpmrt.engine.gpu.kernels import FusedUpdate

            kernel = FusedUpdate()
        if memory is None:
            from ddpmrt.engine.gpu.cuda_runtime import DeviceMemory

            memory = DeviceMemory()
        self.network, self.kernel, self.memory = network, kernel, memory
        self.cuda_graph = cuda_graph
        self.max_steps = int(max_steps)
        self.image_shape = tuple(network.image_shape)
        self.elements = int(np.prod(self.image_shape))
        self.io_dtype = np.dtype(network.io_dtype)
        self.eps_dtype = eps_dtype_name(self.io_dtype)
        # Allocated once: the kernel and any captured graph hold these addresses.
        self.coefficients = memory.alloc(self.max_steps * COEFFS_PER_STEP * 4)
        self.params = memory.alloc(16)
        self._x: dict[int, object] = {}        # fp32 x per batch size (fp16 networks only)
        self._keys: dict[int, object] = {}     # image keys per batch size
        self._history: dict[int, tuple] = {}   # per batch size: the x̂₀ ring and the corrected sample (multistep samplers)
        self._graphs: dict[tuple, CapturedGraph] = {}
        self.captures = 0                      # how many graphs were recorded (tests and benchmarks read it)
        self.last_enqueue_seconds = 0.0
        self._uploaded_coefficients = None

    # -- buffers ---------------------------------------------------------------------------------

    def x_ptr(self, n: int) -> int:
        """fp32 x: the network's own input buffer when it reads fp32, else a buffer of ours."""
        if self.io_dtype == np.float32:
            return self.network.input_ptr(n)
        if n not in self._x:
            self._x[n] = self.memory.alloc(n * self.elements * 4)
        return self._x[n].ptr

    def half_ptr(self, n: int) -> int:
        return 0 if self.io_dtype == np.float32 else self.network.input_ptr(n)

    def keys_ptr(self, n: int) -> int:
        if n not in self._keys:
            self._keys[n] = self.memory.alloc(n * 16)
        return self._keys[n].ptr

    def history_ptrs(self, n: int) -> tuple[int, int]:
        """The x̂₀ ring (HISTORY_SLOTS × n images) and the corrected sample of batch n.

        Allocated for every batch, whatever the sampler: a graph captured with DDIM then replays
        DPM-Solver++ or UniPC of the same shape (the rows say which buffers a step touches)."""
        if n not in self._history:
            size = n * self.elements * 4
            self._history[n] = (self.memory.alloc(HISTORY_SLOTS * size), self.memory.alloc(size))
        ring, corrected = self._history[n]
        return ring.ptr, corrected.ptr

    # -- the loop --------------------------------------------------------------------------------

    def update(self, n: int, eps_ptr: int, step: int, num_steps: int, stream) -> None:
        """Enqueue the fused update of step `step` on x (and the network's next input)."""
        ring, corrected = self.history_ptrs(n)
        self.kernel.update(self.x_ptr(n), eps_ptr, self.eps_dtype, self.coefficients.ptr, self.keys_ptr(n),
                           self.params.ptr, step, num_steps, self.elements, n, x_half_ptr=self.half_ptr(n),
                           history_ptr=ring, corrected_ptr=corrected, stream=stream)

    def _record(self, n: int, num_steps: int, make_noise: bool) -> None:
        """Enqueue the whole loop: what a graph captures, or what runs eagerly."""
        net = self.network
        stream = net.stream_handle()  # while capturing with torch, its capture stream
        if make_noise:
            self.kernel.initial_noise(self.x_ptr(n), self.keys_ptr(n), self.elements, n, x_half_ptr=self.half_ptr(n),
                                      stream=stream)
        for i in range(num_steps):
            self.update(n, net.forward(n, i), i, num_steps, stream)

    def sample(self, sampler, n: int, seed=0, image_indices=None, x_T: np.ndarray | None = None) -> np.ndarray:
        """Images (n, C, H, W) float32: the same as sampler.sample on the host, up to network precision.

        `seed` is one seed or one per image; `image_indices` the images' indices in their runs
        (default 0..n-1): together the noise key of each image.
        """
        net, memory = self.network, self.memory
        steps = sampler.num_steps
        if steps > self.max_steps:
            raise UserError(f"{steps} steps exceed this loop's table of {self.max_steps}; use fewer steps")
        net.check_batch(n)
        stream = net.stream_handle()
        # 1. Tables and run parameters into device memory (a replayed graph reads them from there).
        #    The coefficients are copied only when the sampler changed; keys and clip every run (n·16 + 16 bytes).
        net.prepare(n, sampler.timesteps)
        coefficients = np.ascontiguousarray(sampler.coefficients, np.float32)
        if self._uploaded_coefficients is None or not np.array_equal(self._uploaded_coefficients, coefficients):
            memory.copy_from_host(self.coefficients.ptr, coefficients, stream)
            self._uploaded_coefficients = coefficients
        keys = image_keys(seed, np.arange(n) if image_indices is None else image_indices)
        memory.copy_from_host(self.keys_ptr(n), keys, stream)
        memory.copy_from_host(self.params.ptr, run_params(sampler.clip_sample), stream)
        # 2. x_T: generated on the device, or the caller's copied once (fp32 and the network's copy).
        x, x_half = self.x_ptr(n), self.half_ptr(n)
        if x_T is not None:
            x_T = np.ascontiguousarray(x_T, np.float32)
            if x_T.shape != (n, *self.image_shape):
                raise UserError(f"x_T has shape {x_T.shape}, expected {(n, *self.image_shape)}")
            memory.copy_from_host(x, x_T, stream)
            if x_half:
                memory.copy_from_host(x_half, x_T.astype(np.float16), stream)
        # 3. The loop: replay its graph, or run it eagerly (the first run at a key warms up, then is captured).
        key = (n, steps, x_T is None)
        start = time.perf_counter()
        if self.cuda_graph and self._graphs.get(key) is not None:
            self._graphs[key].launch()
        else:
            self._record(n, steps, x_T is None)
        # Host time spent enqueuing the loop (the GPU runs behind it): the profiler's host overhead.
        self.last_enqueue_seconds = time.perf_counter() - start
        if self.cuda_graph and key not in self._graphs:
            # None: the network said its stream cannot be captured here (with a note); this key runs eagerly.
            self._graphs[key] = net.capture(lambda: self._record(n, steps, x_T is None))
            self.captures += self._graphs[key] is not None
        # 4. One copy back.
        out = np.empty((n, *self.image_shape), np.float32)
        memory.copy_to_host(out, x, stream)
        memory.synchronize(stream)
        if not np.isfinite(out).all():
            raise UserError("the network produced NaN or Inf while sampling on the GPU; an fp16 model may "
                            "overflow: try the fp32 model or engine")
        return out

    # -- what the bench reads, and cleaning up -------------------------------------------------------

    def graph_shape(self, n: int, steps: int, noise: bool = True) -> dict | None:
        """What the graph replayed for (batch, steps) holds (nodes by type, one chain or not), if captured."""
        graph = self._graphs.get((n, steps, noise))
        return None if graph is None else graph.shape

    def close(self) -> None:
        """Free every captured graph and every buffer of ours (the network frees its own)."""
        for graph in self._graphs.values():
            if graph is not None:
                graph.close()
        self._graphs.clear()
        history = [buffer for pair in self._history.values() for buffer in pair]
        for buffer in (*self._x.values(), *self._keys.values(), *history, self.coefficients, self.params):
            free = getattr(buffer, "free", None)
            if free is not None:
                free()
        self._x.clear()
        self._keys.clear()
        self._history.clear()
        self._uploaded_coefficients = None
