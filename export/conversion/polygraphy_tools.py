"""Polygraphy, where TensorRT users reach for it: sanitizing an ONNX before a build, and inspecting
an engine.  (Comparing artifacts against PyTorch is `ddpmrt check`: export/evaluation/check.py.)

    sanitize_onnx(src, dst)        -> what was applied (constant folding, shape inference), node counts
    inspect_engine(plan, flavour)  -> inputs, outputs, profiles and layer count of a built engine

Polygraphy reads POLYGRAPHY_USE_TENSORRT_RTX into `polygraphy.config` at its first import, and its
TensorRT backend binds the module it imports (tensorrt or tensorrt_rtx) when that backend is first
imported.  So `load_polygraphy(rtx)` sets the flavour in both places while it can still change, and a
call naming the other flavour after the TensorRT backend was loaded is one line (callers decide the
flavour first: `ddpmrt check` reads it from the engines' sidecars).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ddpmrt.engine.errors import UserError, first_line

INSTALL = "pip install polygraphy onnx-graphsurgeon (both come with the extras tensorrt-rtx, tensorrt, gpu and dev)"


def load_polygraphy(rtx: bool | None = None):
    """The polygraphy package, quiet; its TensorRT runners on TensorRT-RTX where `rtx`, on TensorRT where False
    (None: no engine involved, the flavour is left as it is).  A UserError naming the install if missing."""
    if rtx is not None:
        if "polygraphy.backend.trt" in sys.modules and sys.modules["polygraphy.config"].USE_TENSORRT_RTX != rtx:
            loaded = "TensorRT-RTX" if not rtx else "TensorRT"
            raise UserError(f"Polygraphy's TensorRT runners are already loaded for {loaded} in this process; check "
                            f"{'TensorRT-RTX' if rtx else 'TensorRT'} engines in a command of their own")
        os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1" if rtx else "0"  # for the first import
    try:
        import polygraphy
        from polygraphy import config
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise UserError(f"this needs Polygraphy: {INSTALL}") from None
    if rtx is not None:
        config.USE_TENSORRT_RTX = rtx  # read when the TensorRT backend is first imported (trt_importer)
    G_LOGGER.module_severity = G_LOGGER.ERROR  # its progress lines are not ours to print
    return polygraphy


def sanitize_onnx(src: Path, dst: Path) -> dict:
    """`polygraphy surgeon sanitize --fold-constants`, as a function: constant folding (until nothing
    more folds) and shape inference.  Writes `dst`; returns what was applied and what it changed."""
    load_polygraphy()
    import onnx
    from polygraphy.backend.onnx import fold_constants, infer_shapes

    model = onnx.load(str(src))
    nodes_before = len(model.graph.node)
    start = time.perf_counter()
    try:
        model = fold_constants(model, num_passes=None, do_shape_inference=True, error_ok=False)
        model = infer_shapes(model, error_ok=False)
    except ImportError as exc:  # fold_constants needs onnx-graphsurgeon and onnxruntime
        raise UserError(f"sanitizing the ONNX needs {exc.name}: {INSTALL}") from None
    except Exception as exc:  # Polygraphy raises its own PolygraphyException and what ONNX Runtime raised
        raise UserError(f"Polygraphy could not sanitize {Path(src).name}: {first_line(exc)}") from None
    onnx.save(model, str(dst))
    return {"applied": ["fold_constants", "infer_shapes"], "nodes_before": nodes_before,
            "nodes_after": len(model.graph.node), "seconds": round(time.perf_counter() - start, 2)}


def inspect_engine(plan: Path, rtx: bool) -> dict:
    """What a built engine holds, as Polygraphy reads it back: its I/O tensors (name, mode, dtype,
    shape: `get_metadata_from_engine`), its optimization profiles (min/opt/max of each input), its
    layer count, and the summary `polygraphy inspect model` prints (`str_from_engine`).

    Deserializing needs a GPU and its driver (TensorRT-RTX too): a UserError says so where there is none.
    """
    load_polygraphy(rtx)
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.backend.trt import util as trt_util
    from polygraphy.mod.trt_importer import lazy_import_trt

    trt = lazy_import_trt()
    try:
        engine = EngineFromBytes(Path(plan).read_bytes())()
    except Exception as exc:
        raise UserError(f"cannot deserialize {Path(plan).name} here ({first_line(exc, 160)}); engine inspection "
                        "needs a GPU with its driver") from None
    if engine is None:
        raise UserError(f"cannot deserialize {Path(plan).name} here; engine inspection needs a GPU with its driver")
    context = engine.create_execution_context()
    tensors = []
    for mode, label in ((trt.TensorIOMode.INPUT, "input"), (trt.TensorIOMode.OUTPUT, "output")):
        for name, meta in trt_util.get_metadata_from_engine(engine, context, mode).items():
            tensors.append({"name": name, "mode": label, "dtype": str(meta.dtype), "shape": list(meta.shape)})
    inputs = [t["name"] for t in tensors if t["mode"] == "input"]
    profiles = [{name: [list(s) for s in engine.get_tensor_profile_shape(name, p)] for name in inputs}
                for p in range(engine.num_optimization_profiles)]
    return {"tensors": tensors, "profiles": profiles, "layers": int(engine.num_layers),
            "summary": trt_util.str_from_engine(engine, context)}
