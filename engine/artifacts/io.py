"""Atomic file writes (nothing half-written is ever left under the final name), output-path checks,
and write failures (a full disk, a read-only folder) as one line naming the path and the cause."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ddpmrt.engine.errors import UserError


class WriteFailed(UserError):
    """An output could not be written: the disk is full, the folder read-only or not ours."""


# The errors of a write that the user, not ddpmrt, can fix; each with what to do about it.
_WRITE_ERRNOS = {
    errno.ENOSPC: "free space on that disk or choose another --out",
    errno.EDQUOT: "free space within your quota or choose another --out",
    errno.EFBIG: "the file is larger than this file system or process allows; choose another --out",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "choose a folder you can write in",
    errno.EPERM: "choose a folder you can write in",
}
# Libraries that report a failed write without an errno, in their own words (safetensors: "os error 28").
# torch.save loses the cause altogether ("unexpected pos": its zip writer saw a short write): the
# free-space test in write_failure tells that one.
_WRITE_WORDS = {"no space left": errno.ENOSPC, "os error 28": errno.ENOSPC, "disk quota": errno.EDQUOT,
                "read-only file system": errno.EROFS, "permission denied": errno.EACCES}
_LOW_SPACE_BYTES = 1 << 20


def cache_dir() -> Path:
    """ddpmrt's cache (compiled kernels, checkpoints' ONNX exports): $DDPMRT_CACHE_DIR, else the
    platform's user cache folder."""
    if os.environ.get("DDPMRT_CACHE_DIR"):
        return Path(os.environ["DDPMRT_CACHE_DIR"])
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "ddpmrt" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ddpmrt"


def write_failure(path, exc: BaseException, writing: bool = True) -> WriteFailed | None:
    """The one-line error for `exc` raised while writing `path`, if it is a failed write; else None.

    Some writers (torch.save) lose the OS error, so where `exc` was raised by a write (`writing`),
    a folder left with under 1 MiB free counts as full.  Where it is not known to be a write, a
    permission error may be a read, and is not taken for a failed write.
    """
    code = exc.errno if isinstance(exc, OSError) else None
    if not writing and code in (errno.EACCES, errno.EPERM):
        return None
    if code not in _WRITE_ERRNOS:
        text = str(exc).lower()
        code = next((c for words, c in _WRITE_WORDS.items() if words in text), None)
    if code is None and writing and _free_bytes(Path(path).parent) < _LOW_SPACE_BYTES:
        code = errno.ENOSPC
    if code is None:
        return None
    return WriteFailed(f"cannot write {path}: {os.strerror(code)}; {_WRITE_ERRNOS[code]}")


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62  # cannot tell: not a full disk


# Windows refuses to replace a file another process holds open without FILE_SHARE_DELETE (an antivirus scan,
# an indexer, a viewer): ERROR_ACCESS_DENIED (5) or ERROR_SHARING_VIOLATION (32), mostly for milliseconds.
_SHARING_WINERRORS = (5, 32)
REPLACE_RETRY_SECONDS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


def replace(src, dst) -> None:
    """os.replace, retried for about 3 s while Windows says another process holds `dst`; then one line
    saying so (not the permission advice, which would send the user to another folder for nothing)."""
    for pause in (*REPLACE_RETRY_SECONDS, None):
        try:
            os.replace(src, dst)
            return
        except PermissionError as exc:
            if getattr(exc, "winerror", None) not in _SHARING_WINERRORS:
                raise
            if pause is None:
                raise WriteFailed(f"cannot replace {dst}: another program holds it open (Windows error {exc.winerror}); "
                                  "close it (a viewer, an editor, a scan) and run the command again") from None
            time.sleep(pause)


@contextlib.contextmanager
def atomic_write(path: Path):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The rename is atomic on POSIX and Windows (os.replace), so a reader or an interrupted run
    sees the old file or the new one, never a mix.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise (write_failure(path, exc) or exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and some writers (safetensors) make their own file: give the result
        # the permissions of any other file this process creates.
        os.chmod(tmp, 0o666 & ~_umask())
        replace(tmp, path)
    except BaseException as exc:
        # Tell a full disk before the temporary file's space is given back.
        failure = write_failure(path, exc) if isinstance(exc, Exception) else None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if failure is not None and not isinstance(exc, WriteFailed):
            raise failure from None
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


# -- taking back what a failed command wrote --------------------------------------------------------

class NewOutputs:
    """What a command creates at its output path, so that a failed write leaves nothing partial behind.

    `out` is the file or folder the command writes.  For a file, its companions are the new entries
    of its folder that start with its stem (d.plan writes d.onnx and d.plan.json); for a folder,
    every new entry in it.  Folders the command had to create are removed with what they hold.
    """

    def __init__(self, out, is_folder: bool):
        self.out = Path(out)
        self.folder = self.out if is_folder else self.out.parent
        self.is_folder = is_folder
        created = self.folder
        while not created.parent.exists() and created.parent != created:
            created = created.parent
        self.created = None if created.exists() else created       # the topmost folder this run makes
        self.before = set(os.listdir(self.folder)) if self.folder.is_dir() else set()

    def new_entries(self) -> list[Path]:
        if self.created is not None:
            return [self.created] if self.created.exists() else []
        if not self.folder.is_dir():
            return []
        names = set(os.listdir(self.folder)) - self.before
        if not self.is_folder:
            names = {n for n in names if n.startswith(self.out.stem)}
        return [self.folder / n for n in sorted(names)]

    def remove(self, keep_complete: bool = False) -> None:
        """Remove what this command created; with `keep_complete`, only the empty files and folders
        (a training run keeps the checkpoints it completed before the disk filled)."""
        for entry in self.new_entries():
            if keep_complete:
                _remove_empty(entry)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def _remove_empty(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        for child in list(entry.iterdir()):
            _remove_empty(child)
        with contextlib.suppress(OSError):
            entry.rmdir()  # only if now empty
    elif entry.is_file() and entry.stat().st_size == 0:
        with contextlib.suppress(OSError):
            entry.unlink()
