"""`export-engine` as a library call (the command and the demo both run it): the ONNX export unless one
is up to date, then the TensorRT / TensorRT-RTX build.  (`export-engine --check` then runs `ddpmrt check`
on both: export/cli/export_engine.py, since evaluation sits above conversion.)"""

from __future__ import annotations

from pathlib import Path

from ddpmrt.engine.errors import UserError


def onnx_is_current(path: Path, metadata, opset: int) -> bool:
    """An existing ONNX file exported from the same weights, precision, opset and ddpmrt version."""
    import onnx

    from ddpmrt.export.conversion.engine_build import read_onnx_metadata

    if not path.is_file():
        return False
    try:
        existing = read_onnx_metadata(path)
        model_opset = max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                          if o.domain in ("", "ai.onnx"))
    except (UserError, ValueError):
        return False
    return (existing.source_sha256 == metadata.source_sha256 and existing.precision == metadata.precision
            and existing.ddpmrt_version == metadata.ddpmrt_version and model_opset == opset)


def export_engine(model: str | None, out, from_diffusers: str | None = None, precision: str = "fp16",
                  batch: str = "1:8:64", targets: str = "auto", flavour: str = "auto", optimization_level: int | None = None,
                  opset: int = 18, force: bool = False, schedule=None, image_shape=None,
                  sanitize: bool = False) -> tuple[Path, Path]:
    """`export-engine`: the ONNX export (unless given an .onnx, or one that is up to date), then the engine
    build; returns (the ONNX file, the engine).

    `schedule` and `image_shape` describe an .onnx without ddpmrt metadata (or a bare diffusers UNet folder).
    `sanitize` runs Polygraphy's constant folding first.
    """
    from ddpmrt.engine.artifacts.io import check_output_file
    from ddpmrt.engine.artifacts.sidecar import sidecar_path
    from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
    from ddpmrt.export.conversion.engine_build import BatchProfile, build_engine, parse_targets, read_onnx_metadata
    from ddpmrt.export.model.sources import export_source, sha256_file

    plan = check_output_file(out, (".plan", ".engine"))
    # Everything written beside the engine: its ONNX, the sidecar and TensorRT's timing cache.
    for companion, suffixes in ((plan.with_suffix(".onnx"), (".onnx",)), (sidecar_path(plan), (".json",)),
                                (plan.with_name(plan.name + ".timing-cache"), (".timing-cache",))):
        check_output_file(companion, suffixes, option=f"--out {plan} writes")
    trt_flavour = import_flavour(flavour)          # fail early, before a long export
    target_list = parse_targets(targets, trt_flavour)
    profile = BatchProfile.parse(batch)
    if sanitize:
        from ddpmrt.export.conversion.polygraphy_tools import load_polygraphy

        load_polygraphy(trt_flavour.is_rtx)

    if model and model.lower().endswith(".onnx") and not from_diffusers:
        onnx_path = Path(model)
        if not onnx_path.is_file():
            raise UserError(f"{onnx_path} not found")
        metadata = read_onnx_metadata(onnx_path, schedule, image_shape)
    else:
        from ddpmrt.export.conversion.onnx_export import export_onnx

        source = export_source(model, from_diffusers, schedule, precision)
        onnx_path = plan.with_suffix(".onnx")
        metadata = source.metadata
        if onnx_is_current(onnx_path, metadata, opset):
            print(f"{onnx_path} is up to date")
        else:
            result = export_onnx(source.module, metadata, onnx_path, opset=opset, unwrap=source.unwrap)
            print(f"wrote {onnx_path} ({metadata.precision}) in {result.seconds:.1f} s")

    result = build_engine(onnx_path, plan, metadata, sha256_file(onnx_path), trt_flavour, profile, target_list,
                          optimization_level, force=force, sanitize=sanitize)
    what = (f"{trt_flavour.name} {trt_flavour.version}, {metadata.precision}, batch {profile}, "
            f"targets {','.join(result.sidecar['targets'])}")
    size_mb = result.sidecar["engine_bytes"] / 1e6
    if result.cached:
        print(f"{plan} is up to date ({what}, {size_mb:.1f} MB); --force rebuilds")
    else:
        print(f"built {plan} ({what}) in {result.seconds:.1f} s, {size_mb:.1f} MB")
    if not from_diffusers:
        carry_tuned(model, onnx_path)
        carry_tuned(str(onnx_path), plan)
    return onnx_path, plan


def carry_tuned(model: str | None, artifact: Path) -> None:
    """The tuned timesteps of the model exported (a checkpoint's schedules.json, or an .onnx's) to the artifact."""
    from ddpmrt.engine.artifacts.schedules import carry_schedules
    from ddpmrt.engine.backends import resolve_model_path

    if not model or Path(model) == Path(artifact):
        return
    written = carry_schedules(resolve_model_path(model), Path(artifact))
    if written is not None:
        print(f"carried the tuned timesteps over to {written}")


def sampling_backend(flavour) -> tuple[str, str]:
    """(backend, device) the demo samples on: TensorRT on a GPU its flavour supports, else torch on CUDA,
    else on the CPU the first installed of OpenVINO (bf16 where that is faster: the shipped model's own
    model.onnx, nothing to export) and ONNX Runtime, as `ddpmrt sample` of an .onnx picks."""
    from ddpmrt.engine.backends.tensorrt_flavour import RTX_TARGETS
    from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability

    capability = device_compute_capability()
    if capability is not None:
        gpu = "sm{}{}".format(*capability)
        if flavour is not None and (not flavour.is_rtx or gpu in RTX_TARGETS):  # RTX: no Hopper
            return "tensorrt", "cuda"
        import torch

        if torch.cuda.is_available():
            return "torch", "cuda"
    from ddpmrt.engine.backends import openvino_backend

    return ("openvino" if openvino_backend.available() else "onnxruntime"), "cpu"
