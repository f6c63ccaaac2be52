"""Conversion: ONNX export and its metadata, int8 quantization, TensorRT engines, AOTInductor packages, Polygraphy, the export-engine pipeline and the checkpoint loaders of load_model."""
