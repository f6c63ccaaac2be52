"""A fuzzed bad-input suite over load_model, the samplers and the command line, deterministic by seed.

Every case must end in a UserError (the library) or a one-line `ddpmrt: error:` with exit status 2
(the CLI): never a traceback, a hang (each case runs under an alarm) or a crash, and never a file
left behind.  The cases, generated from SEED:

| class | cases | how |
| --- | --- | --- |
| `.onnx` (the shipped digits model, exported fp32), on load_model's default backend (OpenVINO where installed) | 50 | 20 truncations, 30 single-bit flips anywhere |
| the same 50 damaged `.onnx` files on ONNX Runtime | 50 | the same mutations |
| `.plan` engine (TensorRT-RTX, built for sm86) | 25 | 10 truncations, 15 bit flips anywhere |
| `.plan.json` sidecar | 30 | 10 truncations, 20 bit flips anywhere |
| checkpoint `config.json` | 35 | 10 truncations, 25 bit flips anywhere |
| checkpoint `model.safetensors` | 35 | 10 truncations, 25 bit flips anywhere |
| `.npz` data set for `train --dataset` | 20 | 5 truncations, 15 bit flips in the compressed array (zip timestamps and other fields no reader uses are left alone: flipping them leaves the same data) |
| `.npy` data set | 20 | 5 truncations, 15 bit flips in the header (dtype, shape, order); a flipped pixel is a different valid image, so the payload is not flipped |
| PNG images of a folder data set | 20 | 5 truncations, 15 bit flips anywhere (every chunk carries a CRC) |
| arrays passed to samplers and models | 59 | x_T, x and t of wrong shape, dtype, rank or value; sampler arguments; image indices; sample shapes |
| CLI arguments | 84 | out-of-range and non-numeric values of every numeric option of sample, bench, report, export-onnx, export-engine and train |
| a full disk | 11 | every command writing into a small tmpfs with 16 KiB free (`sample` .png and .npz, `export-engine` also with room for its ONNX but not the engine, `train` also with room for part of its checkpoint): one line naming the path, nothing partial or empty left |
| a read-only folder | 7 | every command writing into a read-only tmpfs |
| permission denied | 7 | every command run as user `nobody`, writing into a folder it may not write in |
| hostile request bodies for `POST /sample` | 84 | nesting to 10^5, bodies over the size limit (declared, chunked), bytes that are not UTF-8, JSON that is not an object, nested or non-finite values, and 30 byte-level mutations of good bodies: each 400 or 413 with one line (or 200 where a mutation is still a good body), never 500 |
| total | 537 | |
"""

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpmrt.engine import DDIMSampler, DDPMSampler, UserError, load_model
from ddpmrt.export.cli import main

SEED = 20261122
CASE_SECONDS = 120


@contextlib.contextmanager
def deadline(seconds=CASE_SECONDS):
    """A hang becomes a failure (POSIX); elsewhere the case simply runs."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def timeout(signum, frame):
        raise TimeoutError(f"case still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- mutations ---------------------------------------------------------------------------------

def truncations(size: int, count: int, rng) -> list[int]:
    """Lengths to cut a file to: empty, one byte, and points spread over the file."""
    points = [0, 1] + sorted(int(v) for v in rng.integers(2, size, count - 2))
    return points[:count]


def flips(lo: int, hi: int, count: int, rng) -> list[tuple[int, int]]:
    """(byte offset, bit) pairs in [lo, hi)."""
    return [(int(o), int(b)) for o, b in zip(rng.integers(lo, hi, count), rng.integers(0, 8, count))]


def mutated(data: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "truncate":
        return data[:arg]
    offset, bit = arg
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def file_mutations(size: int, n_truncate: int, n_flip: int, seed: int, region=None):
    rng = np.random.default_rng(seed)
    lo, hi = region or (0, size)
    return ([("truncate", n) for n in truncations(size, n_truncate, rng)]
            + [("flip", f) for f in flips(lo, hi, n_flip, rng)])


# -- the files mutated ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """One intact copy of every file kind, made once."""
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.export.conversion.onnx_export import export_onnx
    from ddpmrt.export.model.sources import from_checkpoint

    root = tmp_path_factory.mktemp("originals")
    checkpoint = root / "checkpoint"
    shutil.copytree(resolve_model_path("digits"), checkpoint)
    source = from_checkpoint(checkpoint, "fp32")
    export_onnx(source.module, source.metadata, root / "model.onnx")
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16), dtype=np.uint8)
    np.savez_compressed(root / "data.npz", images=images)
    np.save(root / "data.npy", images)
    from PIL import Image

    (root / "pngs").mkdir()
    for i in range(2):
        Image.fromarray(images[i]).save(root / "pngs" / f"{i}.png")
    files = {"checkpoint": checkpoint, "onnx": root / "model.onnx", "npz": root / "data.npz", "npy": root / "data.npy",
             "pngs": root / "pngs"}
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return files
    from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
    from ddpmrt.export.conversion.engine_build import BatchProfile, build_engine
    from ddpmrt.export.model.sources import sha256_file

    source16 = from_checkpoint(checkpoint, "fp16")
    export_onnx(source16.module, source16.metadata, root / "engine.onnx")
    build_engine(root / "engine.onnx", root / "engine.plan", source16.metadata, sha256_file(root / "engine.onnx"),
                 import_flavour("tensorrt-rtx"), BatchProfile(1, 2, 4), ["sm86"])
    files["plan"] = root / "engine.plan"
    return files


def npz_member_region(path) -> tuple[int, int]:
    """Byte range of the compressed array inside the .npz (zip) file."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.getinfo("images.npy")
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len)
    return start, start + info.compress_size


def npy_header_region(path) -> tuple[int, int]:
    data = open(path, "rb").read(16)
    header_len = int(np.frombuffer(data[8:10], "<u2")[0])
    return 0, 10 + header_len


FILE_CLASSES = {  # kind: (truncations, flips, seed offset)
    "onnx": (20, 30, 1), "onnx-onnxruntime": (20, 30, 1), "plan": (10, 15, 2), "sidecar": (10, 20, 3), "config": (10, 25, 4),
    "weights": (10, 25, 5), "npz": (5, 15, 6), "npy": (5, 15, 7), "png": (5, 15, 8),
}


def file_cases():
    for kind, (n_truncate, n_flip, offset) in FILE_CLASSES.items():
        for index in range(n_truncate + n_flip):
            yield pytest.param(kind, index, offset, id=f"{kind}-{index}")


def target_file(kind: str, work, originals):
    """Copy what `kind` damages into `work`; return (the file to damage, what to load)."""
    if kind in ("onnx", "onnx-onnxruntime"):
        path = work / "model.onnx"
        shutil.copy(originals["onnx"], path)
        return path, path
    if kind in ("plan", "sidecar"):
        if "plan" not in originals:
            pytest.skip("needs TensorRT-RTX to build the engine these cases damage (pip install tensorrt-rtx)")
        plan = work / "engine.plan"
        shutil.copy(originals["plan"], plan)
        shutil.copy(str(originals["plan"]) + ".json", str(plan) + ".json")
        return (plan if kind == "plan" else plan.with_name(plan.name + ".json")), plan
    if kind in ("config", "weights"):
        checkpoint = work / "checkpoint"
        shutil.copytree(originals["checkpoint"], checkpoint)
        return checkpoint / ("config.json" if kind == "config" else "model.safetensors"), checkpoint
    if kind in ("npz", "npy"):
        path = work / f"data.{kind}"
        shutil.copy(originals[kind], path)
        return path, path
    folder = work / "pngs"
    shutil.copytree(originals["pngs"], folder)
    return folder / "1.png", folder


@pytest.mark.parametrize("kind,index,offset", list(file_cases()))
def test_damaged_files(kind, index, offset, originals, tmp_path):
    damaged, load_target = target_file(kind, tmp_path, originals)
    data = damaged.read_bytes()
    region = {"npz": lambda: npz_member_region(damaged), "npy": lambda: npy_header_region(damaged)}.get(kind)
    n_truncate, n_flip, _ = FILE_CLASSES[kind]
    mutation = file_mutations(len(data), n_truncate, n_flip, SEED + offset, region() if region else None)[index]
    damaged.write_bytes(mutated(data, mutation))
    before = sorted(tmp_path.rglob("*"))
    with deadline(), pytest.raises(UserError) as error:
        if kind in ("npz", "npy", "png"):
            from ddpmrt.export.training.data import load_dataset

            load_dataset(str(load_target))
        else:
            # .onnx loads on OpenVINO where installed (load_model's default on the CPU); the same damage
            # is loaded with ONNX Runtime too.
            model = load_model(load_target, backend="onnxruntime" if kind == "onnx-onnxruntime" else "auto")
            # Where a flip left a file that loads, sampling must still fail before a wrong image appears.
            DDIMSampler(model.schedule, 2).sample(model, (1, *model.image_shape), progress=False)
    assert str(error.value) and "\n" not in str(error.value)
    assert sorted(tmp_path.rglob("*")) == before, "the failed load left a file behind"


# -- arrays passed to samplers and models ---------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_model(originals):
    return load_model(originals["onnx"], threads=1)


def array_cases():
    """(name, callable(model) -> anything): each must raise UserError."""
    rng = np.random.default_rng(SEED + 20)
    shape = (2, 1, 16, 16)
    good_x = rng.standard_normal(shape).astype(np.float32)
    good_t = np.array([10, 500])
    bad_arrays = {
        "x-rank3": good_x[0], "x-rank5": good_x[None], "x-channels": np.zeros((2, 3, 16, 16), np.float32),
        "x-height": np.zeros((2, 1, 15, 16), np.float32), "x-empty": np.zeros((0, 1, 16, 16), np.float32),
        "x-nan": np.full(shape, np.nan, np.float32), "x-inf": np.full(shape, np.inf, np.float32),
        "x-complex": good_x.astype(np.complex64), "x-string": np.full(shape, "a"), "x-object": np.full(shape, None),
        "x-bool": good_x > 0, "x-list-ragged": [[1.0], [1.0, 2.0]],
    }
    bad_t = {
        "t-float": np.array([10.5, 3.2]), "t-negative": np.array([-1, 5]), "t-too-large": np.array([1000, 5]),
        "t-shape": np.array([[10, 5]]), "t-length": np.array([10, 5, 7]), "t-string": np.array(["a", "b"]),
        "t-nan": np.array([np.nan, 1.0]), "t-huge": np.array([2 ** 62, 1]),
    }
    cases = []
    for name, x in bad_arrays.items():
        cases.append((f"model-call-{name}", lambda m, x=x: m(x, good_t)))
    for name, t in bad_t.items():
        cases.append((f"model-call-{name}", lambda m, t=t: m(good_x, t)))
    sampler = lambda m: DDIMSampler(m.schedule, 3)  # noqa: E731
    for name, x in bad_arrays.items():
        if name != "x-empty":
            cases.append((f"x_T-{name}", lambda m, x=x: sampler(m).sample(m, shape, x_T=x, progress=False)))
    for name, s in {"shape-rank": (2, 16, 16), "shape-zero": (0, 1, 16, 16), "shape-negative": (-2, 1, 16, 16),
                    "shape-image": (2, 1, 8, 8), "shape-float": (2.5, 1, 16, 16), "shape-string": ("2", 1, 16, 16)}.items():
        cases.append((name, lambda m, s=s: sampler(m).sample(m, s, progress=False)))
    for name, indices in {"indices-length": [0], "indices-negative": [-1, 0], "indices-huge": [2 ** 40, 0],
                          "indices-float": [0.5, 1.0], "indices-string": ["a", "b"], "indices-2d": [[0, 1]]}.items():
        cases.append((name, lambda m, i=indices: sampler(m).sample(m, shape, image_indices=i, progress=False)))
    for name, seed in {"seed-negative": -1, "seed-huge": 2 ** 64, "seed-float": 1.5, "seed-string": "a"}.items():
        cases.append((name, lambda m, s=seed: sampler(m).sample(m, shape, seed=s, progress=False)))
    for name, make in {
        "ddim-steps-zero": lambda m: DDIMSampler(m.schedule, 0), "ddim-steps-float": lambda m: DDIMSampler(m.schedule, 2.5),
        "ddim-steps-huge": lambda m: DDIMSampler(m.schedule, 10 ** 6), "ddim-eta-negative": lambda m: DDIMSampler(m.schedule, 3, eta=-1),
        "ddim-eta-nan": lambda m: DDIMSampler(m.schedule, 3, eta=float("nan")),
        "ddim-eta-string": lambda m: DDIMSampler(m.schedule, 3, eta="1"),
        "ddim-spacing": lambda m: DDIMSampler(m.schedule, 3, spacing="cubic"),
        "ddim-clip-negative": lambda m: DDIMSampler(m.schedule, 3, clip_sample=-1.0),
        "ddim-clip-nan": lambda m: DDIMSampler(m.schedule, 3, clip_sample=float("nan")),
        "ddpm-variance": lambda m: DDPMSampler(m.schedule, 3, variance="learned"),
        "ddpm-steps-negative": lambda m: DDPMSampler(m.schedule, -3),
        "step-index": lambda m: DDIMSampler(m.schedule, 3).step(good_x, good_x, 7),
    }.items():
        cases.append((name, make))
    return cases


ARRAY_CASES = array_cases()


@pytest.mark.parametrize("name", [name for name, _ in ARRAY_CASES])
def test_bad_arrays(name, onnx_model):
    call = dict(ARRAY_CASES)[name]
    with deadline(), pytest.raises(UserError) as error:
        call(onnx_model)
    assert "\n" not in str(error.value)


# -- command-line arguments --------------------------------------------------------------------

NUMERIC_OPTIONS = {  # command prefix: options and the values that must be refused
    ("sample", "digits", "--quiet"): ["--steps", "--batch", "--eta", "--seed", "--clip-sample", "--threads"],
    ("bench", "digits", "--no-diffusers", "--quiet"): ["--batch", "--steps", "--runs", "--warmup", "--threads",
                                                       "--peak-tflops"],
    ("report", "digits", "--quiet"): ["--samples", "--threads"],
    ("export-onnx", "digits"): ["--opset", "--batch", "--calibration-images", "--calibration-steps"],
    ("export-engine", "digits", "--flavour", "tensorrt-rtx", "--targets", "sm86"): ["--batch", "--optimization-level",
                                                                                     "--opset"],
    ("train", "--dataset", "digits", "--no-progress"): ["--iters", "--batch-size", "--image-size", "--lr", "--ema-decay",
                                                         "--grad-clip", "--seed"],
}
BAD_VALUES = ["abc", "", "-1", "0", "nan", "inf", "1e30", "99999999999999999999"]
OUT = {"sample": "o.png", "export-onnx": "o.onnx", "export-engine": "o.plan"}
# Values that are in range for an option (so not a bad case): warm-up 0, seed 0, eta 0, clip 0 (off),
# optimization level 0, --runs/--warmup/--samples... as listed.
ALLOWED = {("--warmup", "0"), ("--seed", "0"), ("--eta", "0"), ("--clip-sample", "0"), ("--optimization-level", "0")}


def cli_cases():
    rng = np.random.default_rng(SEED + 30)
    cases = []
    for prefix, options in NUMERIC_OPTIONS.items():
        for option in options:
            values = [v for v in BAD_VALUES if (option, v) not in ALLOWED]
            for value in rng.choice(values, size=min(3, len(values)), replace=False):
                cases.append(pytest.param(prefix, option, str(value), id=f"{prefix[0]}{option}={value or 'empty'}"))
    return cases


@pytest.mark.parametrize("prefix,option,value", cli_cases())
def test_bad_cli_values(prefix, option, value, tmp_path, capsys):
    out = tmp_path / OUT.get(prefix[0], "out")
    argv = [*prefix, option, value, "--out", str(out)]
    if prefix[0] == "train":
        argv += ["--iters", "1"] if option != "--iters" else []
    with deadline():
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, (argv, err)
    assert len(err) == 1 and err[0].startswith("ddpmrt: error:"), (argv, err)
    assert list(tmp_path.iterdir()) == [], f"{argv} left {list(tmp_path.iterdir())}"


def test_case_count():
    """The docstring's table is the suite: at least 500 cases."""
    files = sum(t + f for t, f, _ in FILE_CLASSES.values())
    total = (files + len(ARRAY_CASES) + len(cli_cases()) + len(FULL_DISK_CASES) + len(READ_ONLY_CASES)
             + len(PERMISSION_CASES) + len(BODY_CASES))
    assert total >= 500, total
    assert f"| total | {total} |" in sys.modules[__name__].__doc__, total



# -- write faults: a full disk, a read-only folder -----------------------------------------------------

def _mount_tmpfs(folder, size: str, read_only: bool = False):
    """A small tmpfs at `folder` (needs root or CAP_SYS_ADMIN, as the CI machine has); None where it cannot."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return folder if result.returncode == 0 else None


@contextlib.contextmanager
def small_disk(tmp_path, free_bytes: int, size: str = "64m", read_only: bool = False):
    """A tmpfs of `size` with `free_bytes` left free (a filler file takes the rest), or read-only."""
    import subprocess

    disk = _mount_tmpfs(tmp_path / "disk", size, read_only)
    if disk is None:
        pytest.skip("needs to mount a small tmpfs (root or CAP_SYS_ADMIN, as on the CI machine) to fill a disk")
    try:
        if not read_only:
            free = shutil.disk_usage(disk).free
            with open(disk / "filler", "wb") as f:
                f.truncate(0)
                f.write(b"\0" * max(0, free - free_bytes))
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


QUICK = {  # each command, cut to seconds of work (the fault is in the writing)
    "train": ["train", "--dataset", "digits", "--iters", "3", "--batch-size", "4", "--sample-every", "0",
              "--no-progress", "--out", "{disk}/run"],
    "sample-png": ["sample", "digits", "--steps", "2", "--batch", "64", "--quiet", "--out", "{disk}/x.png"],
    "sample-npz": ["sample", "digits", "--steps", "2", "--batch", "1024", "--quiet", "--out", "{disk}/new/x.npz"],
    "sample-npz-existing": ["sample", "digits", "--steps", "2", "--batch", "1024", "--quiet", "--out", "{disk}/x.npz"],
    "export-onnx": ["export-onnx", "digits", "--out", "{disk}/d.onnx"],
    "export-engine": ["export-engine", "digits", "--flavour", "tensorrt-rtx", "--targets", "sm86", "--batch", "1:2:4",
                      "--out", "{disk}/d.plan"],
    "bench": ["bench", "digits", "--batch", "1", "--steps", "1", "--runs", "1", "--warmup", "0", "--no-diffusers",
              "--backends", "onnxruntime-cpu", "--no-startup", "--quiet", "--out", "{disk}/b"],
    "report": ["report", "digits", "--samplers", "ddim:2", "--samples", "8", "--quiet", "--out", "{disk}/r"],
    "demo": ["demo", "--samples", "4", "--quiet", "--out", "{disk}/demo"],
}
NEEDS = {"export-engine": "tensorrt_rtx", "demo": "tensorrt_rtx"}
# (case, command, bytes left free): 16 KiB stops every command at its first file; the larger rooms let the
# first files through (the engine's fp16 ONNX, the training state) and stop a later one.
FULL_DISK_CASES = [(name, name, 16 << 10) for name in QUICK if name != "sample-npz-existing"] + [
    ("export-engine-onnx-fits", "export-engine", 3 << 20),
    ("train-state-fits", "train", 20 << 20),
    ("sample-npz-into-an-existing-folder", "sample-npz-existing", 16 << 10),
]
READ_ONLY_CASES = ["train", "sample-png", "export-onnx", "export-engine", "bench", "report", "demo"]


def _run_fault_case(command: str, disk, capsys) -> list[str]:
    pytest.importorskip(NEEDS.get(command, "numpy"), reason="needs TensorRT-RTX: pip install -e '.[tensorrt-rtx]'")
    argv = [a.format(disk=disk) for a in QUICK[command]]
    before = set(p.name for p in disk.iterdir())
    with deadline(300):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, (argv, err)
    assert len(err) == 1 and err[0].startswith("ddpmrt: error:"), (argv, err)
    return err[0], before


def _files(folder):
    return sorted(p for p in folder.rglob("*"))


@pytest.mark.parametrize("case,command,free", FULL_DISK_CASES, ids=[c[0] for c in FULL_DISK_CASES])
def test_a_full_disk(case, command, free, tmp_path, capsys):
    with small_disk(tmp_path, free) as disk:
        line, before = _run_fault_case(command, disk, capsys)
        assert "No space left on device" in line and str(disk) in line, line
        left = [p for p in _files(disk) if p.name not in before]
        assert not [p for p in left if p.is_file() and p.stat().st_size == 0], f"empty files left: {left}"
        assert not [p for p in left if p.name.endswith(".tmp")], f"temporary files left: {left}"
        if command == "train":
            # A run keeps the checkpoint files it completed (a resumable training state), nothing else.
            assert {p.name for p in left} <= {"run", "training_state.pt"}, left
        else:
            assert left == [], f"{command} left {left}"


@pytest.mark.parametrize("command", READ_ONLY_CASES)
def test_a_read_only_folder(command, tmp_path, capsys):
    with small_disk(tmp_path, 0, size="1m", read_only=True) as disk:
        line, _ = _run_fault_case(command, disk, capsys)
        assert "cannot write" in line and "Read-only file system" in line, line
        assert _files(disk) == []


PERMISSION_CASES = READ_ONLY_CASES


@pytest.mark.parametrize("command", PERMISSION_CASES)
def test_permission_denied(command):
    import subprocess

    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (as on the CI machine) to run a command as another user")
    pytest.importorskip(NEEDS.get(command, "numpy"), reason="needs TensorRT-RTX: pip install -e '.[tensorrt-rtx]'")
    import tempfile

    # pytest's own temporary folders are root's alone (0700): nobody could not even reach them.
    base = Path(tempfile.mkdtemp(prefix="ddpmrt-permission-"))
    try:
        os.chmod(base, 0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)  # root's folder: nobody may not write in it
        argv = [a.format(disk=locked) for a in QUICK[command]]
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                                 "import sys; from ddpmrt.export.cli import main; sys.exit(main())", *argv],
                                capture_output=True, text=True, timeout=CASE_SECONDS, cwd=base,
                                env={**os.environ, "HOME": str(locked)})
        err = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (argv, result.stderr[-2000:])
        assert len(err) == 1 and err[0].startswith("ddpmrt: error:") and "Permission denied" in err[0], err
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- hostile request bodies ------------------------------------------------------------------------

def body_cases():
    """(name, Content-Length header or None, the body as a list of chunks)."""
    import json

    def whole(raw):
        return str(len(raw)), [raw]
    cases = []
    for depth in (2, 3, 10, 100, 1000, 3000, 100_000):
        cases.append((f"arrays-{depth}", *whole(b"[" * depth + b"]" * depth)))
        cases.append((f"objects-{depth}", *whole(b'{"a":' * depth + b"1" + b"}" * depth)))
    cases.append(("nested-in-field", *whole(b'{"steps": [[[[50]]]]}')))
    cases.append(("object-in-field", *whole(b'{"seed": {"a": 1}}')))
    cases.append(("array-in-field", *whole(b'{"steps": [50]}')))
    cases.append(("unclosed-deep", *whole(b'{"n": ' + b"[" * 5000)))
    cases.append(("declared-200MB", str(200 << 20), [b"{}"]))          # refused on the header alone
    cases.append(("declared-bad", "12abc", [b"{}"]))
    cases.append(("over-limit", *whole(b'{"seed": 1' + b" " * 5000 + b"}")))
    cases.append(("chunked-over-limit", None, [b'{"seed": '] + [b" " * 1024] * 8 + [b"1}"]))
    cases.append(("chunked-10MB", None, [b"[" * (1 << 20)] * 10))
    for name, raw in [("empty", b""), ("space", b"   "), ("null", b"null"), ("true", b"true"), ("number", b"42"),
                      ("string", b'"steps"'), ("flat-array", b"[1, 2]"), ("not-utf8", b'{"seed": "\xff\xfe"}'),
                      ("utf16", '{"n": 1}'.encode("utf-16")), ("nul", b'{"n": 1}\x00'), ("bom", b'\xef\xbb\xbf{"n": 1}'),
                      ("nan", b'{"steps": NaN}'), ("infinity", b'{"eta": Infinity}'), ("1e999", b'{"steps": 1e999}'),
                      ("huge-int", b'{"seed": ' + b"9" * 3000 + b"}"), ("negative-seed", b'{"seed": -1}'),
                      ("float-n", b'{"n": 2.0}'), ("bool-n", b'{"n": true}'), ("string-n", b'{"n": "4"}'),
                      ("null-steps", b'{"steps": null, "n": 0}'), ("dup-keys", b'{"n": 1, "n": 1000}'),
                      ("long-key", b'{"' + b"k" * 3000 + b'": 1}'), ("many-keys", json.dumps({f"k{i}": i for i in range(300)}).encode()),
                      ("brackets-in-string", b'{"format": "[[[[{{{{"}'), ("escaped-quote", b'{"format": "\\"[[["}'),
                      ("unicode-field", '{"stéps": 5}'.encode()), ("control-chars", b'{"format": "png\\u0000"}'),
                      ("trailing-garbage", b'{"n": 1} {"n": 2}'), ("single-quotes", b"{'n': 1}"),
                      ("sampler-object", b'{"sampler": {"name": "ddim"}}'), ("format-number", b'{"format": 1}')]:
        cases.append((name, *whole(raw)))
    rng = np.random.default_rng(SEED + 40)
    good = json.dumps({"sampler": "ddim", "steps": 2, "eta": 0.0, "seed": 3, "n": 1, "format": "npz"}).encode()
    for i in range(30):
        raw = bytearray(good)
        if i % 3 == 0:
            raw = raw[:int(rng.integers(0, len(raw)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
        cases.append((f"mutated-{i}", *whole(bytes(raw))))
    return cases


BODY_CASES = body_cases()


@pytest.fixture(scope="module")
def request_parser():
    """The server's own request handling (answer_sample) around parse_request, with a stand-in for sampling."""
    from ddpmrt.engine.schedule import NoiseSchedule
    from ddpmrt.engine.serve import parse_request

    schedule = NoiseSchedule.linear(1000)

    async def run(request):
        return np.zeros((request.n, 16, 16, 1), np.uint8), 1
    return lambda body: parse_request(body, schedule), run


@pytest.mark.parametrize("name,length,chunks", BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_hostile_request_bodies(name, length, chunks, request_parser):
    import asyncio
    import json

    from ddpmrt.engine.serve import answer_sample

    async def stream():
        for chunk in chunks:
            yield chunk
    parse, run = request_parser
    with deadline(30):
        status, content, media_type, _ = asyncio.run(answer_sample(length, stream(), parse, run))
    assert status in (200, 400, 413), (name, status, content[:200])
    if status != 200:
        error = json.loads(content)["error"]
        assert "\n" not in error and len(error) < 1000, error
    else:
        assert name.startswith("mutated-"), f"{name} was accepted"


def _sharing_violation():
    exc = PermissionError(13, "The process cannot access the file because it is being used by another process")
    exc.winerror = 32  # what Windows sets; os.replace raises it while a scanner or viewer holds the file
    return exc


def test_a_replace_held_by_another_process_is_retried_then_named(tmp_path, monkeypatch):
    from ddpmrt.engine.artifacts import io

    real_replace, calls = os.replace, []

    def held_twice(src, dst):
        calls.append(dst)
        if len(calls) <= 2:
            raise _sharing_violation()
        real_replace(src, dst)

    monkeypatch.setattr(io, "REPLACE_RETRY_SECONDS", (0.0,) * 6)
    monkeypatch.setattr(io.os, "replace", held_twice)
    target = tmp_path / "out.json"
    with io.atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and len(calls) == 3  # held for two tries, then written

    monkeypatch.setattr(io.os, "replace", lambda src, dst: (_ for _ in ()).throw(_sharing_violation()))
    with pytest.raises(io.WriteFailed, match="another program holds it open .Windows error 32.; close it"):
        with io.atomic_write(target) as tmp:
            tmp.write_text("newer")
    assert target.read_text() == "new" and not list(tmp_path.glob(".out.json.*"))  # the old file, no temporary left
    # A plain permission error is not a sharing violation: no retries, the usual advice.
    monkeypatch.setattr(io.os, "replace", lambda src, dst: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(io.WriteFailed, match="choose a folder you can write in"):
        with io.atomic_write(target) as tmp:
            tmp.write_text("x")
