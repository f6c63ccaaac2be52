"""Checksums on the files ddpmrt writes, so a damaged file is an error, never a silently wrong model.

A flipped bit in a weight or in a schedule number leaves a file that still parses: ONNX,
safetensors and JSON carry no checksum of their own.  Every file ddpmrt writes carries one,
and every reader checks it before using the file:

    ONNX model            metadata entry `ddpmrt.file_sha256`: SHA-256 of the file's bytes with
                          that value replaced by 64 zeros (written last, by `seal_onnx_file`)
    engine (.plan)        `engine_sha256` in its sidecar
    sidecar (.plan.json)  `checksum`: SHA-256 of its canonical JSON without that entry
    checkpoint            config.json: `weights_sha256` of model.safetensors, and `checksum` of the
                          config itself (delete that entry to accept a deliberate edit)

Files from elsewhere (an ONNX export of another tool) carry none, and are read unchecked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ddpmrt.engine.errors import UserError

ONNX_SEAL_KEY = "ddpmrt.file_sha256"
PLACEHOLDER = "0" * 64
CHECKSUM_KEY = "checksum"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- ONNX files ---------------------------------------------------------------------------------

def _seal_offset(data: bytes) -> int | None:
    """Offset of the 64-character seal value, or None where the file has no (intact) seal.

    In the protobuf, a metadata entry is the key (field 1) followed by the value (field 2,
    tag 0x12, length 0x40 for 64 bytes).
    """
    key = ONNX_SEAL_KEY.encode()
    start = data.find(key)
    if start < 0 or data.find(key, start + 1) >= 0:
        return None
    value = start + len(key)
    if data[value:value + 2] != b"\x12\x40":
        return None
    return value + 2


def seal_onnx_file(path: Path) -> None:
    """Write the checksum into a file saved with the ONNX_SEAL_KEY entry set to PLACEHOLDER."""
    path = Path(path)
    data = path.read_bytes()
    offset = _seal_offset(data)
    if offset is None or data[offset:offset + 64] != PLACEHOLDER.encode():
        raise RuntimeError(f"{path} has no {ONNX_SEAL_KEY} placeholder to fill")
    path.write_bytes(data[:offset] + sha256_bytes(data).encode() + data[offset + 64:])


def verify_onnx_bytes(data: bytes, name: str) -> bool:
    """Check a sealed ONNX file's bytes (UserError on a mismatch); False where the file has no seal.

    Whether an unsealed file should have had one is decided from its parsed metadata
    (check_onnx_metadata_is_sealed): a flipped bit in the seal's own key leaves no seal to find here.
    """
    offset = _seal_offset(data)
    if offset is None:
        return False
    stored = data[offset:offset + 64]
    if sha256_bytes(data[:offset] + PLACEHOLDER.encode() + data[offset + 64:]).encode() != stored:
        raise UserError(f"{name} is damaged: its bytes do not match the checksum written at export; re-export it "
                        "with `ddpmrt export-onnx`")
    return True


def check_onnx_metadata_is_sealed(props: dict, sealed: bool, name: str) -> None:
    """A file with ddpmrt metadata must have carried an intact seal (files of other tools carry neither)."""
    if not sealed and any(key.startswith("ddpmrt.") for key in props):
        raise UserError(f"{name} is damaged (its ddpmrt checksum is missing or broken), or was exported by an older "
                        "ddpmrt; re-export it with `ddpmrt export-onnx`")


def read_onnx_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, verified where sealed, and whether it was sealed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data, verify_onnx_bytes(data, path.name)


# -- JSON documents (sidecars, checkpoint configs) -------------------------------------------

def _canonical(document: dict) -> bytes:
    body = {k: v for k, v in document.items() if k != CHECKSUM_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal_json(document: dict) -> dict:
    """The document with its `checksum` entry (re)computed."""
    return {**{k: v for k, v in document.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: sha256_bytes(_canonical(document))}


def json_seal_matches(document: dict) -> bool | None:
    """True or False where the document has a checksum, None where it has none."""
    if CHECKSUM_KEY not in document:
        return None
    return document[CHECKSUM_KEY] == sha256_bytes(_canonical(document))
