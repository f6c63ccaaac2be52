"""What the two ONNX runtimes on the CPU (ONNX Runtime, OpenVINO) share about an ONNX file: its sealed
ddpmrt metadata (or the caller's description of a file without any), its signature (inputs x, t; output
eps; the I/O type and a fixed batch read from the graph), and the batch and input checks of every call.
Each backend supplies what its library reads: the metadata_props, the ports' names, types and batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmrt.engine.artifacts.integrity import check_onnx_metadata_is_sealed
from ddpmrt.engine.artifacts.metadata import PREFIX, ModelMetadata
from ddpmrt.engine.backends.base import LoadedModel
from ddpmrt.engine.checks import model_inputs
from ddpmrt.engine.errors import UserError


class OnnxFileModel(LoadedModel):
    path: Path
    metadata: ModelMetadata

    def _read_metadata(self, props: dict, sealed: bool, fallback: ModelMetadata | None) -> None:
        """The file's own metadata (checked against its seal); the caller's description only for files that carry none."""
        check_onnx_metadata_is_sealed(props, sealed, self.path.name)
        has_metadata = any(key.startswith(PREFIX) for key in props)
        self.metadata = ModelMetadata.from_strings(props, self.path.name) if has_metadata or fallback is None else fallback
        self.schedule = self.metadata.schedule
        self.image_shape = self.metadata.image_shape

    def _check_signature(self, inputs: list[str], outputs: list[str], x_is_fp16: bool, batch: int | None) -> None:
        """Inputs x and t, output eps; the file's I/O type (not the compute type) and its fixed batch, if any."""
        if set(inputs) != {"x", "t"} or outputs != ["eps"]:
            raise UserError(f"{self.path.name} has inputs {sorted(inputs)} and outputs {outputs}; "
                            "ddpmrt expects inputs x, t and output eps (export with `ddpmrt export-onnx`)")
        self.metadata.precision = "fp16" if x_is_fp16 else "fp32"
        self.static_batch = batch

    def check_batch(self, n: int) -> None:
        if self.static_batch is not None and n != self.static_batch:
            raise UserError(f"{self.path.name} was exported for batch {self.static_batch}, got {n}; "
                            "sample with that --batch or re-export with --batch dynamic")

    def _inputs(self, x, t) -> tuple[np.ndarray, np.ndarray]:
        """x and t checked against the model, x in the file's input type."""
        x, t = model_inputs(x, t, self.image_shape, self.schedule.num_train_timesteps)
        self.check_batch(len(x))
        return np.ascontiguousarray(x, dtype=self.metadata.input_dtype), t
