"""Atomic file writes (nothing half-written is ever left under the final name) and output-path checks."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ddpmrt.engine.errors import UserError


@contextlib.contextmanager
def atomic_write(path: Path):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The rename is atomic on POSIX and Windows (os.replace), so a reader or an interrupted run
    sees the old file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- output paths: every command checks where it will write before doing any work ---------------

def check_output_file(path, suffixes: tuple[str, ...], option: str = "--out") -> Path:
    """A file a command will write: its extension is one of `suffixes`, it is not a folder, and
    its folder is (or can be made) writable.  Anything else is a UserError naming the path and the fix."""
    path = Path(path)
    allowed = " or ".join(suffixes)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise UserError(f"{option} {path} is an existing folder; name a file, e.g. {path / ('output' + suffixes[0])}")
    if not suffix:
        raise UserError(f"{option} {path} has no extension; name a {allowed} file, e.g. {path}{suffixes[0]}")
    if suffix not in suffixes:
        raise UserError(f"{option} {path}: unknown extension {suffix!r}; name a {allowed} file")
    _check_writable_folder(path.parent, option, path)
    return path


def check_output_dir(path, option: str = "--out") -> Path:
    """A folder a command will write into: not an existing file, and writable (or creatable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is an existing file; name a folder (it is created if missing)")
    _check_writable_folder(path, option, path)
    return path


def _check_writable_folder(folder: Path, option: str, path: Path) -> None:
    """The nearest existing ancestor of `folder` must be a folder this process can create files in.

    Writability is tested by creating (and removing) a temporary file, since permission bits do
    not tell for root, read-only mounts or Windows ACLs.
    """
    probe = Path(folder) if str(folder) else Path(".")
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option} {path}: {probe} is a file, not a folder; choose a path inside a folder")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in {probe} ({exc.strerror or exc}); choose a writable folder") from None
