// One element block of the fused sampler update, host and device: what ddpm_update.cu's kernel
// runs per thread, and what kernels/tests/update_host_test.cpp checks against NumPy on the CPU.
//
//     x0     = (x_t - s1 * eps) / s0                                   predicted x_0
//     x0     = clamp(x0, -clip, clip)                                  if clip > 0
//     x_c    = (1 + qx) * x_t + q0 * x0 + sum_k qk * H_k + qp * P      UniPC's corrector (x_t otherwise)
//     x_prev = a * x0 + b * x_c + c * eps + sum_k hk * H_k + sigma * z,  z from Philox (philox.h)
//
// This is engine/samplers.py's apply_update, column for column.  H_1..H_3 are the x0 of the three
// previous steps, kept in a ring of four slots (step i writes slot i % 4 and reads slot (i - k) % 4
// as H_k, so nothing is shifted), and P the previous step's corrected sample.  A row that does not
// read them (DDIM, DDPM) costs no extra memory traffic: which buffers a step touches follows from
// its row, the same for every thread.
//
// Every image of a batch carries its own noise key (ddpmrt_image_key: its seed and its image index),
// so one batch may hold several requests, each with its own seed, and still give each request the
// images it gets alone.
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

// The columns of a coefficient-table row (engine/samplers.py: S0 ... KEEP).
enum Column { S0, S1, A, B, C, SIGMA, H1, H2, H3, QX, Q0, Q1, Q2, Q3, QP, KEEP, COEFFS_PER_STEP };
const int HISTORY = 3;        // previous x0 a step may read
const int HISTORY_SLOTS = 4;  // the ring: the three read, and the one this step writes
const int KEEP_X0 = 1;        // KEEP flags: store x0 in the ring,
const int KEEP_CORRECTED = 2;  // store x_c as the next step's P,
const int KEEP_EPS = 4;        // or store eps in the ring instead of x0 (iPNDM; with clipping, (x_t - s0 x0)/s1)

struct Coefficients {
    float v[COEFFS_PER_STEP];
    int keep;                 // KEEP as flags
    bool reads[HISTORY];      // H_k enters x_c or x_prev
    bool reads_corrected;     // P enters x_c
    bool corrects;            // x_c differs from x_t
};

DDPMRT_HD Coefficients coefficients_at(const float* table, int step) {
    Coefficients k;
    const float* row = table + (long long)step * COEFFS_PER_STEP;
    for (int i = 0; i < COEFFS_PER_STEP; ++i) k.v[i] = row[i];
    k.keep = (int)row[KEEP];
    for (int j = 0; j < HISTORY; ++j) k.reads[j] = row[H1 + j] != 0.0f || row[Q1 + j] != 0.0f;
    k.reads_corrected = row[QP] != 0.0f;
    k.corrects = row[QX] != 0.0f || row[Q0] != 0.0f || k.reads_corrected || row[Q1] != 0.0f || row[Q2] != 0.0f ||
                 row[Q3] != 0.0f;
    return k;
}

// The values of one element that a step reads besides x_t and eps (zero where the row does not read them).
struct Earlier {
    float h[HISTORY];
    float p;
};

// One element: returns x_prev, and writes what the step keeps (x0, or eps where KEEP_EPS, and x_c) through
// the pointers.
DDPMRT_HD float update_one(float xt, float e, float z, const Coefficients& k, float clip, const Earlier& earlier,
                           float* x0_out, float* xc_out) {
    const float* v = k.v;
    float x0 = (xt - v[S1] * e) / v[S0];
    if (clip > 0.0f) x0 = fminf(fmaxf(x0, -clip), clip);
    float xc = xt;
    if (k.corrects) {
        xc = (1.0f + v[QX]) * xt + v[Q0] * x0 + v[QP] * earlier.p;
        for (int j = 0; j < HISTORY; ++j) xc += v[Q1 + j] * earlier.h[j];
    }
    float out = v[A] * x0 + v[B] * xc + v[C] * e;
    for (int j = 0; j < HISTORY; ++j) out += v[H1 + j] * earlier.h[j];
    *x0_out = (k.keep & KEEP_EPS) ? (clip > 0.0f ? (xt - v[S0] * x0) / v[S1] : e) : x0;
    *xc_out = xc;
    return out + v[SIGMA] * z;
}

// The noise z of step `step` for block `group` of an image: zero where the step adds none.
DDPMRT_HD void step_noise(const ddpmrt_image_key& key, uint32_t step, uint32_t group, const Coefficients& k,
                          float z[4]) {
    z[0] = z[1] = z[2] = z[3] = 0.0f;
    if (k.v[SIGMA] > 0.0f) normal4(key.seed, key.image, step, STREAM_STEP, group, z);
}

// Where step `step` finds H_k (k = 1..3) and stores its own x0, in a ring of HISTORY_SLOTS slots of
// `batch_elements` floats each (null: no history buffer, which only rows without history may use).
DDPMRT_HD const float* history_slot(const float* ring, int step, int k, uint64_t batch_elements) {
    return ring ? ring + (uint64_t)((step - k + 4 * HISTORY_SLOTS) % HISTORY_SLOTS) * batch_elements : 0;
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
// device path must equal (and what the host test runs).  `ring` and `corrected` may be null for
// rows that neither read nor keep them.
DDPMRT_HD void update_block(float* x, const float* eps, const ddpmrt_image_key* keys, const Coefficients& k,
                            float clip, int step, uint64_t g, uint32_t elements_per_image, uint32_t n_images,
                            float* ring, float* corrected) {
    const Block b = block_at(g, elements_per_image);
    const uint64_t batch_elements = (uint64_t)elements_per_image * n_images;
    float z[4];
    step_noise(keys[b.image], (uint32_t)step, b.group, k, z);
    for (uint32_t lane = 0; lane < b.count; ++lane) {
        const uint64_t i = b.base + lane;
        Earlier earlier;
        for (int j = 0; j < HISTORY; ++j) {
            const float* slot = history_slot(ring, step, j + 1, batch_elements);
            earlier.h[j] = (k.reads[j] && slot) ? slot[i] : 0.0f;
        }
        earlier.p = (k.reads_corrected && corrected) ? corrected[i] : 0.0f;
        float x0, xc;
        x[i] = update_one(x[i], eps[i], z[lane], k, clip, earlier, &x0, &xc);
        if ((k.keep & (KEEP_X0 | KEEP_EPS)) && ring) ring[(uint64_t)(step % HISTORY_SLOTS) * batch_elements + i] = x0;
        if ((k.keep & KEEP_CORRECTED) && corrected) corrected[i] = xc;
    }
}

}  // namespace ddpmrt
