"""The GPU pieces of the runtime: cuda-python helpers, the fused kernel's bindings, the device loop.

    cuda_runtime  every CUDA, driver and NVRTC return code checked; device buffers; graph shapes
    kernels       NVRTC compile-and-cache of kernels/ddpm_update.cu, launches, run parameters
    device_loop   the sampling loop on the device and the contract a GPU network implements

Nothing here imports torch, TensorRT or cuda-python at import time.
"""
