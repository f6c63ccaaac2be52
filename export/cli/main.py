"""The `ddpmrt` command line: a registry of commands, one module each (export/cli/<command>.py, with its
parser and its handler), and the one place a user error becomes one line and exit status 2.

torch is imported only by the commands that need it, so `ddpmrt sample` on an ONNX model works in an
environment without PyTorch.  User mistakes (UserError) are printed as one line and exit with their
status (2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli import bench, check, demo, export_diffusers, export_engine, export_onnx, report, sample, serve, train, tune

# In the order `ddpmrt --help` lists them.
COMMANDS = (train, sample, tune, export_onnx, export_engine, export_diffusers, check, bench, report, serve, demo)
# Where each command writes (OUTPUT: a file, a folder, or nothing).  A write that fails (a full disk, a
# read-only folder) takes back what the command wrote there; training keeps the checkpoints it completed.
FILE_OUTPUTS = tuple(c.NAME for c in COMMANDS if c.OUTPUT == "file")
FOLDER_OUTPUTS = tuple(c.NAME for c in COMMANDS if c.OUTPUT == "folder")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"ddpmrt: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ddpmrt.engine import __version__

    parser = OneLineErrorParser(prog="ddpmrt", description="Diffusion model training, export and fast sampling.")
    parser.add_argument("--version", action="version", version=f"ddpmrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _tolerant_output() -> None:
    """Print what the console's encoding can hold and replace the rest: a redirected stdout on Windows is the
    ANSI code page (cp1252) in strict mode, and η, ε, x̂₀ or ± would end the command.  Files stay UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.errors or "strict") == "strict":
            stream.reconfigure(errors="replace")


def _notes_in_one_line() -> None:
    """ddpmrt's own notes (warnings raised by its modules: a fallback, a slower precision) print as one line,
    `ddpmrt: note: ...`, not Python's two-line warning with a source line; other libraries' keep their form."""
    import warnings
    from pathlib import Path

    import ddpmrt.engine
    import ddpmrt.export

    if getattr(warnings.showwarning, "ddpmrt_notes", False):
        return  # main() ran before in this process
    roots = tuple(Path(package.__file__).resolve().parent for package in (ddpmrt.engine, ddpmrt.export))
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and any(Path(filename).resolve().is_relative_to(r) for r in roots):
            print(f"ddpmrt: note: {message}", file=file or sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    show.ddpmrt_notes = True
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    from ddpmrt.engine.artifacts.io import NewOutputs, WriteFailed, write_failure

    _tolerant_output()
    _notes_in_one_line()
    ns = build_parser().parse_args(argv)
    outputs = None
    if ns.command in FILE_OUTPUTS + FOLDER_OUTPUTS and getattr(ns, "out", None):
        outputs = NewOutputs(ns.out, is_folder=ns.command in FOLDER_OUTPUTS)
    try:
        try:
            ns.func(ns)
        except OSError as exc:  # a write outside atomic_write (a log line): the same one line
            failure = write_failure(exc.filename or ns.out, exc, writing=False) if outputs else None
            if failure is None:
                raise
            raise failure from None
    except UserError as exc:
        if isinstance(exc, WriteFailed) and outputs is not None:
            outputs.remove(keep_complete=ns.command == "train")
        print(f"ddpmrt: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
    except KeyboardInterrupt:
        print("ddpmrt: interrupted", file=sys.stderr)
        return 130
    return 0


def export_engine_main(argv: list[str] | None = None) -> int:
    """The `export-engine` console script: `ddpmrt export-engine` under its own name."""
    argv = sys.argv[1:] if argv is None else argv
    return main(["export-engine", *argv])
