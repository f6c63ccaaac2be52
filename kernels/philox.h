// Philox4x32-10 noise, host and device: the C++ twin of engine/philox.py.
//
// The specification (counter layout, uniform and normal conversion) is written out in
// engine/philox.py; this file implements exactly that, so a GPU run and a CPU run from the same
// seed draw the same noise.  It compiles with nvcc, NVRTC (no system headers) and any C++11 host
// compiler.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define DDPMRT_HD __host__ __device__ __forceinline__
#else
#define DDPMRT_HD inline
#endif

#if defined(__CUDACC_RTC__)
// NVRTC compiles without system headers: its builtins provide log, sqrt, cos, sin.
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#else
#include <cmath>
#include <cstdint>
#endif

namespace ddpmrt {

const uint32_t PHILOX_M0 = 0xD2511F53u;
const uint32_t PHILOX_M1 = 0xCD9E8D57u;
const uint32_t PHILOX_W0 = 0x9E3779B9u;  // key schedule: golden ratio
const uint32_t PHILOX_W1 = 0xBB67AE85u;  // key schedule: sqrt(3) - 1

const uint32_t STREAM_INITIAL = 0;  // x_T
const uint32_t STREAM_STEP = 1;     // z of step i

struct Words4 {
    uint32_t w[4];
};

// Ten rounds of Philox4x32 on counter c under key (k0, k1).
DDPMRT_HD Words4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
    for (int round = 0; round < 10; ++round) {
        if (round) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        const uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        const uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    Words4 out = {{c0, c1, c2, c3}};
    return out;
}

// 24 random bits to a float in (0, 1], exactly: ((w >> 8) + 1) * 2^-24.
DDPMRT_HD float uniform_from_word(uint32_t w) {
    return ((float)(w >> 8) + 1.0f) * 5.9604644775390625e-08f;
}

// Box-Muller on one lane pair, in double precision and rounded once, as the NumPy generator does:
// the specification, bit for bit.
DDPMRT_HD void box_muller(uint32_t w_even, uint32_t w_odd, float* z_even, float* z_odd) {
    const double u_even = (double)uniform_from_word(w_even);
    const double u_odd = (double)uniform_from_word(w_odd);
    const double r = sqrt(-2.0 * log(u_even));
    const double theta = 2.0 * 3.141592653589793 * u_odd;
    *z_even = (float)(r * cos(theta));
    *z_odd = (float)(r * sin(theta));
}

// Box-Muller in single precision: what the GPU runs.  Double-precision log, sqrt, sin and cos are
// long instruction sequences on GPUs (a quarter of the fused update's bandwidth went to them on an
// H100); logf, sqrtf (IEEE, no fast math) and sincospif (the angle 2u is exact, so π is applied
// inside the function at full accuracy) stay within 5e-7 of the double-precision values for every
// 24-bit input (max over 80 M normals: 4.8e-7), far inside the update's 1e-5 budget.
DDPMRT_HD void box_muller_fp32(uint32_t w_even, uint32_t w_odd, float* z_even, float* z_odd) {
    const float u_even = uniform_from_word(w_even);
    const float u_odd = uniform_from_word(w_odd);
    const float r = sqrtf(-2.0f * logf(u_even));
    float s, c;
#if defined(__CUDA_ARCH__)
    sincospif(2.0f * u_odd, &s, &c);
#else
    // Host stand-in for sincospif (not in the C library): sin and cos of π·2u, rounded once.
    const double theta = 3.141592653589793 * (double)(2.0f * u_odd);
    s = (float)sin(theta);
    c = (float)cos(theta);
#endif
    *z_even = r * c;
    *z_odd = r * s;
}

// The four normals of block `group` (elements 4*group .. 4*group+3) of one image: the fp32
// Box-Muller on the device, the exact specification on the host.
DDPMRT_HD void normal4(uint64_t seed, uint32_t image, uint32_t step, uint32_t stream, uint32_t group, float z[4]) {
    const Words4 r = philox4x32_10(group, image, step, stream, (uint32_t)seed, (uint32_t)(seed >> 32));
#if defined(__CUDA_ARCH__)
    box_muller_fp32(r.w[0], r.w[1], &z[0], &z[1]);
    box_muller_fp32(r.w[2], r.w[3], &z[2], &z[3]);
#else
    box_muller(r.w[0], r.w[1], &z[0], &z[1]);
    box_muller(r.w[2], r.w[3], &z[2], &z[3]);
#endif
}

}  // namespace ddpmrt
