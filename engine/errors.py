"""The one exception type for user mistakes.

The command line prints a UserError as a single line (`ddpmrt: error: ...`) and exits
non-zero without a traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


# Libraries report running out of memory in their own words: PyTorch's OutOfMemoryError,
# ONNX Runtime's and TensorRT's "Failed to allocate" or std::bad_alloc, CUDA's "out of memory".
_OUT_OF_MEMORY_WORDS = ("out of memory", "bad_alloc", "failed to allocate", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the process (or the GPU) ran out of memory, whichever library raised it."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return any(words in str(exc).lower() for words in _OUT_OF_MEMORY_WORDS)


def out_of_memory(what: str) -> UserError:
    """The one-line error for memory that ran out while doing `what` (not a damaged file: the file is fine)."""
    return UserError(f"ran out of memory while {what}; use a smaller --batch, close other programs, "
                     "or use a machine with more (GPU) memory")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of a library's error message (they run to many lines), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def install_hint(extra: str) -> str:
    """The `pip install` of an optional extra, in a form that works however ddpmrt was installed.

    ddpmrt is installed from its repository, so `pip install 'ddpmrt[openvino]'` cannot find it: the
    hint names the extra's own requirements, read from the installed package's metadata."""
    from importlib import metadata

    try:
        requires = metadata.requires("ddpmrt") or []
    except metadata.PackageNotFoundError:
        requires = []
    packages = [r.split(";")[0].strip() for r in requires
                if r.split(";", 1)[-1].replace("'", '"').replace(" ", "") == f'extra=="{extra}"']
    if packages:
        return "pip install " + " ".join(f'"{p}"' for p in packages)
    return f'pip install -e ".[{extra}]" in the ddpmrt repository'


def run_script(main, prog: str | None = None) -> int:
    """Run a script's `main()` as the `ddpmrt` command runs its commands: a UserError is one line on stderr
    (`PROG: error: ...`) and exit status 2, not a traceback; anything else is a bug and keeps its traceback.
    The benchmark scripts end with `sys.exit(run_script(main))`."""
    import sys
    from pathlib import Path

    try:
        return int(main() or 0)
    except UserError as exc:
        print(f"{prog or Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
