"""Tuned timesteps that travel with a model (`ddpmrt tune`, engine/tuning.py).

    checkpoint folder (and a shipped model)   ->  FOLDER/schedules.json      keyed by model.safetensors' SHA-256
    model.onnx / model.plan / model.pt2       ->  model.onnx.schedules.json  keyed by the file's SHA-256

A document holds entries, one per (sampler, options, calls): the timesteps, the objective they
reached against the teacher and the sampler's own spacing, the teacher, the cost and the date.
It is sealed (integrity.seal_json) like every JSON file ddpmrt writes, and names the SHA-256 of
the weights it was tuned for: a damaged or hand-edited file, or one made for other weights, is a
one-line UserError when it is read, and tuned timesteps are looked up only where asked
(`--spacing tuned`), so such a file never stops anything else.
"""

from __future__ import annotations

import json
from pathlib import Path

from ddpmrt.engine.artifacts.integrity import json_seal_matches, seal_json, sha256_file
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.version import __version__

FORMAT = "ddpmrt-schedules-1"
FOLDER_FILE = "schedules.json"
FILE_SUFFIX = ".schedules.json"
WEIGHTS = "model.safetensors"
# What identifies a setting besides the sampler and the calls: its options, less what tuning replaces.
NOT_SETTINGS = ("sampler", "num_steps", "timesteps", "spacing")


def schedules_path(model: Path) -> Path:
    model = Path(model)
    return model / FOLDER_FILE if model.is_dir() else model.with_name(model.name + FILE_SUFFIX)


def weights_of(model: Path) -> Path:
    """The file whose SHA-256 keys the table: a checkpoint's weights, or the artifact itself."""
    model = Path(model)
    return model / WEIGHTS if model.is_dir() else model


def setting(config: dict) -> dict:
    """A sampler's config as a table key: the options that change its steps (not its timesteps or spacing)."""
    return {k: v for k, v in config.items() if k not in NOT_SETTINGS}


class TunedSchedules:
    """The tuned entries of one model: read on first use, looked up by sampler setting and calls."""

    def __init__(self, model: Path, name: str | None = None):
        self.model = Path(model)
        self.name = name or self.model.name
        self.path = schedules_path(self.model)
        self._entries: list[dict] | None = None

    def entries(self) -> list[dict]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        where = f"{self.path.name} of {self.name}"
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            raise UserError(f"{where} is not readable JSON; delete it and run ddpmrt tune again") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT or \
                not isinstance(document.get("entries"), list):
            raise UserError(f"{where} is not a ddpmrt tuned-schedules file ({FORMAT}); delete it and run ddpmrt tune")
        if json_seal_matches(document) is not True:
            raise UserError(f"{where} does not match its checksum (damaged or edited by hand); "
                            "delete it and run ddpmrt tune again")
        if document.get("weights_sha256") != sha256_file(weights_of(self.model)):
            raise UserError(f"{where} was tuned for other weights (SHA-256 mismatch); run ddpmrt tune for this model")
        return document["entries"]

    def lookup(self, config: dict, calls: int) -> list[int] | None:
        key = setting(config)
        for entry in self.entries():
            if entry["sampler"] == config["sampler"] and entry["calls"] == calls and setting(entry["options"]) == key:
                return entry["timesteps"]
        return None

    def write(self, new_entries: list[dict]) -> Path:
        """Add entries (replacing those of the same setting and calls) and write the sealed file atomically."""
        try:
            kept = self.entries()
        except UserError:
            kept = []  # a damaged or foreign table is replaced, not merged
        replaced = {(e["sampler"], json.dumps(setting(e["options"]), sort_keys=True), e["calls"]) for e in new_entries}
        kept = [e for e in kept if (e["sampler"], json.dumps(setting(e["options"]), sort_keys=True), e["calls"])
                not in replaced]
        entries = sorted(kept + list(new_entries), key=lambda e: (e["sampler"], json.dumps(setting(e["options"]),
                                                                                             sort_keys=True), e["calls"]))
        document = seal_json({"format": FORMAT, "model": self.name, "weights_sha256": sha256_file(weights_of(self.model)),
                              "ddpmrt_version": __version__, "entries": entries})
        with atomic_write(self.path) as tmp:
            tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        self._entries = entries
        return self.path


def carry_schedules(source: Path, artifact: Path) -> Path | None:
    """A checkpoint's tuned entries for an artifact exported from it (export-onnx, export-engine): the same
    network, so the same timesteps, keyed by the artifact's own hash.  None where the source has none."""
    table = TunedSchedules(source)
    if not table.path.is_file():
        return None
    entries = table.entries()
    if not entries:
        return None
    return TunedSchedules(artifact).write(entries)
