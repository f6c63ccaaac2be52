"""Sidecars: the JSON document beside every built artifact, and the checks every backend runs on load.

    model.plan  ->  model.plan.json   a TensorRT / TensorRT-RTX engine   (format ddpmrt-engine-1)
    model.pt2   ->  model.pt2.json    an AOTInductor package             (format ddpmrt-aoti-1)

A sidecar carries the model's ddpmrt metadata (schedule, image shape), the batch profile the
artifact was built for, its device, the artifact's size and SHA-256, the ddpmrt version, a
build cache key, and a checksum of its own (integrity.seal_json).  This module is the only
place that writes or reads one, so a reader cannot skip a check a writer relies on:

    write_sidecar(artifact, ENGINE, fields)   -> the sealed document, written atomically
    read_sidecar(artifact, ENGINE)            -> the document, after every check below
    cached_sidecar(artifact, ENGINE, key)     -> the document of an intact build with that key, or None
    check_batch(sidecar, n, name)             -> a batch outside the profile is a UserError
    check_device(sidecar, device, name)       -> a package asked for on a device it was not built for

Read checks, in order, each a one-line UserError naming the fix: the sidecar exists, is JSON,
has every field of its kind, matches its checksum and format; the artifact has the recorded
size and SHA-256.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ddpmrt.engine.artifacts.integrity import json_seal_matches, seal_json, sha256_file
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.version import __version__

SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class ArtifactKind:
    format: str               # the sidecar's "format" entry
    noun: str                 # "engine" or "package": also the prefix of the size and hash entries
    rebuild: str              # the command that writes a fresh artifact and sidecar
    required: tuple[str, ...]  # entries a reader needs beyond format, metadata, profile, size and hash

    @property
    def bytes_key(self) -> str:
        return f"{self.noun}_bytes"

    @property
    def sha256_key(self) -> str:
        return f"{self.noun}_sha256"


ENGINE = ArtifactKind("ddpmrt-engine-1", "engine", "`export-engine --force`",
                      ("flavour", "flavour_version", "targets", "tensors"))
PACKAGE = ArtifactKind("ddpmrt-aoti-1", "package", "`export-engine --flavour inductor --force`",
                       ("device", "precision", "torch_version"))


def sidecar_path(artifact: Path) -> Path:
    """model.plan -> model.plan.json (the name keeps the artifact's own suffix)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SIDECAR_SUFFIX)


def write_sidecar(artifact: Path, kind: ArtifactKind, fields: dict) -> dict:
    """Seal and write the sidecar of a freshly written artifact; returns the document."""
    artifact = Path(artifact)
    document = seal_json({"format": kind.format, **fields,
                          kind.bytes_key: artifact.stat().st_size, kind.sha256_key: sha256_file(artifact),
                          "ddpmrt_version": __version__})
    with atomic_write(sidecar_path(artifact)) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document


def _load(path: Path) -> dict | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _valid_profile(profile) -> bool:
    try:
        return 1 <= int(profile["min"]) <= int(profile["opt"]) <= int(profile["max"])
    except (KeyError, TypeError, ValueError):
        return False


def read_sidecar(artifact: Path, kind: ArtifactKind, verify_artifact: bool = True) -> dict:
    """The sidecar of `artifact`, after every check a loader needs before it touches the artifact."""
    artifact = Path(artifact)
    path = sidecar_path(artifact)
    if not path.is_file():
        raise UserError(f"{artifact.name} has no sidecar {path.name}; build it with {kind.rebuild.replace(' --force', '')}")
    document = _load(path)
    needed = ("format", "metadata", "profile", kind.bytes_key, kind.sha256_key, *kind.required)
    # Unreadable, incomplete, edited by hand, or written before sidecars carried a checksum.
    if document is None or any(key not in document for key in needed) or not json_seal_matches(document):
        raise UserError(f"{path.name} is damaged; rebuild with {kind.rebuild}")
    if document["format"] != kind.format:
        raise UserError(f"{path.name} is a {document['format']!r} sidecar, not {kind.format!r}: it belongs to another "
                        f"kind of artifact or ddpmrt version; rebuild with {kind.rebuild}")
    if not _valid_profile(document["profile"]):
        raise UserError(f"{path.name} has no valid batch profile; rebuild with {kind.rebuild}")
    if verify_artifact:
        size = artifact.stat().st_size
        if size != document[kind.bytes_key]:
            raise UserError(f"{artifact.name} is {size} bytes but was built as {document[kind.bytes_key]}: the file is "
                            f"truncated or replaced; rebuild with {kind.rebuild}")
        if sha256_file(artifact) != document[kind.sha256_key]:
            raise UserError(f"{artifact.name} is damaged: its bytes do not match the checksum in {path.name}; "
                            f"rebuild with {kind.rebuild}")
    return document


def cached_sidecar(artifact: Path, kind: ArtifactKind, cache_key) -> dict | None:
    """The sidecar of an intact earlier build with the same cache key (a build can be skipped), else None."""
    artifact = Path(artifact)
    if not artifact.is_file() or not sidecar_path(artifact).is_file():
        return None
    try:
        document = read_sidecar(artifact, kind)
    except UserError:
        return None
    return document if document.get("cache_key") == cache_key else None


def sidecar_metadata(sidecar: dict, name: str) -> ModelMetadata:
    return ModelMetadata.from_strings(sidecar["metadata"], name)


def check_batch(sidecar: dict, n: int, name: str) -> None:
    """A batch outside the profile an artifact was built for would fail deep inside its runtime."""
    profile = sidecar["profile"]
    if not int(profile["min"]) <= n <= int(profile["max"]):
        raise UserError(f"batch {n} is outside {name}'s profile ({profile['min']} to {profile['max']}); sample with a "
                        f"batch in that range or rebuild with `export-engine --batch MIN:OPT:MAX`")


def check_device(sidecar: dict, device: str | None, name: str) -> str:
    """The device a package runs on: the one it was built for; asking for another is a UserError."""
    built_for = sidecar["device"]
    if device is not None and device != built_for:
        raise UserError(f"{name} was compiled for {built_for}, not {device}; rebuild it with "
                        f"`export-engine --flavour inductor --device {device}`")
    return built_for
