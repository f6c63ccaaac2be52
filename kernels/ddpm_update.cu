// The fused sampler update: one pass over memory per step, for every sampler (DDPM, DDIM with any
// eta, and the multistep solvers DPM-Solver++ and UniPC, which also read earlier steps' x0).
//
//     x0     = (x_t - s1 * eps) / s0                                   predicted x_0
//     x0     = clamp(x0, -clip, clip)                                  if clip > 0
//     x_c    = (1 + qx) * x_t + q0 * x0 + sum_k qk * H_k + qp * P      UniPC's corrector (x_t otherwise)
//     x_prev = a * x0 + b * x_c + c * eps + sum_k hk * H_k + sigma * z,  z from Philox (philox.h)
//
// This is engine/samplers.py's apply_update (the per-element part is update_step.h).  The 16
// coefficients of every step live in a device table, each image's noise
// key (seed, image index) in another, and the clip value in a small device struct, so one captured
// CUDA graph serves every run of that shape and step count: a new sampler, seed, or mix of
// requests with their own seeds is a copy into device memory, not a re-capture.  eps is read as
// fp16 or fp32 (what the network wrote), x is updated in place in fp32, and an fp16 copy of
// x_prev can be written for the next network input: the cast, the update and the noise that a
// framework would launch as separate kernels.  12 bytes per element with fp16 eps (DDIM, DDPM), plus
// 4 per earlier x0 read and 4 for the x0 kept by a multistep solver: bandwidth-bound.
//
// The same source compiles with nvcc (CMake, C ABI below) and with NVRTC at run time (the
// Python runtime), so it includes nothing but update_step.h and philox.h.
#include "update_step.h"

namespace ddpmrt {

__device__ __forceinline__ float half_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short float_to_half(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

}  // namespace ddpmrt

// Four consecutive floats of one block: one 16-byte access on the vectorized path.
__device__ __forceinline__ void load4(const float* p, unsigned long long base, unsigned int count, int vectorized,
                                      float v[4]) {
    if (vectorized) {
        const float4 t = *reinterpret_cast<const float4*>(p + base);
        v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
    } else {
        for (unsigned int lane = 0; lane < count; ++lane) v[lane] = p[base + lane];
    }
}

__device__ __forceinline__ void store4(float* p, unsigned long long base, unsigned int count, int vectorized,
                                       const float v[4]) {
    if (vectorized) {
        *reinterpret_cast<float4*>(p + base) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
        for (unsigned int lane = 0; lane < count; ++lane) p[base + lane] = v[lane];
    }
}

// One thread per block of four elements of one image: the four normals of one Philox call.
// `vectorized` (decided by the host: elements_per_image % 4 == 0 and 16-byte aligned buffers)
// turns the four loads and stores of each array into one.  `history` (4 slots of n x elements floats)
// and `corrected` (n x elements) are read and written only where the step's row says so; they may be
// null for samplers without history (DDIM, DDPM).
extern "C" __global__ void ddpmrt_update_kernel(float* __restrict__ x, const void* __restrict__ eps,
                                                unsigned short* __restrict__ x_half,
                                                const float* __restrict__ coeff_table,
                                                const ddpmrt_image_key* __restrict__ keys,
                                                const ddpmrt_run_params* __restrict__ params,
                                                float* __restrict__ history, float* __restrict__ corrected,
                                                int step, int eps_is_half, unsigned int elements_per_image,
                                                unsigned int n_images, int vectorized) {
    using namespace ddpmrt;
    const Coefficients k = coefficients_at(coeff_table, step);
    const float clip = params->clip;
    const unsigned long long total = block_count(elements_per_image, n_images);
    const unsigned long long batch_elements = (unsigned long long)elements_per_image * n_images;
    const float* h_slot[HISTORY];
    for (int j = 0; j < HISTORY; ++j) h_slot[j] = k.reads[j] ? history_slot(history, step, j + 1, batch_elements) : 0;
    // The ring slot this step writes: its x0 (KEEP_X0) or, for iPNDM, its eps (KEEP_EPS).
    float* kept_slot = (history && (k.keep & (KEEP_X0 | KEEP_EPS)))
                           ? history + (unsigned long long)(step % HISTORY_SLOTS) * batch_elements : 0;
    const float* p_in = (corrected && k.reads_corrected) ? corrected : 0;
    float* p_out = (corrected && (k.keep & KEEP_CORRECTED)) ? corrected : 0;

    for (unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; g < total;
         g += (unsigned long long)gridDim.x * blockDim.x) {
        const Block b = block_at(g, elements_per_image);
        const unsigned long long base = b.base;
        const int vec = vectorized && b.count == 4;
        float z[4];
        step_noise(keys[b.image], (uint32_t)step, b.group, k, z);

        float xt[4] = {0.0f, 0.0f, 0.0f, 0.0f}, e[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        load4(x, base, b.count, vec, xt);
        if (eps_is_half) {
            const unsigned short* eh = static_cast<const unsigned short*>(eps);
            if (vec) {
                const uint2 raw = *reinterpret_cast<const uint2*>(eh + base);
                e[0] = half_to_float((unsigned short)(raw.x & 0xFFFFu));
                e[1] = half_to_float((unsigned short)(raw.x >> 16));
                e[2] = half_to_float((unsigned short)(raw.y & 0xFFFFu));
                e[3] = half_to_float((unsigned short)(raw.y >> 16));
            } else {
                for (unsigned int lane = 0; lane < b.count; ++lane) e[lane] = half_to_float(eh[base + lane]);
            }
        } else {
            load4(static_cast<const float*>(eps), base, b.count, vec, e);
        }
        float h[HISTORY][4] = {}, p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int j = 0; j < HISTORY; ++j)
            if (h_slot[j]) load4(h_slot[j], base, b.count, vec, h[j]);
        if (p_in) load4(p_in, base, b.count, vec, p);

        float out[4], x0[4], xc[4];
        for (unsigned int lane = 0; lane < 4; ++lane) {
            const Earlier earlier = {{h[0][lane], h[1][lane], h[2][lane]}, p[lane]};
            out[lane] = update_one(xt[lane], e[lane], z[lane], k, clip, earlier, &x0[lane], &xc[lane]);
        }
        store4(x, base, b.count, vec, out);
        if (kept_slot) store4(kept_slot, base, b.count, vec, x0);
        if (p_out) store4(p_out, base, b.count, vec, xc);
        if (x_half) {
            if (vec) {
                uint2 hv;
                hv.x = (unsigned int)float_to_half(out[0]) | ((unsigned int)float_to_half(out[1]) << 16);
                hv.y = (unsigned int)float_to_half(out[2]) | ((unsigned int)float_to_half(out[3]) << 16);
                *reinterpret_cast<uint2*>(x_half + base) = hv;
            } else {
                for (unsigned int lane = 0; lane < b.count; ++lane) x_half[base + lane] = float_to_half(out[lane]);
            }
        }
    }
}

// x_T: standard normal noise from the STREAM_INITIAL stream, with an optional fp16 copy.
extern "C" __global__ void ddpmrt_initial_noise_kernel(float* __restrict__ x, unsigned short* __restrict__ x_half,
                                                       const ddpmrt_image_key* __restrict__ keys,
                                                       unsigned int elements_per_image, unsigned int n_images) {
    using namespace ddpmrt;
    const unsigned long long total = block_count(elements_per_image, n_images);
    for (unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; g < total;
         g += (unsigned long long)gridDim.x * blockDim.x) {
        const Block b = block_at(g, elements_per_image);
        float z[4];
        normal4(keys[b.image].seed, keys[b.image].image, 0u, STREAM_INITIAL, b.group, z);
        for (unsigned int lane = 0; lane < b.count; ++lane) {
            x[b.base + lane] = z[lane];
            if (x_half) x_half[b.base + lane] = float_to_half(z[lane]);
        }
    }
}

#if !defined(__CUDACC_RTC__)
// ---- C ABI of the shared library (CMake build; NVRTC users launch the kernels themselves) ----
#include <cuda_runtime.h>

#include <cstdint>

#if defined(_WIN32)
#define DDPMRT_API extern "C" __declspec(dllexport)
#else
#define DDPMRT_API extern "C" __attribute__((visibility("default")))
#endif

enum DdpmrtStatus {
    DDPMRT_OK = 0,
    DDPMRT_NULL_POINTER = 1,       // x, eps, the coefficient table, the image keys or the run parameters is null
    DDPMRT_MISALIGNED = 2,         // x or the fp16 copy not aligned to its element size
    DDPMRT_UNSUPPORTED_DTYPE = 3,  // eps dtype other than fp32 (0) or fp16 (1)
    DDPMRT_BAD_SIZE = 4,           // zero images or elements, or a negative step
    DDPMRT_LAUNCH_FAILED = 5,      // cudaGetLastError after the launch: see cudaGetErrorString
};

DDPMRT_API const char* ddpmrt_status_string(int status) {
    switch (status) {
        case DDPMRT_OK: return "ok";
        case DDPMRT_NULL_POINTER: return "x, eps, the coefficient table, the image keys and the run parameters must be device pointers";
        case DDPMRT_MISALIGNED: return "x must be 4-byte aligned, eps and the fp16 copy aligned to their element size";
        case DDPMRT_UNSUPPORTED_DTYPE: return "eps dtype must be 0 (fp32) or 1 (fp16)";
        case DDPMRT_BAD_SIZE: return "element and image counts must be positive and the step non-negative";
        case DDPMRT_LAUNCH_FAILED: return "the kernel launch failed (see cudaGetLastError)";
        default: return "unknown status";
    }
}

static bool aligned(const void* p, uintptr_t n) { return (reinterpret_cast<uintptr_t>(p) % n) == 0; }

static unsigned int grid_for(unsigned long long groups, int threads) {
    const unsigned long long blocks = (groups + threads - 1) / threads;
    return (unsigned int)(blocks < 65535ull * 32 ? blocks : 65535ull * 32);  // grid-stride loop covers the rest
}

// eps_dtype: 0 fp32, 1 fp16.  x_half may be null.  coeff_table: (num_steps, 16) float32, keys: one
// ddpmrt_image_key per image and params: one ddpmrt_run_params, all in device memory (read when the
// kernel runs, so a captured graph sees updates).  history: 4 x n x elements floats (the x0 ring) and
// corrected: n x elements floats, both needed by multistep samplers (DPM-Solver++, UniPC), null otherwise.
DDPMRT_API int ddpmrt_update(float* x, const void* eps, int eps_dtype, void* x_half, const float* coeff_table,
                             const ddpmrt_image_key* keys, const ddpmrt_run_params* params, float* history,
                             float* corrected, int step, unsigned int elements_per_image, unsigned int n_images,
                             cudaStream_t stream) {
    if (!x || !eps || !coeff_table || !keys || !params) return DDPMRT_NULL_POINTER;
    if (eps_dtype != 0 && eps_dtype != 1) return DDPMRT_UNSUPPORTED_DTYPE;
    if (elements_per_image == 0 || n_images == 0 || step < 0) return DDPMRT_BAD_SIZE;
    const uintptr_t eps_size = eps_dtype ? 2 : 4;
    if (!aligned(x, 4) || !aligned(eps, eps_size) || (x_half && !aligned(x_half, 2)) ||
        (history && !aligned(history, 4)) || (corrected && !aligned(corrected, 4)))
        return DDPMRT_MISALIGNED;
    const int vectorized = elements_per_image % 4 == 0 && aligned(x, 16) && aligned(eps, 4 * eps_size) &&
                           (!x_half || aligned(x_half, 8)) && (!history || aligned(history, 16)) &&
                           (!corrected || aligned(corrected, 16));
    const unsigned long long groups = (unsigned long long)((elements_per_image + 3u) / 4u) * n_images;
    const int threads = 256;
    ddpmrt_update_kernel<<<grid_for(groups, threads), threads, 0, stream>>>(
        x, eps, static_cast<unsigned short*>(x_half), coeff_table, keys, params, history, corrected, step, eps_dtype,
        elements_per_image, n_images, vectorized);
    return cudaGetLastError() == cudaSuccess ? DDPMRT_OK : DDPMRT_LAUNCH_FAILED;
}

DDPMRT_API int ddpmrt_initial_noise(float* x, void* x_half, const ddpmrt_image_key* keys,
                                    unsigned int elements_per_image, unsigned int n_images, cudaStream_t stream) {
    if (!x || !keys) return DDPMRT_NULL_POINTER;
    if (elements_per_image == 0 || n_images == 0) return DDPMRT_BAD_SIZE;
    if (!aligned(x, 4) || (x_half && !aligned(x_half, 2))) return DDPMRT_MISALIGNED;
    const unsigned long long groups = (unsigned long long)((elements_per_image + 3u) / 4u) * n_images;
    const int threads = 256;
    ddpmrt_initial_noise_kernel<<<grid_for(groups, threads), threads, 0, stream>>>(
        x, static_cast<unsigned short*>(x_half), keys, elements_per_image, n_images);
    return cudaGetLastError() == cudaSuccess ? DDPMRT_OK : DDPMRT_LAUNCH_FAILED;
}
#endif  // !__CUDACC_RTC__
