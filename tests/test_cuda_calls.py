"""The GPU code calls cuda-python as documented, checked here where no GPU can run it.

Every call to a CUDA runtime (`cuda...`), driver (`cu...`) or NVRTC (`nvrtc...`) function in the
runtime, the export side and the GPU benchmarks must name a function that cuda-python has, with
arguments that its signature accepts: a typo or a changed signature in code that only runs on a
GPU fails here instead of on the first GPU.
"""

import ast
import inspect
import re
from pathlib import Path

import pytest

bindings = {name: pytest.importorskip(f"cuda.bindings.{name}") for name in ("runtime", "driver", "nvrtc")}

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("export/**/*.py"), *ROOT.glob("benchmarks/*.py")])
CUDA_NAME = re.compile(r"^(cuda|cu|nvrtc)[A-Z]\w*$")


def _module_for(name: str):
    if name.startswith("nvrtc"):
        return bindings["nvrtc"]
    return bindings["runtime"] if name.startswith("cuda") else bindings["driver"]


def _cuda_calls():
    """(file:line, function name, positional count, keyword names) of every cuda-python call."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and CUDA_NAME.match(node.func.attr):
                if any(isinstance(a, ast.Starred) for a in node.args):
                    continue
                yield (f"{path.relative_to(ROOT)}:{node.lineno}", node.func.attr, len(node.args),
                       [k.arg for k in node.keywords])


def test_the_gpu_code_calls_cuda_python():
    calls = list(_cuda_calls())
    names = {name for _, name, _, _ in calls}
    # The calls the GPU paths depend on are found (the scan itself works).
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaStreamBeginCapture", "cudaGraphInstantiate", "cudaGraphLaunch",
            "cudaEventElapsedTime", "cuLaunchKernel", "cuModuleLoadData", "nvrtcCompileProgram"} <= names


@pytest.mark.parametrize("where,name,positional,keywords", list(_cuda_calls()), ids=lambda v: str(v))
def test_cuda_call_matches_the_binding(where, name, positional, keywords):
    function = getattr(_module_for(name), name, None)
    assert function is not None, f"{where}: cuda-python has no {name}"
    if inspect.isclass(function):  # a handle type (cudaGraph_t, cudaStream_t) made from an address
        assert positional <= 1 and not keywords, f"{where}: {name} takes one address"
        return
    signature = inspect.signature(function)
    try:
        signature.bind(*range(positional), **dict.fromkeys(keywords))
    except TypeError as exc:
        pytest.fail(f"{where}: {name}{signature} does not accept {positional} positional arguments "
                    f"and {keywords or 'no'} keywords: {exc}")


class _FakeRuntime:
    """cudart's capture calls as (err, value) tuples, recording what ran: enough for the capture's bookkeeping."""

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, end_status=0):
        self.calls, self.end_status = [], end_status
        self.gc_enabled_while_capturing = None

    def cudaStreamBeginCapture(self, stream, mode):
        import gc

        self.calls.append("begin")
        self.gc_enabled_while_capturing = gc.isenabled()
        return (0,)

    def cudaStreamEndCapture(self, stream):
        self.calls.append("end")
        return (self.end_status, 77)

    def cudaGraphInstantiate(self, graph, flags):
        self.calls.append("instantiate")
        return (0, 88)

    def cudaGraphDestroy(self, graph):
        self.calls.append(f"destroy {graph}")
        return (0,)


def test_a_capture_pauses_the_collector_and_a_failing_record_keeps_its_own_error(monkeypatch):
    import gc
    import types

    from ddpmrt.engine.backends import tensorrt_backend
    from ddpmrt.engine.gpu import cuda_runtime

    monkeypatch.setattr(cuda_runtime, "check", lambda result, what: result[1] if len(result) > 1 else None)
    monkeypatch.setattr(tensorrt_backend, "check", cuda_runtime.check)
    monkeypatch.setattr(cuda_runtime, "describe_graph", lambda graph: (_ for _ in ()).throw(RuntimeError("lossy query")))
    fake = _FakeRuntime()
    monkeypatch.setattr(tensorrt_backend, "cudart", lambda: fake)
    model = types.SimpleNamespace(stream=5, _context=types.SimpleNamespace())  # full TensorRT: no capturable query
    assert gc.isenabled()
    graph = tensorrt_backend.TensorRTModel.capture(model, lambda: None)
    # Collector off during the capture, on after; the graph is destroyed once instantiated; an unreadable graph
    # shape is None, not a failed sample.
    assert fake.gc_enabled_while_capturing is False and gc.isenabled()
    assert fake.calls == ["begin", "end", "instantiate", "destroy 77"] and graph.shape is None and graph.graph_exec == 88

    class Boom(Exception):
        pass

    fake = _FakeRuntime(end_status=901)  # cudaErrorStreamCaptureInvalidated, as after a failed enqueue
    monkeypatch.setattr(tensorrt_backend, "cudart", lambda: fake)
    with pytest.raises(Boom):
        tensorrt_backend.TensorRTModel.capture(model, lambda: (_ for _ in ()).throw(Boom()))
    assert fake.calls == ["begin", "end", "destroy 77"] and gc.isenabled()


def test_an_engine_whose_io_differs_from_its_sidecar_is_one_line():
    import types

    import numpy as np

    from ddpmrt.engine.backends.tensorrt_backend import check_engine_io
    from ddpmrt.engine.errors import UserError

    def enum(name):
        return types.SimpleNamespace(name=name)

    def engine(io):  # the calls NVIDIA's common_runtime.py makes on an ICudaEngine
        names = list(io)
        return types.SimpleNamespace(num_io_tensors=len(io), get_tensor_name=names.__getitem__,
                                     get_tensor_mode=lambda n: enum(io[n][0]), get_tensor_dtype=lambda n: enum(io[n][1]))

    good = {"x": ("INPUT", "HALF"), "t": ("INPUT", "INT64"), "eps": ("OUTPUT", "HALF")}
    check_engine_io(engine(good), None, np.float16, "d.plan")
    for bad, fragment in (({**good, "eps": ("OUTPUT", "FLOAT")}, "eps output float32"),
                          ({"x": good["x"], "t": ("INPUT", "INT32"), "eps": good["eps"]}, "t input int32"),
                          ({"sample": good["x"], "t": good["t"], "eps": good["eps"]}, "sample input float16")):
        with pytest.raises(UserError, match=fragment) as caught:
            check_engine_io(engine(bad), None, np.float16, "d.plan")
        assert "rebuild with export-engine" in str(caught.value) and "\n" not in str(caught.value)


class _FakeContext:
    def __init__(self, capturable=True):
        self.addresses, self.shapes, self.capturable = {}, [], capturable

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        self.shapes.append((name, tuple(shape)))
        return True

    def is_stream_capturable(self, stream):
        return self.capturable


def test_tensorrt_graphs_get_a_context_per_batch_and_t_keeps_one_address(monkeypatch):
    import types
    import warnings

    from ddpmrt.engine.backends import tensorrt_backend

    made = []

    def new_context():
        made.append(_FakeContext())
        return made[-1]

    buffer = lambda ptr: types.SimpleNamespace(ptr=ptr)  # noqa: E731
    model = object.__new__(tensorrt_backend.TensorRTModel)
    model.__dict__.update(cuda_graph=True, image_shape=(1, 4, 4), sidecar={"profile": {"min": 1, "opt": 2, "max": 8}},
                          path=tensorrt_backend.Path("d.plan"), x_device=buffer(1000), t_call=buffer(2000),
                          eps_device=buffer(3000), t_device=buffer(10_000), stream=7, _batch=None, _contexts={},
                          flavour=types.SimpleNamespace(name="tensorrt-rtx"))
    model._context = new_context()
    model._new_context = new_context
    monkeypatch.setattr(tensorrt_backend, "check_batch", lambda sidecar, n, name: None)
    for n in (2, 4, 2, 4):
        model._set_batch(n)
    # One context per batch size, each shaped once and bound to the same fixed addresses.
    assert len(made) == 2 and model._contexts == {2: made[0], 4: made[1]} and model._context is made[1]
    assert [c.shapes for c in made] == [[("x", (2, 1, 4, 4)), ("t", (2,))], [("x", (4, 1, 4, 4)), ("t", (4,))]]
    assert all(c.addresses == {"x": 1000, "t": 2000, "eps": 3000} for c in made)
    # A loop step copies its row of timesteps to t's one address instead of re-binding t.
    copies, runs = [], []
    fake_rt = types.SimpleNamespace(cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyDeviceToDevice=3),
                                    cudaMemcpyAsync=lambda dst, src, size, kind, stream: copies.append((dst, src, size)) or (0,))
    monkeypatch.setattr(tensorrt_backend, "cudart", lambda: fake_rt)
    monkeypatch.setattr(tensorrt_backend, "check", lambda result, what: None)
    model._execute = lambda: runs.append(model._context)
    assert model.forward(4, 3) == 3000
    assert copies == [(2000, 10_000 + 3 * tensorrt_backend._row_bytes(4), 32)] and made[1].addresses["t"] == 2000
    # TensorRT says the stream cannot be captured: no graph, a note, and the loop runs eagerly.
    made[1].capturable = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model.capture(lambda: None) is None
    assert "runs eagerly" in str(caught[0].message)
