"""The torch and inductor backends: a ddpmrt checkpoint run by PyTorch, behind the NumPy model interface.

torch is imported here, on first use, never by `import ddpmrt.engine`.

On CUDA the module runs in half precision with channels_last weights (the default; fp32, tf32
or bf16 on request), and sampling goes through engine/gpu/device_loop.py: the input, timestep table
and ε stay in torch tensors on the GPU, the fused kernel is launched on torch's current stream,
and with `cuda_graph=True` the network and the kernel are captured together by
torch.cuda.graph, so torch's allocator keeps the graph's memory in its private pool.

The inductor backend is the same model compiled by TorchInductor (`torch.compile`, default
mode: the loop's own graph capture replaces Inductor's CUDA graphs), captured as one CUDA
graph per (batch, steps) on a GPU.  Inductor caches its compiled code on disk
(TORCHINDUCTOR_CACHE_DIR), so a second process skips most of the compilation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmrt.engine.artifacts.sidecar import PACKAGE, check_batch, check_device, read_sidecar, sidecar_metadata
from ddpmrt.engine.backends.base import LoadedModel
from ddpmrt.engine.checks import model_inputs
from ddpmrt.engine.cpu import resolve_cpu_precision
from ddpmrt.engine.errors import UserError, install_hint
from ddpmrt.engine.gpu.cuda_runtime import collector_paused, graph_shape_or_none
from ddpmrt.engine.schedule import NoiseSchedule

PRECISIONS = ("auto", "fp32", "tf32", "fp16", "bf16")


def resolve_precision(precision: str, device: str) -> str:
    """auto -> fp16 on CUDA; on the CPU bf16 where it has AMX-BF16, else fp32 (engine/cpu.py).

    A precision the device cannot run is a UserError; bf16 on a CPU without bf16 units runs, with a note.
    """
    if precision == "int8":
        raise UserError("int8 runs on a calibrated ONNX model, not on PyTorch: export one with `ddpmrt export-onnx "
                        "MODEL --precision int8 --out model-int8.onnx` and sample that")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    on_cuda = device.startswith("cuda")
    if on_cuda:
        return "fp16" if precision == "auto" else precision
    if precision in ("fp16", "tf32"):
        raise UserError(f"{precision} on the torch backend needs --device cuda; on the CPU use fp32 or bf16")
    return resolve_cpu_precision(precision)


def fp32_math(torch, allow_tf32: bool):
    """A context in which fp32 convolutions and matrix products use TF32 or not.

    PyTorch lets cuDNN convolutions use TF32 by default, which moves an fp32 network's output
    by about 1e-3: `precision="fp32"` means IEEE fp32, and "tf32" asks for the faster mode.
    Only the `allow_tf32` flags are set: in torch 2.9+ setting the newer `fp32_precision` of
    cuDNN's convolutions alone makes every later read of `cudnn.allow_tf32` (Inductor's conv
    templates read it) raise, while the flags set here keep both kinds of read working.
    """
    import contextlib

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul

    @contextlib.contextmanager
    def scoped():
        try:
            saved = cudnn.allow_tf32, matmul.allow_tf32
        except RuntimeError:  # the process mixed the old and new TF32 APIs: restore PyTorch's defaults
            saved = True, False
        cudnn.allow_tf32 = matmul.allow_tf32 = allow_tf32
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = saved
    return scoped()


COMPILED_GRAPHS_LIMIT = 128  # graphs per process of the compiled network (batch sizes x models), see _math


def _network(torch, module, compute_dtype, io_dtype):
    """The module between the device loop's buffers: input cast to the compute dtype, ε to the I/O dtype."""

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module

        def forward(self, x, t):
            return self.module(x.to(compute_dtype), t).to(io_dtype)
    return Network()


class _TorchGraph:
    """A loop captured by torch.cuda.graph (the CapturedGraph of engine/gpu/device_loop.py)."""

    def __init__(self, graph, shape: dict | None):
        self.graph, self.shape = graph, shape

    def launch(self) -> None:
        self.graph.replay()

    def close(self) -> None:
        if self.graph is not None:
            self.graph.reset()  # gives its memory back to torch's private pool
            self.graph = None


class TorchModel(LoadedModel):
    """eps = model(x_t, t) on NumPy arrays, around a torch nn.Module.

    precision: fp32 (IEEE), tf32 (CUDA), fp16 (CUDA) or bf16; auto = fp16 on CUDA, and on the CPU bf16 where
               it has AMX-BF16 (2-3x faster than fp32 there, quality unchanged), fp32 elsewhere (AVX512-BF16
               alone measured slower than fp32: engine/cpu.py).
    compile:   run the network through TorchInductor (torch.compile, static shapes: one compiled
               graph per batch size); on CUDA the whole sampling loop is then captured as one CUDA
               graph per (batch, steps) unless the fused kernel cannot be loaded.
    inductor_options: Inductor config entries for a compiled CPU network, over the defaults (freezing
               on): the levers benchmarks/unet_levers.py measures (max_autotune, the CPU GEMM templates).
    A module with `set_execution_form` (ddpmrt's U-Net) runs in its "native" form: PyTorch's own
    fp16 GroupNorm and scaled_dot_product_attention kernels, with its time shifts precomputed for
    every training timestep (`precompute_time_table`).
    """

    backend = "torch"

    def __init__(self, module, schedule: NoiseSchedule, image_shape, device: str = "cpu", source: str = "",
                 precision: str = "auto", cuda_graph: bool = False, compile: bool = False,
                 inductor_options: dict | None = None):
        import torch

        self._torch = torch
        self._inductor_options = {"freezing": True, **(inductor_options or {})}
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        self.precision = resolve_precision(precision, self.device.type)
        self.compiled = bool(compile)
        if self.compiled:
            self.backend = "inductor"
        compute_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        # The kernel reads and writes fp16 or fp32; bf16 networks take fp32 and cast inside.
        io_dtype = torch.float16 if compute_dtype == torch.float16 else torch.float32
        self.module = module.to(self.device).eval()
        if hasattr(self.module, "set_execution_form"):
            self.module.set_execution_form("native")
        if hasattr(self.module, "precompute_time_table"):
            # Time shifts for every t computed once, in fp32 before any cast: a row lookup per call.
            self.module.precompute_time_table(schedule.num_train_timesteps)
        if compute_dtype != torch.float32:
            self.module = self.module.to(compute_dtype)
            if on_cuda:  # NHWC weights: the tensor-core path for convolutions
                self.module = self.module.to(memory_format=torch.channels_last)
        self._torch_io_dtype = io_dtype
        self.network = _network(torch, self.module, compute_dtype, io_dtype)
        if self.compiled:
            import torch._inductor.config  # noqa: F401  (_math patches it)

            self.network = torch.compile(self.network, dynamic=False, fullgraph=True)
        self.schedule = schedule
        self.image_shape = tuple(image_shape)
        self.source = source
        # An explicit cuda_graph=True must be honoured; the compiled backend captures by default.
        self._graph_required = cuda_graph
        self.cuda_graph = cuda_graph or (self.compiled and on_cuda)
        # The device loop's network interface (CUDA only): what the network reads and writes, as NumPy names it.
        self.io_dtype = np.dtype(np.float16 if io_dtype == torch.float16 else np.float32)
        self._io: dict[int, dict] = {}      # per batch size: static x, timestep table, last ε
        self._loop = None                   # the DeviceLoop, once built
        self._loop_unavailable = not on_cuda  # the CPU, or CUDA without the fused kernel: the host loop
        self.sidecar = None                 # a package's sidecar: its batch range is checked; None = any batch

    def _math(self):
        """The settings every call runs under: TF32 on or off for fp32 work (CUDA), as the precision
        says; for any compiled network, room for more graphs than Dynamo's default allows (below);
        and for a network compiled for the CPU, Inductor's freezing (Inductor compiles on the
        first call of each batch size, inside this context; torch.compile(options={"freezing": True})
        does not take effect).

        Freezing makes the weights constants of the compiled graph, so Inductor lays them out for
        oneDNN's convolutions once instead of on every call (docs/backends.md's CPU figures and
        benchmarks/results/unet-levers-cpu-epyc-zen5/ measure it).  The price is start-up: Inductor's
        FX-graph cache skips frozen oneDNN weights, so a second process recompiles.  On
        CUDA the weights are already fp16 and channels_last, and start-up has a 10 s target, so it
        stays off there.
        """
        import contextlib

        settings = contextlib.ExitStack()
        if self.compiled:
            # Every batch size, and every model loaded in this process, is one more graph of the same
            # forward code to Dynamo; past its default limit of 8 a fullgraph compile is a hard failure,
            # so a ninth batch size (or a ninth model) would crash a long-lived process.
            settings.enter_context(self._torch._dynamo.config.patch(recompile_limit=COMPILED_GRAPHS_LIMIT))
        if self.device.type == "cuda":
            settings.enter_context(fp32_math(self._torch, allow_tf32=self.precision == "tf32"))
        elif self.compiled:
            settings.enter_context(self._torch._inductor.config.patch(**self._inductor_options))
        return settings

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        torch = self._torch
        x, t = model_inputs(x, t, self.image_shape, self.schedule.num_train_timesteps)
        with torch.inference_mode(), self._math():
            xt = torch.from_numpy(x).to(self.device, self._torch_io_dtype)
            tt = torch.from_numpy(t).to(self.device)
            return self.network(xt, tt).float().cpu().numpy()

    # -- the network interface of engine/gpu/device_loop.py (CUDA) ------------------------------------

    def check_batch(self, n: int) -> None:
        if self.sidecar is not None:
            check_batch(self.sidecar, n, Path(self.source).name)

    @property
    def device_loop(self):
        """The GPU sampling loop (CUDA only; built on first use: it compiles the fused kernel), else None."""
        if self._loop is None and not self._loop_unavailable:
            from ddpmrt.engine.gpu.device_loop import DeviceLoop
            from ddpmrt.engine.gpu.kernels import FusedUpdate

            try:
                kernel = FusedUpdate(self.device.index or 0)
            except UserError as exc:
                if self._graph_required:
                    raise
                # Without cuda-python / NVRTC the network still runs on the GPU, step by step from the host.
                import warnings

                warnings.warn(f"sampling without the fused kernel and CUDA graphs: {exc}", stacklevel=2)
                self._loop_unavailable = True
                return None
            self._loop = DeviceLoop(self, kernel=kernel, cuda_graph=self.cuda_graph,
                                    max_steps=self.schedule.num_train_timesteps)
        return self._loop

    def close(self) -> None:
        """Free the loop's graphs and buffers and the network's static tensors."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        self._io.clear()

    def stream_handle(self) -> int:
        return self._torch.cuda.current_stream(self.device).cuda_stream

    def _buffers(self, n: int) -> dict:
        torch = self._torch
        if n not in self._io:
            # x stays NCHW-contiguous: the kernel indexes elements in (C, H, W) order, as the noise spec does.
            # Timestep rows are padded to 16 bytes: every step's row is then as aligned as a fresh
            # tensor, which compiled code checks for.  Inference tensors, like those the host path
            # makes: compiled code guards on the dispatch keys, and other keys would compile again.
            with torch.inference_mode():
                self._io[n] = {"x": torch.zeros((n, *self.image_shape), dtype=self._torch_io_dtype, device=self.device),
                               "t": torch.zeros((self.schedule.num_train_timesteps, n + n % 2), dtype=torch.int64,
                                                device=self.device),
                               "eps": None}
        return self._io[n]

    def prepare(self, n: int, timesteps: np.ndarray) -> None:
        io = self._buffers(n)
        timesteps = np.asarray(timesteps, np.int64)
        if io.get("timesteps") is None or not np.array_equal(io["timesteps"], timesteps):
            table = np.repeat(timesteps[:, None], n, axis=1)
            with self._torch.inference_mode():  # an inference tensor is written in inference mode only
                io["t"][:len(table), :n].copy_(self._torch.from_numpy(table))
            io["timesteps"] = timesteps

    def input_ptr(self, n: int) -> int:
        return self._buffers(n)["x"].data_ptr()

    def forward(self, n: int, step: int) -> int:
        io = self._buffers(n)
        with self._torch.inference_mode(), self._math():
            eps = self.network(io["x"], io["t"][step, :n]).contiguous()  # NCHW, whatever layout the convs chose
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
        # keep_graph (torch 2.7+): the captured cudaGraph_t stays readable, so the bench can say what it holds.
        try:
            graph = torch.cuda.CUDAGraph(keep_graph=True)
        except TypeError:
            graph = torch.cuda.CUDAGraph()
        # The collector paused (cuda_runtime.collector_paused): a DeviceBuffer freed mid-capture breaks it.
        with collector_paused(), torch.inference_mode(), self._math(), torch.cuda.graph(graph, stream=side):
            record()
        shape = None
        if hasattr(graph, "raw_cuda_graph"):
            graph.instantiate()
            shape = graph_shape_or_none(graph.raw_cuda_graph())
        return _TorchGraph(graph, shape)


def load_aot_package(path: Path, device: str | None = None, cuda_graph: bool = True,
                     threads: int | None = None) -> TorchModel:
    """An AOTInductor package (`export-engine --flavour inductor`), checked against its sidecar first.

    `device` None runs it where it was built for; another device is a UserError.  The package
    computes in its own precision and takes x and returns ε in fp32; on CUDA the sampling loop is
    captured as one CUDA graph like the inductor backend's.  `threads` sets PyTorch's CPU threads
    (process-wide, as torch.set_num_threads is).
    """
    path = Path(path)
    sidecar = read_sidecar(path, PACKAGE)  # format, checksum, the package's size and hash, its batch profile
    built_for = check_device(sidecar, device, path.name)
    try:
        import torch
    except ImportError:
        raise UserError(f"an inductor package needs PyTorch: {install_hint('export')}") from None
    if threads is not None:
        torch.set_num_threads(threads)
    if built_for == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{path.name} was compiled for CUDA and PyTorch sees no GPU; build a --device cpu package here")
    if sidecar["torch_version"] != torch.__version__:
        raise UserError(f"{path.name} was compiled with torch {sidecar['torch_version']}, this is {torch.__version__}; "
                        "rebuild it with `export-engine --flavour inductor`")
    metadata = sidecar_metadata(sidecar, path.name)
    graphed = cuda_graph and built_for == "cuda"
    # In its default multi-threaded mode the package's runner queries an event recorded on the capturing
    # stream on its second run, which CUDA forbids during a capture (PyTorch PR #148601 added this mode).
    runner = torch._inductor.aoti_load_package(str(path), run_single_threaded=graphed)

    class Package(torch.nn.Module):
        def forward(self, x, t):
            return runner(x.float(), t)

    model = TorchModel(Package(), metadata.schedule, metadata.image_shape, built_for, str(path), precision="fp32",
                       cuda_graph=graphed)
    model.backend = "inductor"
    model.sidecar = sidecar  # a batch outside the package's range is a UserError, not a crash inside AOTInductor
    return model
