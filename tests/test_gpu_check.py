"""benchmarks/gpu_check.sh: the one-call GPU check, known to work before a GPU is at hand (its dry run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
PARTS = ["env", "tests", "bench", "kernels", "graph", "solvers-ddim", "solvers-dpmsolver", "solvers-unipc", "package"]


def _run(out: Path, *args: str, seconds: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    if seconds is not None:
        env["GPU_CHECK_SECONDS"] = str(seconds)
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)


def _parts(out: Path) -> dict:
    return {p["part"]: p for p in map(json.loads, (out / "parts.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_dry_run_runs_every_part_and_summarises(tmp_path):
    result = _run(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    parts = _parts(tmp_path)
    assert list(parts) == PARTS
    for name in PARTS[:-1]:
        assert parts[name]["rc"] == 0, (name, (tmp_path / f"{name}.log").read_text())
        assert parts[name]["dry_run"] is True
    assert "dry run" in parts["package"]["skipped"]
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["date"] and env["torch"] and env["commit"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert summary["tests"]["collected"] > 0  # the GPU tests' selection (pytest -m gpu) holds tests
    measured = {f["figure"]: f["value"] for f in summary["figures"] if f["value"] is not None}
    assert measured["torch-cpu DDIM-2 ms/image, batch 1"] > 0  # the bench's raw JSON reached the summary
    for solver in ("dpmsolver", "unipc"):  # the per-step comparison against DDIM, same calls
        assert 0 < measured[f"{solver} time per image / DDIM's, same calls"] < 100
    text = (tmp_path / "summary.md").read_text()
    assert "DRY RUN" in text and "| bench | 0 |" in text


def test_a_run_out_of_time_still_summarises_what_it_did(tmp_path):
    # The device tool cuts a command at its limit: the script keeps to its own budget, skips the parts
    # it has no time for, and still writes the summary of what ran.
    result = _run(tmp_path, "--dry-run", seconds=12)
    assert result.returncode == 0, result.stderr
    parts = _parts(tmp_path)
    assert parts["env"]["rc"] == 0
    skipped = [name for name, p in parts.items() if "no time left" in p.get("skipped", "")]
    assert skipped and skipped[-1] == "solvers-unipc"
    assert (tmp_path / "summary.md").is_file()


def test_unknown_option_is_one_line(tmp_path):
    result = _run(tmp_path, "--dryrun")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["gpu_check.sh: unknown option --dryrun; usage: gpu_check.sh OUTDIR [--dry-run]"]


def test_summary_fills_the_readme_table(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "parts.jsonl").write_text('{"part": "env", "rc": 0, "seconds": 1}\n')
    (tmp_path / "run" / "gpu-kernels.json").write_text(json.dumps(
        {"accuracy_fp32_worst": 2e-6, "bandwidth": {"fraction_of_copy_with_noise": 0.61}}))
    readme = tmp_path / "README.md"
    readme.write_text("# results\n<!-- gpu-check:begin -->\nold\n<!-- gpu-check:end -->\nafter\n")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check_summary.py"), str(tmp_path / "run"),
                             "--readme", str(readme)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- gpu-check:end -->\nafter\n")
    assert "| fused update: worst abs(kernel - NumPy), fp32 | 2e-06 | <= 1e-5 | yes |" in text
    assert "| fused update with noise, fraction of copy bandwidth | 0.61 | >= 0.8 | **no** |" in text
    assert "| torch-cuda-graph host µs per step (graph launch), batch 1 | not measured |" in text
