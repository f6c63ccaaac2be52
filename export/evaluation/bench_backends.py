"""The rows `ddpmrt bench` can time, by name: declared once, torch-free, so that the command line lists
them in its help without importing the bench (and torch)."""

BENCH_BACKENDS = ("torch-cpu", "inductor-cpu", "onnxruntime-cpu", "openvino-cpu", "openvino-default", "torch-cuda",
                  "torch-cuda-graph", "inductor-cuda", "onnxruntime-cuda", "tensorrt")
# AOTInductor packages: an ahead-of-time build each (minutes for cifar10), so never part of "all"; nor is the
# int8 ONNX file on OpenVINO (export-onnx --precision int8: a calibration run first, about a minute for cifar10).
PACKAGE_BACKENDS = ("inductor-package-cpu", "inductor-package-cuda")
CALIBRATED_BACKENDS = ("openvino-int8-cpu",)
BY_NAME_BACKENDS = PACKAGE_BACKENDS + CALIBRATED_BACKENDS
DIFFUSERS_COMPILED = ("auto", "always", "never")
