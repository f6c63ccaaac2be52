"""engine/artifacts/sidecar.py: the one writer and reader of engine and package sidecars."""

import json

import pytest

from ddpmrt.engine import NoiseSchedule
from ddpmrt.engine.artifacts.integrity import seal_json
from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.artifacts.sidecar import (
    ENGINE,
    PACKAGE,
    cached_sidecar,
    check_batch,
    check_device,
    read_sidecar,
    sidecar_metadata,
    sidecar_path,
    write_sidecar,
)
from ddpmrt.engine.errors import UserError

METADATA = ModelMetadata(schedule=NoiseSchedule.linear(100), image_shape=(1, 8, 8)).to_strings()


def _package(tmp_path, **fields):
    artifact = tmp_path / "m.pt2"
    artifact.write_bytes(b"package bytes")
    document = write_sidecar(artifact, PACKAGE, {"metadata": METADATA, "device": "cpu", "precision": "fp32",
                                                 "torch_version": "2.13.0", "profile": {"min": 1, "opt": 4, "max": 8},
                                                 "cache_key": {"k": 1}, **fields})
    return artifact, document


def test_written_sidecars_read_back_with_their_metadata(tmp_path):
    artifact, document = _package(tmp_path)
    assert sidecar_path(artifact).name == "m.pt2.json"
    assert document["format"] == PACKAGE.format and document["package_bytes"] == 13
    read = read_sidecar(artifact, PACKAGE)
    assert read == document and sidecar_metadata(read, "m.pt2").image_shape == (1, 8, 8)
    assert cached_sidecar(artifact, PACKAGE, {"k": 1}) == document
    assert cached_sidecar(artifact, PACKAGE, {"k": 2}) is None       # another build's key: build again


def test_every_damage_is_one_line_naming_the_rebuild(tmp_path):
    artifact, document = _package(tmp_path)
    path = sidecar_path(artifact)
    cases = {
        "{": "damaged",
        json.dumps({**document, "device": "cuda"}): "damaged",                         # edited: checksum fails
        json.dumps(seal_json({k: v for k, v in document.items() if k != "device"})): "damaged",  # incomplete
        json.dumps(seal_json({**document, "format": ENGINE.format})): "not 'ddpmrt-aoti-1'",
        json.dumps(seal_json({**document, "profile": {"min": 4, "opt": 2, "max": 1}})): "no valid batch profile",
    }
    for text, fragment in cases.items():
        path.write_text(text)
        with pytest.raises(UserError, match=fragment) as raised:
            read_sidecar(artifact, PACKAGE)
        assert "\n" not in str(raised.value) and "export-engine --flavour inductor --force" in str(raised.value)
        assert cached_sidecar(artifact, PACKAGE, {"k": 1}) is None
    path.write_text(json.dumps(document))
    artifact.write_bytes(b"package bytez")  # same size, other bytes
    with pytest.raises(UserError, match="do not match the checksum"):
        read_sidecar(artifact, PACKAGE)
    artifact.write_bytes(b"short")
    with pytest.raises(UserError, match="truncated"):
        read_sidecar(artifact, PACKAGE)
    path.unlink()
    with pytest.raises(UserError, match="no sidecar"):
        read_sidecar(artifact, PACKAGE)


def test_batch_profile_and_device_checks(tmp_path):
    _, document = _package(tmp_path)
    check_batch(document, 1, "m.pt2")
    check_batch(document, 8, "m.pt2")
    with pytest.raises(UserError, match=r"batch 9 is outside m.pt2's profile \(1 to 8\)"):
        check_batch(document, 9, "m.pt2")
    assert check_device(document, None, "m.pt2") == "cpu" and check_device(document, "cpu", "m.pt2") == "cpu"
    with pytest.raises(UserError, match="compiled for cpu, not cuda.*--device cuda"):
        check_device(document, "cuda", "m.pt2")
