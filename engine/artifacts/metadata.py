"""What a model file says about itself: enough to sample from it with nothing else.

Stored as string key/value pairs: in an ONNX model's `metadata_props` and in an engine's
sidecar JSON (`model.plan.json`).  Values that are not plain strings are JSON.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from ddpmrt.engine.errors import UserError
from ddpmrt.engine.schedule import NoiseSchedule

PREFIX = "ddpmrt."
PRECISIONS = ("fp32", "fp16")


@dataclasses.dataclass
class ModelMetadata:
    schedule: NoiseSchedule
    image_shape: tuple[int, int, int]          # (C, H, W)
    precision: str = "fp32"                    # dtype of x and eps: fp32 | fp16
    prediction_type: str = "epsilon"
    model_config: dict = dataclasses.field(default_factory=dict)
    source: str = ""                           # what it was exported from
    source_sha256: str = ""                    # hash of the source weights
    ddpmrt_version: str = ""
    quantization: dict = dataclasses.field(default_factory=dict)  # how an int8 file was calibrated; {} = float
    dataset: str = ""                          # the data set it was trained on ("" = not known): report judges on it
    static_batch: int | None = None            # an ONNX graph's fixed batch size (read from the graph, not stored)

    def __post_init__(self):
        self.image_shape = tuple(int(v) for v in self.image_shape)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise UserError(f"image shape must be C,H,W with positive sizes, got {self.image_shape}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose fp32 or fp16")
        if self.prediction_type != "epsilon":
            raise UserError(f"prediction type {self.prediction_type!r} is not supported; ddpmrt samples ε-models")

    @property
    def input_dtype(self) -> type:
        return np.float16 if self.precision == "fp16" else np.float32

    def to_strings(self) -> dict[str, str]:
        return {
            PREFIX + "schedule": json.dumps(self.schedule.to_dict()),
            PREFIX + "image_shape": json.dumps(list(self.image_shape)),
            PREFIX + "precision": self.precision,
            PREFIX + "prediction_type": self.prediction_type,
            PREFIX + "model_config": json.dumps(self.model_config),
            PREFIX + "source": self.source,
            PREFIX + "source_sha256": self.source_sha256,
            PREFIX + "version": self.ddpmrt_version,
        } | ({PREFIX + "quantization": json.dumps(self.quantization)} if self.quantization else {}) \
          | ({PREFIX + "dataset": self.dataset} if self.dataset else {})

    def compute_precision(self, asked: str, origin: str) -> str | None:
        """"int8" for an int8 file (asked auto or int8), None for a float file (asked anything but int8).

        A precision the file cannot give is a UserError naming the fix: int8 comes from a calibrated
        export, and an int8 file computes nothing else.
        """
        if self.quantization:
            if asked not in ("auto", "int8"):
                raise UserError(f"{origin} is an int8 model; sample it with --precision auto or int8, or sample "
                                f"its fp32 export for {asked}")
            return "int8"
        if asked == "int8":
            raise UserError(f"{origin} is not calibrated for int8: export an int8 model with `ddpmrt export-onnx "
                            "MODEL --precision int8 --out model-int8.onnx` and sample that")
        return None

    @classmethod
    def from_strings(cls, props: dict[str, str], origin: str) -> "ModelMetadata":
        """Parse metadata written by to_strings(); a UserError names what is missing."""
        if PREFIX + "schedule" not in props or PREFIX + "image_shape" not in props:
            raise UserError(f"{origin} has no ddpmrt metadata (schedule, image shape); export it with "
                            "`ddpmrt export-onnx`, or pass --schedule and --image-shape")
        try:
            return cls(schedule=NoiseSchedule.from_dict(json.loads(props[PREFIX + "schedule"])),
                       image_shape=tuple(json.loads(props[PREFIX + "image_shape"])),
                       precision=props.get(PREFIX + "precision", "fp32"),
                       prediction_type=props.get(PREFIX + "prediction_type", "epsilon"),
                       model_config=json.loads(props.get(PREFIX + "model_config", "{}")),
                       source=props.get(PREFIX + "source", ""),
                       source_sha256=props.get(PREFIX + "source_sha256", ""),
                       ddpmrt_version=props.get(PREFIX + "version", ""),
                       quantization=json.loads(props.get(PREFIX + "quantization", "{}")),
                       dataset=props.get(PREFIX + "dataset", ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{origin} has damaged ddpmrt metadata ({exc}); re-export the model") from None

    def write_to(self, onnx_model) -> None:
        """Replace the ddpmrt entries of an onnx.ModelProto's metadata_props."""
        keep = [(p.key, p.value) for p in onnx_model.metadata_props if not p.key.startswith(PREFIX)]
        del onnx_model.metadata_props[:]
        for key, value in keep + list(self.to_strings().items()):
            entry = onnx_model.metadata_props.add()
            entry.key, entry.value = key, value


def parse_schedule_arg(text: str) -> NoiseSchedule:
    """--schedule for files without metadata: `linear[:T[:beta_start:beta_end]]` or `cosine[:T]`."""
    parts = text.split(":")
    try:
        if parts[0] == "linear" and len(parts) in (1, 2, 4):
            args = [int(parts[1])] if len(parts) > 1 else []
            args += [float(v) for v in parts[2:]]
            return NoiseSchedule.linear(*args)
        if parts[0] == "cosine" and len(parts) in (1, 2):
            return NoiseSchedule.cosine(*([int(parts[1])] if len(parts) > 1 else []))
    except ValueError:
        pass
    raise UserError(f"--schedule {text!r} not understood; use linear, linear:1000:0.0001:0.02 or cosine:1000")


def parse_image_shape_arg(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--image-shape {text!r} not understood; use C,H,W such as 3,32,32")
    return shape
