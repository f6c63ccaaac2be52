"""The backends `ddpmrt bench` times and `ddpmrt report` runs, by name: derived from load_model's own list
(engine/backends BACKENDS) and torch-free, so that the command line lists them without importing torch.

A bench row is BACKEND-DEVICE (or a named variant of a backend: openvino-default, torch-cuda-graph,
openvino-int8-cpu, inductor-package-*); every row's backend is one of BACKENDS (a test checks).
"""

from ddpmrt.engine.backends import BACKENDS

BENCH_BACKENDS = ("torch-cpu", "inductor-cpu", "onnxruntime-cpu", "openvino-cpu", "openvino-default", "torch-cuda",
                  "torch-cuda-graph", "inductor-cuda", "onnxruntime-cuda", "tensorrt")
# AOTInductor packages: an ahead-of-time build each (minutes for cifar10), so never part of "all"; nor is the
# int8 ONNX file on OpenVINO (export-onnx --precision int8: a calibration run first, about a minute for cifar10).
PACKAGE_BACKENDS = ("inductor-package-cpu", "inductor-package-cuda")
CALIBRATED_BACKENDS = ("openvino-int8-cpu",)
BY_NAME_BACKENDS = PACKAGE_BACKENDS + CALIBRATED_BACKENDS
DIFFUSERS_COMPILED = ("auto", "always", "never")

# report runs every named backend but inductor (its compile, per model and per batch, would dominate a quality
# report; report --backend torch gives the same network eagerly).
REPORT_BACKENDS = tuple(b for b in BACKENDS if b not in ("auto", "inductor"))


def row_backend(row: str) -> str:
    """The load_model backend a bench row runs: the longest name of BACKENDS that starts it."""
    return max((b for b in BACKENDS if row == b or row.startswith(b + "-")), key=len, default="")
