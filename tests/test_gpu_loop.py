"""The device loop on a real GPU with the torch backend (skips without CUDA, torch CUDA and NVRTC).

The kernel itself is checked against NumPy in test_kernels.py; here the whole loop is: the
torch module on CUDA with the fused kernel on torch's stream, eagerly and as one CUDA graph,
against the host loop on the CPU from the same seed.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")


def _ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from cuda.bindings import nvrtc

        nvrtc.nvrtcVersion()
        return True
    except Exception:
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _ready(), reason="needs an NVIDIA GPU, PyTorch with CUDA, cuda-python and "
                                                      "NVRTC (pip install -e '.[gpu]')")]


@pytest.mark.parametrize("backend", ["torch", "inductor"])
@pytest.mark.parametrize("precision,tolerance", [("fp32", 2e-3), ("fp16", 5e-2), ("bf16", 1.5e-1)])
def test_torch_cuda_loop_matches_the_cpu(backend, precision, tolerance):
    # fp32 is IEEE fp32 (TF32 off), so the GPU agrees with the CPU to the fp32 network's rounding.
    from ddpmrt.engine import DDIMSampler, DDPMSampler, DPMSolverSampler, IPNDMSampler, UniPCSampler, load_model

    cpu = load_model("digits", precision="fp32")  # the reference: fp32 (auto is bf16 on CPUs with AMX-BF16)
    eager = load_model("digits", backend=backend, device="cuda", precision=precision)
    graphed = load_model("digits", backend=backend, device="cuda", precision=precision, cuda_graph=True)
    assert eager.device_loop is not None and cpu.device_loop is None
    assert eager.device_loop.cuda_graph == (backend == "inductor")  # inductor always replays one graph
    # The multistep solvers read the history ring (x̂₀, or iPNDM's ε) and, for UniPC, the corrected sample: the
    # kernel's every column.
    for sampler in (DDIMSampler(cpu.schedule, 20), DDPMSampler(cpu.schedule, 25), DPMSolverSampler(cpu.schedule, 8, order=3),
                    UniPCSampler(cpu.schedule, 9, order=3), IPNDMSampler(cpu.schedule, 7, order=4, clip_sample=1.0)):
        shape = (6, *cpu.image_shape)
        expected = sampler.sample(cpu, shape, seed=3, progress=False)
        got = sampler.sample(eager, shape, seed=3, progress=False)
        assert np.abs(got - expected).max() < tolerance
        if backend == "torch":
            assert eager.device_loop.captures == 0
        first = sampler.sample(graphed, shape, seed=3, progress=False)     # eager run, then capture
        replayed = sampler.sample(graphed, shape, seed=3, progress=False)  # replay
        np.testing.assert_allclose(replayed, first, atol=1e-6)
        assert np.abs(replayed - expected).max() < tolerance
    assert graphed.device_loop.captures == 5  # one per step count


def test_images_do_not_depend_on_the_batch():
    from ddpmrt.engine import DDPMSampler, load_model

    model = load_model("digits", backend="torch", device="cuda", precision="fp32")
    sampler = DDPMSampler(model.schedule, 10)
    whole = sampler.sample(model, (4, *model.image_shape), seed=9, progress=False)
    alone = sampler.sample(model, (1, *model.image_shape), seed=9, image_indices=[2], progress=False)
    assert np.abs(alone[0] - whole[2]).max() < 1e-3


def test_replayed_graphs_report_what_they_hold():
    # What the bench prints beside the host's launch time: one chain of kernels, at least the
    # initial noise plus a network call and an update per step.
    from ddpmrt.engine import DDIMSampler, load_model

    model = load_model("digits", backend="torch", device="cuda", precision="fp16", cuda_graph=True)
    sampler = DDIMSampler(model.schedule, 5)
    for _ in range(2):  # record, then replay
        sampler.sample(model, (2, *model.image_shape), seed=1, progress=False)
    shape = model.device_loop.graph_shape(2, 5)
    assert shape["types"]["kernel"] >= 1 + 2 * 5 and shape["nodes"] >= shape["types"]["kernel"]


def test_inductor_package_on_cuda(tmp_path):
    # export-engine --flavour inductor --device cuda: the AOTInductor runner inside the device loop's graph.
    from ddpmrt.engine import DDIMSampler, load_model

    from conftest import run_cli

    package = tmp_path / "digits.pt2"
    result = run_cli("export-engine", "digits", "--flavour", "inductor", "--device", "cuda", "--batch", "1:4:8",
                     "--out", str(package))
    assert result.returncode == 0, result.stderr
    assert "fp16 on cuda" in result.stdout  # fp16 by default on a GPU
    model = load_model(package)
    cpu = load_model("digits", precision="fp32")  # the reference: fp32 (auto is bf16 on CPUs with AMX-BF16)
    assert model.device_loop is not None and model.device_loop.cuda_graph
    sampler = DDIMSampler(cpu.schedule, 10)
    for n in (1, 3):  # one package, any batch in its range
        shape = (n, *cpu.image_shape)
        expected = sampler.sample(cpu, shape, seed=4, progress=False)
        first = sampler.sample(model, shape, seed=4, progress=False)     # eager run, then capture
        replayed = sampler.sample(model, shape, seed=4, progress=False)  # replay
        np.testing.assert_allclose(replayed, first, atol=1e-6)
        assert np.abs(replayed - expected).max() < 5e-2
    assert model.device_loop.captures == 2


def test_a_served_batch_with_its_own_seeds_runs_in_the_device_loop():
    # Two requests (seeds 11 and 5) in one batch: the device loop and its graph, each request's
    # images equal to the CPU's for that request alone.
    from ddpmrt.engine import DDPMSampler, load_model

    cpu = load_model("digits", backend="torch", precision="fp32")
    model = load_model("digits", device="cuda", backend="torch", precision="fp32", cuda_graph=True)
    sampler = DDPMSampler(cpu.schedule, 5, clip_sample=1.0)
    seeds, indices = (11, 11, 5, 5, 5), [0, 1, 0, 1, 2]
    for _ in range(2):  # captured, then replayed
        batched = sampler.sample(model, (5, *model.image_shape), seed=seeds, image_indices=indices, progress=False)
    assert model.device_loop.captures == 1
    for seed, rows in ((11, slice(0, 2)), (5, slice(2, 5))):
        alone = sampler.sample(cpu, (rows.stop - rows.start, *cpu.image_shape), seed=seed, progress=False)
        np.testing.assert_allclose(batched[rows], alone, atol=2e-3)
    model.close()
    assert model.device_loop is not None and model.device_loop.graph_shape(5, 5) is None  # graphs freed
