"""The `ddpmrt` command line (export/cli/main.py registers one module per command)."""

from ddpmrt.export.cli.main import FILE_OUTPUTS, FOLDER_OUTPUTS, build_parser, export_engine_main, main

__all__ = ["FILE_OUTPUTS", "FOLDER_OUTPUTS", "build_parser", "export_engine_main", "main"]
