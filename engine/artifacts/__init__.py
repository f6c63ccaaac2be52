"""Model artifacts: what a model file says about itself, the checksums that guard it, its sidecar.

    metadata   ModelMetadata: schedule, image shape, precision (ONNX metadata_props, sidecars)
    integrity  SHA-256 seals of ONNX files and JSON documents
    sidecar    the `.plan.json` / `.pt2.json` beside an engine or package: written, read, checked
    io         atomic writes and output-path checks
"""
