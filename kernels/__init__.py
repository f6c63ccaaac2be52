"""The CUDA C++ sources of ddpmrt's kernels, shipped with the package so the runtime can
compile them with NVRTC (ddpmrt.engine.gpu.kernels); CMakeLists.txt builds the same files."""
