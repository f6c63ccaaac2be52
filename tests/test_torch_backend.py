"""The torch and inductor backends on the CPU: precisions, compiled numerics, what runs where.

Their CUDA paths (the device loop, CUDA graphs, TF32 off for fp32) run in test_gpu_loop.py on a GPU.
"""

import numpy as np
import pytest

from conftest import assert_user_error, run_cli, run_cli_here

torch = pytest.importorskip("torch")

from ddpmrt.engine import DDIMSampler, DDPMSampler, NoiseSchedule, UserError, load_model  # noqa: E402
from ddpmrt.engine.backends.torch_backend import TorchModel, fp32_math, resolve_precision  # noqa: E402


def test_a_module_without_parameters_runs():
    # report and demo wrap the Gaussian's closed-form ε* (buffers only) in TorchModel.
    from ddpmrt.engine.gaussian import GaussianData
    from ddpmrt.export.evaluation.quality import GaussianEpsModule

    schedule = NoiseSchedule.linear(1000)
    data = GaussianData.random((2, 2, 2), schedule, seed=3)
    module = GaussianEpsModule(data)
    model = TorchModel(module, schedule, data.image_shape, "cpu", precision="fp32")
    x, t = np.random.default_rng(0).standard_normal((3, 2, 2, 2)).astype(np.float32), np.array([0, 500, 999])
    with torch.no_grad():
        expected = module(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(model(x, t), expected, atol=1e-6)


@pytest.mark.parametrize("precision,device,fragment", [
    ("fp16", "cpu", "needs --device cuda"),
    ("tf32", "cpu", "needs --device cuda"),
    ("int8", "cpu", "int8 runs on a calibrated ONNX model"),
    ("int4", "cpu", "unknown precision"),
])
def test_precisions_a_device_cannot_run_are_user_errors(precision, device, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve_precision(precision, device)
    with pytest.raises(UserError, match=fragment):
        load_model("digits", precision=precision)


def test_precision_defaults(monkeypatch):
    from ddpmrt.engine import cpu

    assert resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(cpu, "cpu_vendor", lambda: "Intel")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert resolve_precision("auto", "cpu") == "bf16"  # a CPU with AMX-BF16 tiles
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert resolve_precision("auto", "cpu") == "fp32"  # Intel AVX512-BF16 alone: bf16 measured slower than fp32
    monkeypatch.setattr(cpu, "cpu_vendor", lambda: "AMD")
    assert resolve_precision("auto", "cpu") == "bf16"  # AMD AVX512-BF16 (Zen 5): measured faster
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("tf32", "cuda:1") == "tf32"


def test_a_checkpoints_default_backend(monkeypatch):
    from ddpmrt.engine import backends, cpu
    from ddpmrt.engine.backends import checkpoint_backend, openvino_backend

    monkeypatch.delenv("DDPMRT_CPU_COMPILE", raising=False)
    monkeypatch.setattr(cpu, "cpu_vendor", lambda: "Intel")
    monkeypatch.setattr(openvino_backend, "available", lambda: False)
    monkeypatch.setattr(backends, "inductor_compiler_missing", lambda device: None)  # Triton and a C++ compiler here
    assert checkpoint_backend("cuda") == "inductor"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}))
    assert checkpoint_backend("cpu") == checkpoint_backend("cpu", "bf16") == "inductor"
    assert checkpoint_backend("cpu", "fp32") == "torch"
    monkeypatch.setattr(openvino_backend, "available", lambda: True)  # bf16 is faster and OpenVINO is installed
    assert checkpoint_backend("cpu") == checkpoint_backend("cpu", "bf16") == "openvino"
    assert checkpoint_backend("cpu", "fp32") == "torch" and checkpoint_backend("cuda") == "inductor"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))  # auto is fp32 here
    assert checkpoint_backend("cpu") == checkpoint_backend("cpu", "bf16") == "torch"
    monkeypatch.setattr(cpu, "cpu_vendor", lambda: "AMD")  # AVX512-BF16 on Zen: bf16 is faster
    assert checkpoint_backend("cpu") == "openvino" and checkpoint_backend("cpu", "fp32") == "torch"
    monkeypatch.setattr(cpu, "cpu_vendor", lambda: "Intel")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    monkeypatch.setenv("DDPMRT_CPU_COMPILE", "0")  # eager asked for
    assert checkpoint_backend("cpu") == "torch" and checkpoint_backend("cuda") == "inductor"


def test_bf16_on_the_cpu_stays_close_to_fp32():
    fp32, bf16 = load_model("digits", precision="fp32"), load_model("digits", precision="bf16")
    sampler = DDIMSampler(fp32.schedule, 5, clip_sample=1.0)
    a = sampler.sample(fp32, (4, *fp32.image_shape), seed=2, progress=False)
    b = sampler.sample(bf16, (4, *fp32.image_shape), seed=2, progress=False)
    assert np.abs(a - b).mean() < 0.05 and np.abs(a - b).max() < 0.5


def test_fp32_math_scopes_tf32():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with fp32_math(torch, allow_tf32=False):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: the newer names agree, and reading them works
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        compiled = torch.compile(lambda a, b: a @ b)  # Inductor reads the flags while compiling
        assert compiled(torch.ones(2, 2), torch.ones(2, 2)).sum().item() == 8.0
    with fp32_math(torch, allow_tf32=True):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_the_unet_runs_with_its_time_shifts_looked_up():
    # Per call, the time MLP and the ResBlocks' projections are one row lookup (on a GPU at batch 1
    # those matrix products are separate kernels in every step), and ε is what the plain module gives.
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    from ddpmrt.export.model.unet import UNet, get_config

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(5)
    plain = UNet(get_config("tiny")).eval()
    reference = UNet(get_config("tiny")).eval()
    reference.load_state_dict(plain.state_dict())
    schedule = NoiseSchedule.linear(1000)
    model = TorchModel(plain, schedule, (1, 16, 16), "cpu", precision="fp32")
    assert model.module.time_table.shape[0] == schedule.num_train_timesteps
    x, t = np.random.default_rng(1).standard_normal((3, 1, 16, 16)).astype(np.float32), np.array([0, 333, 999])
    with CountOps() as counted:
        eps = model(x, t)
    assert counted.ops["index"] == 1 and not {"addmm", "mm", "linear", "sin"} & set(counted.ops)
    with torch.no_grad():
        expected = reference.set_execution_form("native")(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(eps, expected, atol=1e-5)


def test_a_checkpoint_on_cuda_runs_on_inductor_by_default(monkeypatch):
    # What load_model(..., device="cuda") and `ddpmrt sample --device cuda` pick, checked without a GPU.
    from ddpmrt.engine import backends

    calls = []
    monkeypatch.setitem(backends._loaders, "checkpoint", lambda path, device, **kw: calls.append((device, kw)))
    monkeypatch.setattr(backends, "inductor_compiler_missing", lambda device: None)  # Triton installed (a CUDA torch)
    load_model("digits", device="cuda")
    load_model("digits", device="cuda", backend="torch")
    load_model("digits")
    assert [kw["backend"] for _, kw in calls] == ["inductor", "torch", "torch"]  # the last: DDPMRT_CPU_COMPILE=0


@pytest.mark.slow
def test_a_compiled_network_takes_more_batch_sizes_than_dynamos_default_limit():
    # Each batch size compiles one more graph of the same forward code; Dynamo's default limit (8) made
    # the ninth a hard failure under fullgraph=True, in a process serving many batch sizes.
    import torch._dynamo

    from ddpmrt.engine.gaussian import GaussianData
    from ddpmrt.export.evaluation.quality import GaussianEpsModule

    assert torch._dynamo.config.recompile_limit < 10
    schedule = NoiseSchedule.linear(1000)
    data = GaussianData.random((1, 2, 2), schedule, seed=3)
    model = TorchModel(GaussianEpsModule(data), schedule, data.image_shape, "cpu", precision="fp32", compile=True)
    eager = TorchModel(GaussianEpsModule(data), schedule, data.image_shape, "cpu", precision="fp32")
    rng = np.random.default_rng(0)
    for n in range(1, 11):
        x, t = rng.standard_normal((n, 1, 2, 2)).astype(np.float32), np.full(n, 400)
        np.testing.assert_allclose(model(x, t), eager(x, t), atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_matches_eager_on_the_cpu():
    eager = load_model("digits", backend="torch", precision="fp32")
    compiled = load_model("digits", backend="inductor", precision="fp32")
    assert compiled.backend == "inductor" and compiled.compiled and not eager.compiled
    for sampler, n in ((DDIMSampler(eager.schedule, 4), 3), (DDPMSampler(eager.schedule, 3, clip_sample=1.0), 2)):
        shape = (n, *eager.image_shape)
        expected = sampler.sample(eager, shape, seed=5, progress=False)
        np.testing.assert_allclose(sampler.sample(compiled, shape, seed=5, progress=False), expected, atol=1e-4)
    # The device loop's path (run on CUDA inside one graph capture): x from the static buffer, t a row
    # of the timestep table.  Every step must reuse the graph compiled for the batch: a recompile
    # would run inside the capture.
    import torch._dynamo

    sampler = DDIMSampler(eager.schedule, 4)
    compiled.prepare(3, sampler.timesteps)
    eager.prepare(3, sampler.timesteps)
    # Not zeros: GroupNorm of a near-constant activation amplifies rounding (3.8e-3 apart there).
    x = torch.randn(3, *eager.image_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        compiled._io[3]["x"].copy_(x)
        eager._io[3]["x"].copy_(x)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(4):
            compiled.forward(3, step)
            eager.forward(3, step)
            torch.testing.assert_close(compiled._io[3]["eps"], eager._io[3]["eps"], atol=2e-5, rtol=0)  # fp32 sums reordered


def test_inductor_on_the_cpu_freezes_the_weights():
    # Freezing is a config patch around the first call (torch.compile's options do not take it):
    # the compiled code must read the weights as frozen constants.
    from torch._inductor.utils import run_and_get_code

    model = load_model("digits", backend="inductor")
    x = np.random.default_rng(0).standard_normal((5, *model.image_shape)).astype(np.float32)
    _, code = run_and_get_code(model, x, np.full(5, 100))
    assert code and "_frozen_param" in "".join(code)


def test_sample_cli_precision_errors(tmp_path):
    result = run_cli("sample", "digits", "--precision", "fp16", "--steps", "2", "--batch", "1", "--out",
                     str(tmp_path / "x.png"))
    assert_user_error(result, "fp16", "needs --device cuda")


@pytest.mark.slow
def test_inductor_package_builds_loads_and_samples(tmp_path):
    # export-engine --flavour inductor: an AOTInductor .pt2 a new process loads without compiling.
    from conftest import assert_user_error, run_cli

    package = tmp_path / "digits.pt2"
    # fp32 asked for: the default on the CPU is auto's precision, bf16 on a CPU with AMX-BF16.
    args = ("export-engine", "digits", "--flavour", "inductor", "--device", "cpu", "--precision", "fp32",
            "--batch", "1:4:8", "--out", str(package))
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "AOTInductor, fp32 on cpu" in result.stdout and (tmp_path / "digits.pt2.json").is_file()
    # The build says what it does before each long stage, and torch's warnings about its own internals stay out (#33).
    assert "tracing the U-Net with torch.export" in result.stdout, result.stdout
    assert "compiling it with AOTInductor for cpu in fp32" in result.stdout, result.stdout
    assert "FutureWarning" not in result.stderr, result.stderr
    assert "is up to date" in run_cli(*args).stdout  # the same call again: a cache hit
    model = load_model(package)
    assert model.backend == "inductor" and model.image_shape == (1, 16, 16)
    eager = load_model("digits", backend="torch", precision="fp32")  # the package is fp32
    sampler = DDPMSampler(eager.schedule, 4, clip_sample=1.0)
    for n in (1, 3):  # one package, any batch in its range
        shape = (n, *eager.image_shape)
        np.testing.assert_allclose(sampler.sample(model, shape, seed=2, progress=False),
                                   sampler.sample(eager, shape, seed=2, progress=False), atol=1e-4)
    # ddpmrt check runs the package through our Polygraphy runner, against PyTorch fp32 (#23).
    check = run_cli("check", "digits", str(package), "--no-export", "--out", str(tmp_path / "check"))
    if "needs Polygraphy" not in check.stderr:
        assert check.returncode == 0, check.stderr
        assert "| digits.pt2 | fp32 | 900-999 |" in (tmp_path / "check" / "check.md").read_text()
    # A damaged package or sidecar is one line, not a crash inside the loader.
    data = package.read_bytes()
    package.write_bytes(data[:-10] + bytes(10))
    with pytest.raises(UserError, match="is damaged"):
        load_model(package)
    package.write_bytes(data)
    sidecar = tmp_path / "digits.pt2.json"
    sidecar.write_text(sidecar.read_text().replace('"cpu"', '"cuda"'))
    with pytest.raises(UserError, match="damaged"):
        load_model(package)
    assert_user_error(run_cli_here("export-engine", "digits", "--flavour", "inductor", "--out", str(tmp_path / "x.plan")),
                      ".pt2")
    assert_user_error(run_cli_here("export-engine", "digits", "--flavour", "inductor", "--device", "cpu", "--precision",
                              "fp16", "--out", str(tmp_path / "y.pt2")), "needs --device cuda")


def test_a_package_is_checked_against_its_sidecar_before_torch_loads_it(tmp_path):
    # A .pt2 asked for on a device it was not built for, and a batch outside its profile: one line each,
    # from the sidecar (engine/artifacts/sidecar.py), not a crash inside AOTInductor.
    from ddpmrt.engine import NoiseSchedule
    from ddpmrt.engine.artifacts.metadata import ModelMetadata
    from ddpmrt.engine.artifacts.sidecar import PACKAGE, write_sidecar
    from ddpmrt.engine.errors import UserError

    package = tmp_path / "m.pt2"
    package.write_bytes(b"not really a package")
    metadata = ModelMetadata(schedule=NoiseSchedule.linear(), image_shape=(1, 4, 4))
    sidecar = write_sidecar(package, PACKAGE, {"metadata": metadata.to_strings(), "device": "cpu", "precision": "fp32",
                                               "torch_version": torch.__version__,
                                               "profile": {"min": 1, "opt": 2, "max": 2}, "cache_key": {}})
    with pytest.raises(UserError, match="compiled for cpu, not cuda"):
        load_model(package, device="cuda")
    model = TorchModel(torch.nn.Identity(), metadata.schedule, (1, 4, 4), "cpu", str(package))
    model.sidecar = sidecar
    with pytest.raises(UserError, match=r"batch 3 is outside m.pt2's profile \(1 to 2\)"):
        DDIMSampler(model.schedule, 2).sample(model, (3, 1, 4, 4), progress=False)


def test_load_model_honours_or_refuses_a_packages_options(tmp_path, monkeypatch):
    # A .pt2 computes in the precision it was built for (another is one line), and cuda_graph=False is
    # passed on, not replaced by the package's default of a graph.
    from ddpmrt.engine import NoiseSchedule
    from ddpmrt.engine.artifacts.metadata import ModelMetadata
    from ddpmrt.engine.artifacts.sidecar import PACKAGE, write_sidecar
    from ddpmrt.engine.backends import torch_backend
    from ddpmrt.engine.errors import UserError

    package = tmp_path / "m.pt2"
    package.write_bytes(b"not really a package")
    metadata = ModelMetadata(schedule=NoiseSchedule.linear(), image_shape=(1, 4, 4))
    write_sidecar(package, PACKAGE, {"metadata": metadata.to_strings(), "device": "cpu", "precision": "bf16",
                                     "torch_version": torch.__version__, "profile": {"min": 1, "opt": 2, "max": 2},
                                     "cache_key": {}})
    with pytest.raises(UserError, match=r"m.pt2 is a package built for bf16; it cannot run in fp32"):
        load_model(package, precision="fp32")
    calls = []
    monkeypatch.setattr(torch_backend, "load_aot_package", lambda path, **options: calls.append(options))
    load_model(package, cuda_graph=False, precision="bf16")
    load_model(package)
    load_model(package, threads=1)
    assert calls == [{"device": None, "cuda_graph": False, "threads": None},
                     {"device": None, "cuda_graph": True, "threads": None},
                     {"device": None, "cuda_graph": True, "threads": 1}]


@pytest.mark.parametrize("backend", ["torch", "inductor"])
def test_threads_reach_pytorch_on_its_backends(backend, monkeypatch):
    # --threads on the torch side is PyTorch's CPU thread count, not silently dropped: beside another job, PyTorch's
    # default of every core spins against it (a shipped model's call took 27x OpenVINO's on one busy thread).
    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    load_model("digits", backend=backend, precision="fp32", threads=1)
    load_model("digits", backend=backend, precision="fp32")
    assert asked == [1]


def test_models_close_in_a_with_block():
    with load_model("digits") as model:
        assert model.device_loop is None  # the CPU: the host loop
        images = DDIMSampler(model.schedule, 2).sample(model, (1, *model.image_shape), progress=False)
    assert images.shape == (1, 1, 16, 16) and model._io == {}


@pytest.mark.slow
def test_sample_says_when_it_waits_for_the_inductor_compile(tmp_path):
    # On a CPU where auto is bf16 a checkpoint compiles by default; the wait must not look like a hang.
    compiled = run_cli("sample", "digits", "--backend", "inductor", "--precision", "fp32", "--steps", "2", "--batch", "1",
                       "--out", str(tmp_path / "a.png"))
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    assert "compiling the network with inductor (fp32" in compiled.stderr and "inductor on cpu, fp32" in compiled.stdout
    eager = run_cli("sample", "digits", "--backend", "torch", "--steps", "2", "--batch", "1", "--out", str(tmp_path / "b.png"))
    assert eager.returncode == 0 and "compiling" not in eager.stderr


def test_sample_of_an_onnx_file_says_nothing_about_inductor(tmp_path):
    # OpenVINO's model also has a .compiled attribute (its CompiledModel); the note is for inductor only.
    onnx_path = tmp_path / "d.onnx"
    assert run_cli("export-onnx", "digits", "--out", str(onnx_path)).returncode == 0
    result = run_cli("sample", str(onnx_path), "--steps", "2", "--batch", "1", "--out", str(tmp_path / "c.png"))
    assert result.returncode == 0 and "inductor" not in result.stderr, result.stderr[-2000:]


def test_what_cannot_be_detected_is_said_not_denied(monkeypatch):
    # Off Linux NumPy's table is all there is: it never lists AMX, and before NumPy 2.4 not AVX512-BF16.
    import warnings

    from ddpmrt.engine import cpu

    monkeypatch.setattr(cpu, "_proc_cpuinfo_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    if cpu.sys.platform.startswith("linux"):
        assert cpu.undetectable_flags() == []  # /proc/cpuinfo lists every flag
    monkeypatch.setattr(cpu.sys, "platform", "win32")
    monkeypatch.setattr(cpu, "_numpy_version", lambda: (2, 4))
    assert cpu.undetectable_flags() == ["amx_bf16", "amx_int8", "amx_fp16", "amx_tile"]
    monkeypatch.setattr(cpu, "_numpy_version", lambda: (2, 3))
    assert "avx512_bf16" in cpu.undetectable_flags()
    # An Intel CPU showing AVX512-BF16 may be an AMX Xeon here: the bf16 note says it cannot tell.
    monkeypatch.setattr(cpu, "cpu_vendor", lambda: "Intel")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cpu.resolve_cpu_precision("bf16") == "bf16"
    assert any("cannot detect on win32" in str(w.message) for w in caught)
    from ddpmrt.engine.profiling import environment

    assert "amx_bf16" in environment()["cpu_flags_not_detectable"]


def test_auto_falls_back_to_eager_where_inductor_cannot_compile(monkeypatch, tmp_path, capsys):
    # Windows stands in: no C++ compiler on PATH, no Triton; the default backend must not fail at the first call.
    import importlib.util
    import shutil
    import sys
    import warnings

    from ddpmrt.engine import backends, cpu
    from ddpmrt.engine.backends import openvino_backend
    from ddpmrt.export.cli import main
    from ddpmrt.export.model.checkpoint import write_random_checkpoint

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real_find_spec(name, *a))
    monkeypatch.setattr(cpu, "bf16_is_faster", lambda: True)
    monkeypatch.setattr(openvino_backend, "available", lambda: False)
    monkeypatch.delenv("DDPMRT_CPU_COMPILE", raising=False)
    assert "MSVC's cl" in backends.inductor_compiler_missing("cpu")
    assert "Triton" in backends.inductor_compiler_missing("cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends.checkpoint_backend("cpu") == "torch" and backends.checkpoint_backend("cuda") == "torch"
    assert len(caught) == 2 and all("eagerly on torch" in str(w.message) for w in caught)
    # As a user sees it: the image is made, and the note is one line.
    checkpoint = write_random_checkpoint(tmp_path / "ckpt", "tiny")
    assert main(["sample", str(checkpoint), "--steps", "2", "--batch", "1", "--out", str(tmp_path / "x.png"), "--quiet"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["ddpmrt: note: running the checkpoint eagerly on torch: the compiled backend (inductor) needs MSVC's cl "
                   "(a Developer PowerShell) on PATH to compile for the CPU"], err
    assert (tmp_path / "x.png").is_file()
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/" + name)
    assert backends.inductor_compiler_missing("cpu") is None


def test_bench_leaves_out_inductor_where_it_cannot_compile(monkeypatch, tmp_path):
    import shutil

    from ddpmrt.export.evaluation import bench
    from ddpmrt.export.model.checkpoint import write_random_checkpoint
    from ddpmrt.export.model.sources import from_checkpoint

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    monkeypatch.delenv("CXX", raising=False)
    checkpoint = write_random_checkpoint(tmp_path / "ckpt", "tiny")
    models, missing = {}, {}
    bench._torch_models(checkpoint, from_checkpoint(checkpoint, "fp32"), tmp_path, 1, ["torch-cpu", "inductor-cpu"],
                        models, missing)
    assert list(models) == ["torch-cpu"] and "C++ compiler" in missing["inductor-cpu"]


def test_the_environment_names_the_cpu_and_memory_on_windows(monkeypatch):
    # Windows stands in: no /proc/cpuinfo, the brand name in the registry, the peak working set from psapi.
    import builtins
    import sys
    import types

    from ddpmrt.engine import profiling

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: (_ for _ in ()).throw(FileNotFoundError(path))
                        if str(path) == "/proc/cpuinfo" else real_open(path, *a, **k))
    monkeypatch.setattr(sys, "platform", "win32")
    class Key:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.SimpleNamespace(HKEY_LOCAL_MACHINE=1, OpenKey=lambda root, path: Key(),
                                 QueryValueEx=lambda k, name: ("AMD EPYC 9R45 96-Core Processor  ", 1))
    monkeypatch.setitem(sys.modules, "winreg", fake)
    assert profiling._cpu_name() == "AMD EPYC 9R45 96-Core Processor"
    real_peak = profiling._windows_peak_working_set_mb
    monkeypatch.setattr(profiling, "_windows_peak_working_set_mb", lambda: 123.0)
    assert profiling.peak_rss_mb() == 123.0
    assert real_peak() is None  # off Windows there is no psapi: None, not an error
