// One element block of the fused sampler update, host and device: what ddpm_update.cu's kernel
// runs per thread, and what kernels/tests/update_host_test.cpp checks against NumPy on the CPU.
//
//     x0     = (x_t - s1 * eps) / s0            predicted x_0
//     x0     = clamp(x0, -clip, clip)           if clip > 0
//     x_prev = a * x0 + b * x_t + c * eps + sigma * z,   z from Philox (philox.h)
//
// This is engine/samplers.py's apply_update.  Every image of a batch carries its own noise key
// (ddpmrt_image_key: its seed and its image index), so one batch may hold several requests, each
// with its own seed, and still give each request the images it gets alone.
#pragma once

#include "philox.h"

// One per image of the batch, in a device table; Python mirrors it (IMAGE_KEY_DTYPE, engine/gpu/kernels.py).
struct ddpmrt_image_key {
    uint64_t seed;      // Philox key
    uint32_t image;     // the image's index in its run (counter word 1), not its row in the batch
    uint32_t reserved;  // 16 bytes, 8-byte aligned
};

// What a run changes without changing the graph; 16 bytes in device memory (RUN_PARAMS_DTYPE).
struct ddpmrt_run_params {
    float clip;            // clip x0 to [-clip, clip]; 0 = no clipping
    uint32_t reserved[3];
};

namespace ddpmrt {

const int COEFFS_PER_STEP = 6;  // s0, s1, a, b, c, sigma

struct Coefficients {
    float s0, s1, a, b, c, sigma;
};

DDPMRT_HD Coefficients coefficients_at(const float* table, int step) {
    const float* row = table + (long long)step * COEFFS_PER_STEP;
    const Coefficients k = {row[0], row[1], row[2], row[3], row[4], row[5]};
    return k;
}

DDPMRT_HD float update_one(float xt, float e, float z, const Coefficients& k, float clip) {
    float x0 = (xt - k.s1 * e) / k.s0;
    if (clip > 0.0f) x0 = fminf(fmaxf(x0, -clip), clip);
    return k.a * x0 + k.b * xt + k.c * e + k.sigma * z;
}

// The noise z of step `step` for block `group` of an image: zero where the step adds none.
DDPMRT_HD void step_noise(const ddpmrt_image_key& key, uint32_t step, uint32_t group, const Coefficients& k,
                          float z[4]) {
    z[0] = z[1] = z[2] = z[3] = 0.0f;
    if (k.sigma > 0.0f) normal4(key.seed, key.image, step, STREAM_STEP, group, z);
}

// Block g of the flattened batch: four consecutive elements of one image (one Philox call).
struct Block {
    uint32_t image, group, count;  // row in the batch, block in the image, valid lanes (1-4)
    uint64_t base;                 // index of its first element in the batch
};

DDPMRT_HD Block block_at(uint64_t g, uint32_t elements_per_image) {
    const uint32_t groups_per_image = (elements_per_image + 3u) / 4u;
    Block b;
    b.image = (uint32_t)(g / groups_per_image);
    b.group = (uint32_t)(g % groups_per_image);
    const uint32_t left = elements_per_image - 4u * b.group;
    b.count = left < 4u ? left : 4u;
    b.base = (uint64_t)b.image * elements_per_image + 4ull * b.group;
    return b;
}

DDPMRT_HD uint64_t block_count(uint32_t elements_per_image, uint32_t n_images) {
    return (uint64_t)((elements_per_image + 3u) / 4u) * n_images;
}

// The scalar path of one block, in place on fp32 x with fp32 eps: the reference the vectorized
// device path must equal (and what the host test runs).
DDPMRT_HD void update_block(float* x, const float* eps, const ddpmrt_image_key* keys, const Coefficients& k,
                            float clip, int step, uint64_t g, uint32_t elements_per_image) {
    const Block b = block_at(g, elements_per_image);
    float z[4];
    step_noise(keys[b.image], (uint32_t)step, b.group, k, z);
    for (uint32_t lane = 0; lane < b.count; ++lane) x[b.base + lane] = update_one(x[b.base + lane], eps[b.base + lane], z[lane], k, clip);
}

}  // namespace ddpmrt
