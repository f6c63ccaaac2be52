"""Building TensorRT / TensorRT-RTX engines from ddpmrt ONNX models.

    build_engine(onnx, out.plan, profile, targets, flavour)  ->  out.plan + out.plan.json

The sidecar (`model.plan.json`) holds everything the runtime needs (the ONNX model's ddpmrt
metadata, tensor dtypes, the optimization profile, flavour and version, GPU targets, ONNX
sha256) and the cache key.  A build whose key matches an existing engine is skipped.

Precision is the ONNX model's: an fp16 engine is built from the fp16 ONNX in a strongly typed
network (TensorRT 11 and TensorRT-RTX have no FP16 builder flag).

`sanitize` first runs Polygraphy's constant folding and shape inference on the ONNX (off by
default: on ddpmrt's exports it folds nothing, benchmarks/sanitize_onnx.py).  Where a GPU can
deserialize the engine, the sidecar also lists what Polygraphy's loader reads back from it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ddpmrt.engine.artifacts.integrity import check_onnx_metadata_is_sealed, read_onnx_bytes
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.artifacts.sidecar import ENGINE, cached_sidecar, write_sidecar
from ddpmrt.engine.backends.tensorrt_flavour import RTX_DEFAULT_TARGETS, RTX_TARGETS, Flavour, rtx_target
from ddpmrt.engine.errors import UserError, out_of_memory
from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability
from ddpmrt.engine.version import __version__


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max

    @classmethod
    def parse(cls, text: str) -> "BatchProfile":
        """`N` (static shape) or `MIN:OPT:MAX`."""
        try:
            values = [int(v) for v in str(text).split(":")]
        except ValueError:
            values = []
        if len(values) == 1:
            values *= 3
        if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2] <= 65536:
            raise UserError(f"--batch {text!r}: use N, or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX <= 65536")
        return cls(*values)

    def __str__(self) -> str:
        return str(self.min) if self.static else f"{self.min}:{self.opt}:{self.max}"


def parse_targets(text: str, flavour: Flavour) -> list[str]:
    """`auto`: this GPU if one is visible, else the flavour's defaults; `current`; or `sm86,sm89,...`."""
    targets = [t.strip().lower() for t in text.split(",") if t.strip()]
    if targets in (["auto"], ["current"]) and flavour.is_rtx:
        _check_rtx_can_target_this_gpu()
    if targets == ["auto"]:
        if device_compute_capability() is not None:
            return ["current"]
        if not flavour.is_rtx:
            raise UserError("full TensorRT builds engines on a GPU and none is visible; install TensorRT-RTX "
                            "(--flavour tensorrt-rtx) to build ahead of time for --targets sm86,sm89,...")
        return list(RTX_DEFAULT_TARGETS)
    if not flavour.is_rtx:
        if targets != ["current"]:
            raise UserError("full TensorRT builds for the GPU it runs on: use --targets current, "
                            "or --flavour tensorrt-rtx for explicit targets")
        return targets
    if "current" in targets and len(targets) > 1:
        # TensorRT-RTX builds for CURRENT only as the one target (set_compute_capability refuses the mix).
        raise UserError("--targets current builds for this GPU alone and cannot be combined with named targets; "
                        "use --targets current, or name the targets, e.g. --targets sm86,sm89")
    for target in targets:
        if target != "current" and target not in RTX_TARGETS:
            hopper = " (Hopper GPUs are not TensorRT-RTX targets: use --flavour tensorrt there)" if target == "sm90" else ""
            raise UserError(f"unknown target {target!r}; choose current or {', '.join(RTX_TARGETS)}{hopper}")
    if "current" in targets and device_compute_capability() is None:
        raise UserError("--targets current needs a visible GPU; name the targets instead, e.g. --targets sm86,sm89")
    return targets


def _check_rtx_can_target_this_gpu() -> None:
    """A visible GPU that TensorRT-RTX cannot build for (Hopper, data-centre Blackwell): say so at once, not after
    a build that fails with advice about the optimization level."""
    capability = device_compute_capability()
    if capability is not None and rtx_target(capability) is None:
        raise UserError(f"this GPU (sm{capability[0]}{capability[1]}) is not a TensorRT-RTX target ({', '.join(RTX_TARGETS)}); "
                        "build its engine with full TensorRT: --flavour tensorrt")


def user_allocation(flavour: Flavour) -> bool:
    """Whether engines are built with REQUIRE_USER_ALLOCATION (TensorRT-RTX 1.2 and later have it)."""
    flags = getattr(getattr(getattr(flavour, "trt", None), "BuilderFlag", None), "__members__", {})
    return flavour.is_rtx and "REQUIRE_USER_ALLOCATION" in flags


def cache_key(onnx_sha256: str, flavour: Flavour, profile: BatchProfile, targets: list[str], optimization_level,
              sanitize: bool = False) -> str:
    fields = {"onnx": onnx_sha256, "flavour": flavour.name, "version": flavour.version, "profile": str(profile),
              "targets": targets, "optimization_level": optimization_level, "ddpmrt": __version__}
    if flavour.is_rtx:
        fields["user_allocation"] = user_allocation(flavour)  # engines built before the flag are rebuilt
    if sanitize:  # (absent when off, so engines built before the option keep their key)
        fields["sanitize"] = True
    if "current" in targets:  # built for the GPU at hand: another GPU must not find it "up to date"
        fields["gpu"] = list(device_compute_capability() or [])
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass
class BuildResult:
    plan: Path
    sidecar: dict
    seconds: float
    cached: bool


def _parse_onnx(flavour: Flavour, builder, network, logger, onnx_path: Path) -> None:
    parser = flavour.trt.OnnxParser(network, logger)
    # parse_from_file resolves external data next to the model, unlike parse(bytes).
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise UserError(f"{flavour.name} cannot parse {onnx_path.name}: {errors[:300]}")


def build_engine(onnx_path: Path, plan: Path, metadata: ModelMetadata, onnx_sha256: str, flavour: Flavour,
                 profile: BatchProfile, targets: list[str], optimization_level: int | None = None,
                 force: bool = False, sanitize: bool = False) -> BuildResult:
    plan = Path(plan)
    key = cache_key(onnx_sha256, flavour, profile, targets, optimization_level, sanitize)
    # A cache hit only for an intact pair: same key, sidecar and engine matching their checksums.
    existing = None if force else cached_sidecar(plan, ENGINE, key)
    if existing is not None:
        return BuildResult(plan, existing, 0.0, cached=True)
    static = read_onnx_metadata(onnx_path, metadata.schedule, metadata.image_shape).static_batch  # never build from a damaged file
    if static is not None and (profile.min, profile.opt, profile.max) != (static,) * 3:
        # TensorRT's set_shape would raise ValueError deep in the build.
        raise UserError(f"{onnx_path.name} has a fixed batch of {static}, which --batch {profile} does not match; use "
                        f"--batch {static}:{static}:{static}, or export the ONNX with --batch dynamic")

    with tempfile.TemporaryDirectory(prefix="ddpmrt-sanitized-") as work:
        sanitized = {"applied": []}
        start = time.perf_counter()
        if sanitize:
            from ddpmrt.export.conversion.polygraphy_tools import sanitize_onnx

            sanitized = sanitize_onnx(onnx_path, Path(work) / onnx_path.name)
            onnx_path = Path(work) / onnx_path.name
        serialized, config, network_layers = _build(flavour, onnx_path, metadata, profile, targets,
                                                    optimization_level, plan)
    seconds = time.perf_counter() - start
    timing_cache_file = plan.with_name(plan.name + ".timing-cache")
    with atomic_write(plan) as tmp:
        tmp.write_bytes(bytes(serialized))
    if flavour.has_timing_cache:
        with atomic_write(timing_cache_file) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))

    sidecar = write_sidecar(plan, ENGINE, {
        "metadata": metadata.to_strings(),
        "tensors": {"x": metadata.precision, "t": "int64", "eps": metadata.precision},
        "profile": {"min": profile.min, "opt": profile.opt, "max": profile.max, "static": profile.static},
        "flavour": flavour.name,
        "flavour_version": flavour.version,
        "targets": targets or ["default"],
        "optimization_level": optimization_level,
        "onnx": Path(onnx_path).name,
        "onnx_sha256": onnx_sha256,
        "sanitize": sanitized,
        "network_layers": network_layers,
        "inspection": engine_inspection(plan, flavour),
        "build_seconds": round(seconds, 2),
        "built_with_gpu": list(device_compute_capability() or []),
        "cache_key": key,
    })
    return BuildResult(plan, sidecar, seconds, cached=False)


def engine_inspection(plan: Path, flavour: Flavour) -> dict:
    """Polygraphy's reading of the built engine, or why there is none (no GPU here, no Polygraphy)."""
    if device_compute_capability() is None:
        return {"skipped": "no GPU here: deserializing an engine needs one (TensorRT-RTX too)"}
    try:
        from ddpmrt.export.conversion.polygraphy_tools import inspect_engine

        return inspect_engine(plan, flavour.is_rtx)
    except UserError as exc:
        return {"skipped": str(exc)}


def _build(flavour: Flavour, onnx_path: Path, metadata: ModelMetadata, profile: BatchProfile, targets: list[str],
           optimization_level, plan: Path):
    """The serialized engine, its builder config (for the timing cache) and the parsed network's layer count."""
    trt = flavour.trt
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(flavour.network_flags())
    _parse_onnx(flavour, builder, network, logger, onnx_path)

    config = builder.create_builder_config()
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    trt_profile = builder.create_optimization_profile()
    c, h, w = metadata.image_shape
    trt_profile.set_shape("x", (profile.min, c, h, w), (profile.opt, c, h, w), (profile.max, c, h, w))
    trt_profile.set_shape("t", (profile.min,), (profile.opt,), (profile.max,))
    config.add_optimization_profile(trt_profile)
    if user_allocation(flavour):
        # TensorRT-RTX: engines use the application's memory (bound tensor addresses, the context's memory), which
        # its docs require for CUDA stream capture, the device loop's graphs.
        config.set_flag(flavour.trt.BuilderFlag.REQUIRE_USER_ALLOCATION)
    if flavour.is_rtx and targets:
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            if config.set_compute_capability(flavour.compute_capability(target), index) is False:
                raise UserError(f"TensorRT-RTX {flavour.version} refused target {target} (in --targets "
                                f"{','.join(targets)}); name targets from {', '.join(RTX_TARGETS)}, or current alone")
    timing_cache_file = plan.with_name(plan.name + ".timing-cache")
    if flavour.has_timing_cache:
        previous = timing_cache_file.read_bytes() if timing_cache_file.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(previous), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"{flavour.name} could not build an engine from {onnx_path.name}; "
                        "run with a lower --optimization-level or check the ONNX with `ddpmrt export-onnx`")
    return serialized, config, int(network.num_layers)


def read_onnx_metadata(onnx_path: Path, schedule=None, image_shape=None) -> ModelMetadata:
    """The ddpmrt metadata of an ONNX file; `schedule` and `image_shape` describe a file without any.

    Precision always comes from the graph's x input.  UserError for a damaged file, or for a
    file without metadata when no description is given.
    """
    import onnx

    data, sealed = read_onnx_bytes(onnx_path)
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except MemoryError:
        raise out_of_memory(f"reading {onnx_path.name}") from None
    except (DecodeError, ValueError):  # protobuf's error for bytes that are not an ONNX model
        raise UserError(f"cannot read {onnx_path.name}: it is truncated or not an ONNX model; re-export it") from None
    props = {p.key: p.value for p in model.metadata_props}
    check_onnx_metadata_is_sealed(props, sealed, onnx_path.name)
    x_input = next((i.type.tensor_type for i in model.graph.input if i.name == "x"), None)
    precision = "fp16" if x_input is not None and x_input.elem_type == onnx.TensorProto.FLOAT16 else "fp32"
    # A fixed batch is a dim_value on x's first axis; a dynamic one is a dim_param (or nothing).
    batch = x_input.shape.dim[0] if x_input is not None and x_input.shape.dim else None
    static_batch = batch.dim_value if batch is not None and batch.HasField("dim_value") else None
    if not any(key.startswith("ddpmrt.") for key in props) and schedule is not None and image_shape is not None:
        return ModelMetadata(schedule=schedule, image_shape=image_shape, precision=precision, static_batch=static_batch)
    metadata = ModelMetadata.from_strings(props, onnx_path.name)
    metadata.precision, metadata.static_batch = precision, static_batch
    return metadata
