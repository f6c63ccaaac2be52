"""Every output path of every command goes through one check (engine/artifacts/io.py), before any work.

A parent that is a file, a folder that cannot be written, an output that is an existing folder,
a missing or unknown extension: one line naming the path and the fix, exit status 2, nothing written.
"""

import os
import sys

import pytest

from ddpmrt.engine.artifacts.io import check_output_dir, check_output_file
from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli import main

# A folder no process can create files in, even as root: /proc on Linux.
UNWRITABLE = "/proc" if sys.platform.startswith("linux") and os.path.isdir("/proc") else None


def run_main(argv, capsys):
    """The CLI in this process: (exit status, stderr lines)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


# (command line before --out, the file suffix it writes, or None for a folder)
FILE_COMMANDS = {
    "sample": (["sample", "digits", "--steps", "1", "--batch", "1", "--quiet"], ".png"),
    "export-onnx": (["export-onnx", "digits"], ".onnx"),
    "export-engine": (["export-engine", "digits", "--flavour", "tensorrt-rtx", "--targets", "sm86"], ".plan"),
}
DIR_COMMANDS = {
    "train": ["train", "--dataset", "digits", "--iters", "1", "--batch-size", "2", "--no-progress"],
    "bench": ["bench", "digits", "--batch", "1", "--steps", "1", "--runs", "1", "--no-diffusers", "--quiet"],
    "report": ["report", "digits", "--samplers", "ddim:2", "--samples", "2", "--quiet"],
    "demo": ["demo", "--samples", "2", "--quiet"],
}


def file_cases(tmp_path, suffix):
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    a_folder = tmp_path / ("folder" + suffix)
    a_folder.mkdir()
    cases = [(a_file / ("x" + suffix), "is a file, not a folder"), (a_folder, "is an existing folder"),
             (tmp_path / "noext", "has no extension"), (tmp_path / "x.weird", "unknown extension")]
    if UNWRITABLE:
        cases.append((f"{UNWRITABLE}/x{suffix}", "cannot write in"))
    return cases


@pytest.mark.parametrize("command", sorted(FILE_COMMANDS))
def test_bad_output_files(tmp_path, capsys, command):
    argv, suffix = FILE_COMMANDS[command]
    for out, fragment in file_cases(tmp_path, suffix):
        before = sorted(tmp_path.rglob("*"))
        code, err = run_main([*argv, "--out", str(out)], capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("ddpmrt: error:"), (command, out, err)
        assert fragment in err[0] and str(out) in err[0], (command, err)
        assert sorted(tmp_path.rglob("*")) == before, f"{command} wrote something for {out}"


@pytest.mark.parametrize("command", sorted(DIR_COMMANDS))
def test_bad_output_folders(tmp_path, capsys, command):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [(a_file, "is an existing file"), (a_file / "sub", "is a file, not a folder")]
    if UNWRITABLE:
        cases.append((f"{UNWRITABLE}/ddpmrt-out", "cannot write in"))
    for out, fragment in cases:
        before = sorted(tmp_path.rglob("*"))
        code, err = run_main([*DIR_COMMANDS[command], "--out", str(out)], capsys)
        assert code == 2 and len(err) == 1 and fragment in err[0] and str(out) in err[0], (command, out, err)
        assert sorted(tmp_path.rglob("*")) == before


def test_engine_companions_are_checked(tmp_path, capsys):
    # export-engine also writes model.onnx, model.plan.json and a timing cache beside the engine.
    (tmp_path / "model.plan.json").mkdir()
    code, err = run_main([*FILE_COMMANDS["export-engine"][0], "--out", str(tmp_path / "model.plan")], capsys)
    assert code == 2 and "model.plan.json is an existing folder" in err[0]
    assert not (tmp_path / "model.onnx").exists()


def test_good_paths_pass_and_are_not_created_by_the_check(tmp_path):
    out = tmp_path / "new" / "deeper" / "x.png"
    assert check_output_file(out, (".png", ".npz")) == out and not (tmp_path / "new").exists()
    assert check_output_file(tmp_path / "X.NPZ", (".png", ".npz")).name == "X.NPZ"  # extensions are case-blind
    assert check_output_dir(tmp_path / "fresh") == tmp_path / "fresh" and not (tmp_path / "fresh").exists()
    with pytest.raises(UserError, match="name a .png or .npz file"):
        check_output_file(tmp_path / "x.jpg", (".png", ".npz"))


def test_sample_writes_into_a_new_folder(tmp_path, capsys):
    out = tmp_path / "made" / "for" / "it.npz"
    code, _ = run_main([*FILE_COMMANDS["sample"][0], "--out", str(out)], capsys)
    assert code == 0 and out.is_file()
