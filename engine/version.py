"""The installed ddpmrt version (a base-layer module: everything may import it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ddpmrt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
