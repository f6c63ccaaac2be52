"""The GPU sampling loop's orchestration, on the CPU: a host emulation of the device.

`HostGpu` stands in for the GPU: memory is host memory addressed by raw pointers, the fused
kernel is emulated with the NumPy update it implements, and a "graph" records the launches
with their arguments and replays exactly those, as a CUDA graph does.  So these tests check
what the real loop must get right (tables and run parameters read from device memory, one
capture per shape and step count, new seeds and samplers served by a replay) against the
host sampler.  The real kernel and networks are checked on a GPU in test_kernels.py and
test_tensorrt.py / test_torch_cuda.py.
"""

import contextlib
import ctypes

import numpy as np
import pytest

from ddpmrt.engine import DDIMSampler, DDPMSampler, NoiseSchedule
from ddpmrt.engine.gpu.cuda_runtime import graph_shape
from ddpmrt.engine.gpu.device_loop import CapturedGraph, DeviceLoop, DeviceNetwork
from ddpmrt.engine.gpu.kernels import IMAGE_KEY_DTYPE, RUN_PARAMS_DTYPE
from ddpmrt.engine.philox import STREAM_INITIAL, STREAM_STEP, gaussian_noise
from ddpmrt.engine.samplers import COEFFS_PER_STEP, KEEP, KEEP_CORRECTED, KEEP_EPS, KEEP_X0, History, apply_update

IMAGE_SHAPE = (3, 4, 6)


def view(ptr: int, dtype, count: int) -> np.ndarray:
    dtype = np.dtype(dtype)
    return np.frombuffer((ctypes.c_byte * (count * dtype.itemsize)).from_address(ptr), dtype)


class HostBuffer:
    def __init__(self, nbytes):
        self.storage = np.zeros(max(nbytes, 16) // 8 + 2, np.float64)  # 8-byte aligned
        self.ptr = self.storage.ctypes.data


class HostGpu:
    """Memory, stream and graph recording on the host."""

    def __init__(self):
        self.recording = None
        self.launches = 0
        self.host_to_device = 0

    def enqueue(self, fn):
        self.launches += 1
        if self.recording is not None:
            self.recording.append(fn)
        else:
            fn()

    # DeviceMemory's interface
    def alloc(self, nbytes):
        return HostBuffer(nbytes)

    def copy_from_host(self, ptr, array, stream):
        self.host_to_device += 1
        array = np.ascontiguousarray(array)
        view(ptr, np.uint8, array.nbytes)[:] = array.view(np.uint8).ravel()

    def copy_to_host(self, array, ptr, stream):
        array.view(np.uint8).ravel()[:] = view(ptr, np.uint8, array.nbytes)

    def synchronize(self, stream):
        pass


class EmulatedKernel:
    """FusedUpdate's interface; reads everything the real kernel reads from memory at run time."""

    def __init__(self, gpu):
        self.gpu = gpu

    def update(self, x_ptr, eps_ptr, eps_dtype, coeffs_ptr, keys_ptr, params_ptr, step, num_steps, elements, n,
               x_half_ptr=0, history_ptr=0, corrected_ptr=0, stream=None):
        def run():
            params = view(params_ptr, RUN_PARAMS_DTYPE, 1)[0]
            row = view(coeffs_ptr, np.float32, num_steps * COEFFS_PER_STEP).reshape(num_steps, COEFFS_PER_STEP)[step]
            x = view(x_ptr, np.float32, n * elements)
            eps = view(eps_ptr, np.float16 if eps_dtype == "fp16" else np.float32, n * elements)
            noise = self.noise(keys_ptr, n, step, STREAM_STEP, elements)
            clip = float(params["clip"]) or None
            # The ring as the kernel reads it: H_k in slot (step - k) % 4, this step's x̂₀ into slot step % 4.
            ring = view(history_ptr, np.float32, 4 * n * elements).reshape(4, n * elements)
            corrected = view(corrected_ptr, np.float32, n * elements)
            history = History()
            history.x0 = [ring[(step - k) % 4].copy() for k in (1, 2, 3)]
            history.corrected = corrected.copy()
            x[:] = apply_update(x, eps.astype(np.float32), row, clip, noise, history)
            if int(row[KEEP]) & (KEEP_X0 | KEEP_EPS):
                ring[step % 4] = history.x0[0]
            if int(row[KEEP]) & KEEP_CORRECTED:
                corrected[:] = history.corrected
            if x_half_ptr:
                view(x_half_ptr, np.float16, n * elements)[:] = x
        self.gpu.enqueue(run)

    @staticmethod
    def noise(keys_ptr, n, step, stream, elements):
        """Each image's noise from its own key (seed, image index), as the kernel draws it."""
        keys = view(keys_ptr, IMAGE_KEY_DTYPE, n)
        return gaussian_noise(tuple(int(s) for s in keys["seed"]), keys["image"].astype(np.int64), step, stream,
                              (elements,)).ravel()

    def initial_noise(self, x_ptr, keys_ptr, elements, n, x_half_ptr=0, stream=None):
        def run():
            z = self.noise(keys_ptr, n, 0, STREAM_INITIAL, elements)
            view(x_ptr, np.float32, n * elements)[:] = z
            if x_half_ptr:
                view(x_half_ptr, np.float16, n * elements)[:] = z
        self.gpu.enqueue(run)


def eps_function(x, t):
    """A stand-in network: smooth in x, different at every timestep."""
    return (0.3 * np.tanh(x) + np.cos(t / 100.0)[:, None, None, None]).astype(np.float32)


class EmulatedNetwork:
    """The DeviceLoop network interface over eps_function, reading and writing `dtype` buffers."""

    image_shape = IMAGE_SHAPE

    def __init__(self, gpu, dtype=np.float16, function=eps_function):
        self.gpu, self.io_dtype, self.function = gpu, np.dtype(dtype), function
        self.buffers = {}
        self.closed = False

    def stream_handle(self):
        return 0

    def check_batch(self, n):
        pass

    def close(self):
        self.closed = True

    def __call__(self, x, t):  # the host loop's model interface
        return host_model(self.io_dtype)(x, t)

    def _buffers(self, n):
        if n not in self.buffers:
            size = n * int(np.prod(IMAGE_SHAPE)) * self.io_dtype.itemsize
            self.buffers[n] = (HostBuffer(size), HostBuffer(1000 * n * 8), HostBuffer(size))
        return self.buffers[n]

    def prepare(self, n, timesteps):
        t_table = self._buffers(n)[1]
        table = np.repeat(np.asarray(timesteps, np.int64)[:, None], n, axis=1)
        view(t_table.ptr, np.int64, table.size)[:] = table.ravel()

    def input_ptr(self, n):
        return self._buffers(n)[0].ptr

    def forward(self, n, step):
        x_in, t_table, eps = self._buffers(n)
        count = n * int(np.prod(IMAGE_SHAPE))

        def run():
            x = view(x_in.ptr, self.io_dtype, count).astype(np.float32).reshape(n, *IMAGE_SHAPE)
            t = view(t_table.ptr, np.int64, 1000 * n)[step * n:(step + 1) * n]
            view(eps.ptr, self.io_dtype, count)[:] = self.function(x, t).ravel()
        self.gpu.enqueue(run)
        return eps.ptr

    def capture(self, record):
        self.gpu.recording = []
        try:
            record()
            launches = self.gpu.recording
        finally:
            self.gpu.recording = None
        # As a capture from one stream records it: a chain of kernels.
        return RecordedLaunches(launches, graph_shape(["kernel"] * len(launches),
                                                      [(i, i + 1) for i in range(len(launches) - 1)]))


class RecordedLaunches:
    """A 'graph' on the host: the recorded launches, replayed with the arguments they were recorded with."""

    def __init__(self, launches, shape):
        self.launches, self.shape, self.closed = launches, shape, False

    def launch(self):
        assert not self.closed, "a closed graph was launched"
        for launch in self.launches:
            launch()

    def close(self):
        self.closed = True


def host_model(dtype):
    """The same network as the host loop sees it: input and output rounded to the network's dtype."""
    def model(x, t):
        x = np.asarray(x, np.float32).astype(dtype).astype(np.float32)
        return eps_function(x, t).astype(dtype).astype(np.float32)
    return model


def make_loop(dtype=np.float16, cuda_graph=True, function=eps_function):
    gpu = HostGpu()
    net = EmulatedNetwork(gpu, dtype, function)
    return DeviceLoop(net, kernel=EmulatedKernel(gpu), memory=gpu, cuda_graph=cuda_graph), gpu


SCHEDULE = NoiseSchedule.linear()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_device_loop_matches_the_host_sampler(dtype, cuda_graph):
    loop, _ = make_loop(dtype, cuda_graph)
    for sampler in (DDPMSampler(SCHEDULE, 10, clip_sample=1.0), DDIMSampler(SCHEDULE, 10, eta=0.5)):
        for seed in (0, 77):  # the second seed replays the graph recorded for the first
            expected = sampler.sample(host_model(dtype), (3, *IMAGE_SHAPE), seed=seed, progress=False)
            got = loop.sample(sampler, 3, seed=seed)
            np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)
    assert loop.captures == (1 if cuda_graph else 0)  # one graph served both samplers and both seeds


def test_graphs_are_keyed_by_batch_and_steps():
    loop, gpu = make_loop()
    loop.sample(DDIMSampler(SCHEDULE, 5), 2)
    launches = gpu.launches
    loop.sample(DDIMSampler(SCHEDULE, 5, spacing="trailing"), 2, seed=3)
    assert loop.captures == 1 and gpu.launches == launches  # a replay enqueues nothing new
    copies = gpu.host_to_device
    loop.sample(DDIMSampler(SCHEDULE, 5, spacing="trailing"), 2, seed=4)
    assert gpu.host_to_device == copies + 2  # same sampler, new seed: only the image keys and run parameters travel
    loop.sample(DDIMSampler(SCHEDULE, 6), 2)
    loop.sample(DDIMSampler(SCHEDULE, 5), 4)
    assert loop.captures == 3


def test_first_image_and_caller_noise():
    loop, _ = make_loop()
    sampler = DDPMSampler(SCHEDULE, 8)
    whole = loop.sample(sampler, 4, seed=5)
    tail = loop.sample(sampler, 2, seed=5, image_indices=[2, 3])  # images 2 and 3 alone: the same images
    np.testing.assert_allclose(tail, whole[2:], atol=1e-6)
    x_T = np.random.default_rng(0).standard_normal((2, *IMAGE_SHAPE)).astype(np.float32)
    expected = sampler.sample(host_model(np.float16), (2, *IMAGE_SHAPE), seed=5, x_T=x_T, progress=False)
    np.testing.assert_allclose(loop.sample(sampler, 2, seed=5, x_T=x_T), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_output_is_a_user_error():
    from ddpmrt.engine.errors import UserError

    loop, _ = make_loop(cuda_graph=False, function=lambda x, t: np.full(x.shape, np.inf, np.float32))
    with pytest.raises(UserError, match="NaN or Inf"):
        loop.sample(DDIMSampler(SCHEDULE, 3), 1)


class CountingTimer:
    """CudaTimer's interface on the host: milliseconds from the wall clock."""

    def start(self, stream):
        import time

        self._t = time.perf_counter()

    def stop_ms(self, stream):
        import time

        return 1e3 * (time.perf_counter() - self._t)


def test_sampler_sample_runs_a_models_device_loop():
    # What load_model(..., device="cuda") users call: Sampler.sample, not DeviceLoop.sample.
    loop, gpu = make_loop(np.float32, cuda_graph=True)
    net = loop.network
    net.device_loop = loop
    sampler = DDIMSampler(SCHEDULE, 6, eta=1.0)
    expected = sampler.sample(host_model(np.float32), (2, *IMAGE_SHAPE), seed=4, progress=False)
    for _ in range(2):  # captured, then replayed
        np.testing.assert_allclose(sampler.sample(net, (2, *IMAGE_SHAPE), seed=4, progress=False), expected, atol=2e-5)
    assert loop.captures == 1
    # A stage hook asks for per-step host timing: the host loop calls the model.
    stages = []

    @contextlib.contextmanager
    def stage(name):
        stages.append(name)
        yield

    launches = gpu.launches
    sampler.sample(net, (2, *IMAGE_SHAPE), seed=4, progress=False, stage=stage)
    assert gpu.launches == launches and stages.count("network") == 6


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_profile_device_loop_reports_the_stages_it_can_see(cuda_graph):
    from ddpmrt.engine.profiling import profile_device_loop

    loop, gpu = make_loop(cuda_graph=cuda_graph)
    net = loop.network
    net.device_loop = loop
    result = profile_device_loop(net, DDIMSampler(SCHEDULE, 4), batch=2, runs=3, warmup=1, timer=CountingTimer())
    assert result["runs"] == 3 and result["steps"] == 4
    for key in ("host_ms_per_step", "ms_per_image", "images_per_s", "gpu_ms_per_step"):
        assert result[key]["n"] == 3 and result[key]["median"] > 0, key
    if cuda_graph:
        # One graph runs network and update together: no stage times from another (eager) run.
        assert result["network_ms_per_step"] is None and result["update_ms_per_step"] is None
        assert "one CUDA graph" in result["stages"]
        assert loop.captures == 1  # the timed loops replayed one graph
        # What the graph holds: the initial noise, then network and update for each of the 4 steps.
        assert result["graph"] == {"nodes": 9, "edges": 8, "types": {"kernel": 9}, "straight_line": True}
    else:
        for key in ("network_ms_per_step", "update_ms_per_step"):
            assert result[key]["n"] == 3 and result[key]["median"] > 0, key


def test_graph_shape_tells_a_chain_from_a_fork():
    # One stream: a chain.  A library forking onto a side stream (or memsets between kernels)
    # changes what cudaGraphLaunch submits, so the bench reports both.
    assert graph_shape(["kernel", "memset", "kernel"], [(0, 1), (1, 2)]) == {
        "nodes": 3, "edges": 2, "types": {"kernel": 2, "memset": 1}, "straight_line": True}
    fork_join = graph_shape(["kernel"] * 4, [(0, 1), (0, 2), (1, 3), (2, 3)])
    assert fork_join["straight_line"] is False and fork_join["edges"] == 4
    assert graph_shape(["kernel", "kernel"], [])["straight_line"] is False  # two roots: two independent chains
    assert graph_shape([], []) == {"nodes": 0, "edges": 0, "types": {}, "straight_line": True}


def test_a_batch_of_requests_with_their_own_seeds_runs_in_the_device_loop():
    # A served batch: request A (seed 11, images 0-1) and request B (seed 5, images 0-2) in one call.
    loop, gpu = make_loop(np.float16, cuda_graph=True)
    net = loop.network
    net.device_loop = loop
    seeds, indices = (11, 11, 5, 5, 5), np.array([0, 1, 0, 1, 2])
    for sampler in (DDPMSampler(SCHEDULE, 6, clip_sample=1.0), DDIMSampler(SCHEDULE, 6, eta=1.0)):
        batched = sampler.sample(net, (5, *IMAGE_SHAPE), seed=seeds, image_indices=indices, progress=False)
        # Each request's images are the ones it gets alone, on the host or on the device.
        for seed, rows in ((11, slice(0, 2)), (5, slice(2, 5))):
            alone = sampler.sample(host_model(np.float16), (rows.stop - rows.start, *IMAGE_SHAPE), seed=seed,
                                   progress=False)
            np.testing.assert_allclose(batched[rows], alone, atol=2e-5, rtol=1e-5)
    assert loop.captures == 1  # both samplers and the seed mix replayed one graph


def test_close_frees_graphs_and_buffers():
    loop, _ = make_loop(cuda_graph=True)
    loop.sample(DDIMSampler(SCHEDULE, 3), 2)
    graph = loop._graphs[(2, 3, True)]
    assert loop.graph_shape(2, 3) == graph.shape and loop.graph_shape(4, 3) is None
    loop.close()
    assert graph.closed and loop.graph_shape(2, 3) is None
    loop.sample(DDIMSampler(SCHEDULE, 3), 2)  # usable again: a fresh capture
    assert loop.captures == 2


def test_every_gpu_backend_implements_the_device_network_contract():
    from ddpmrt.engine.backends.tensorrt_backend import TensorRTModel, _TensorRTGraph
    from ddpmrt.engine.backends.torch_backend import TorchModel, _TorchGraph

    members = [name for name in dir(DeviceNetwork) if not name.startswith("_")]
    for cls in (TensorRTModel, TorchModel):
        missing = [name for name in members if name not in ("io_dtype", "image_shape") and not callable(getattr(cls, name, None))]
        assert not missing, f"{cls.__name__} lacks {missing}"
    for cls in (_TensorRTGraph, _TorchGraph):
        assert callable(cls.launch) and callable(cls.close)
    loop, _ = make_loop()
    assert isinstance(loop.network, DeviceNetwork)
    assert isinstance(loop.network.capture(lambda: None), CapturedGraph)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_multistep_solvers_run_in_the_device_loop_and_share_its_graph(dtype):
    from ddpmrt.engine.solvers import DPMSolverSampler, IPNDMSampler, UniPCSampler

    loop, _ = make_loop(dtype, cuda_graph=True)
    samplers = (DDIMSampler(SCHEDULE, 8), DPMSolverSampler(SCHEDULE, 8, order=3),
                UniPCSampler(SCHEDULE, 8, order=3), UniPCSampler(SCHEDULE, 8, order=2, variant="bh1", clip_sample=1.0),
                IPNDMSampler(SCHEDULE, 8, order=4), IPNDMSampler(SCHEDULE, 8, order=3, clip_sample=1.0))
    for sampler in samplers:
        expected = sampler.sample(host_model(dtype), (3, *IMAGE_SHAPE), seed=2, progress=False)
        got = loop.sample(sampler, 3, seed=2)
        np.testing.assert_allclose(got, expected, atol=5e-5, rtol=1e-5)
    # The history (x̂₀ or iPNDM's ε) lives in device buffers the graph reads: one graph for every sampler.
    assert loop.captures == 1


def test_explicit_timesteps_replay_the_same_graph():
    # Timesteps as data (a tuned schedule): a new list of the same length is a new table in device
    # memory, not a new graph, and the images are the host sampler's for that list.
    from ddpmrt.engine.solvers import DPMSolverSampler

    loop, _ = make_loop(np.float32)
    for timesteps in ([999, 700, 420, 180, 30], [990, 810, 500, 260, 60]):
        for sampler in (DDIMSampler(SCHEDULE, timesteps=timesteps), DPMSolverSampler(SCHEDULE, order=3, timesteps=timesteps)):
            expected = sampler.sample(host_model(np.float32), (2, *IMAGE_SHAPE), seed=5, progress=False)
            np.testing.assert_allclose(loop.sample(sampler, 2, seed=5), expected, atol=2e-5, rtol=1e-5)
    assert loop.captures == 1


def test_a_stream_that_cannot_be_captured_runs_eagerly_and_stays_right():
    # The network's capture returns None (TensorRT said the stream is not capturable): that key runs eagerly every
    # time, with the same images, and no capture is counted or attempted again.
    loop, gpu = make_loop()
    attempts = []
    loop.network.capture = lambda record: attempts.append(1)  # returns None
    sampler = DDIMSampler(SCHEDULE, 4, eta=0.5)
    expected = sampler.sample(host_model(np.float16), (2, *IMAGE_SHAPE), seed=1, progress=False)
    for _ in range(2):
        launches = gpu.launches
        np.testing.assert_allclose(loop.sample(sampler, 2, seed=1), expected, atol=2e-5, rtol=1e-5)
        assert gpu.launches > launches  # enqueued again: nothing replayed
    assert loop.captures == 0 and len(attempts) == 1 and loop.graph_shape(2, 4) is None
    loop.close()
