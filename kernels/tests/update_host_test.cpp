// Host test of kernels/update_step.h: the fused update of one step, with one noise key per image and
// the multistep columns (earlier x0 in the ring, the corrected sample), against NumPy's apply_update
// (engine/samplers.py) on the cases in update_vectors.txt.
//
//     update_host_test PATH/TO/update_vectors.txt
#include "../update_step.h"

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <vector>

static bool read_floats(FILE* f, const char* tag, std::vector<float>& out) {
    char word[32];
    if (std::fscanf(f, "%31s", word) != 1 || std::strcmp(word, tag) != 0) return false;
    for (float& v : out)
        if (std::fscanf(f, "%f", &v) != 1) return false;
    return true;
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::printf("usage: %s update_vectors.txt\n", argv[0]);
        return 2;
    }
    FILE* f = std::fopen(argv[1], "r");
    if (!f) {
        std::printf("cannot open %s\n", argv[1]);
        return 2;
    }
    int checks = 0, failures = 0, cases = 0;
    char word[32];
    while (std::fscanf(f, "%31s", word) == 1) {
        if (word[0] == '#') {  // a comment: skip the rest of the line
            int c;
            while ((c = std::fgetc(f)) != '\n' && c != EOF) {
            }
            continue;
        }
        unsigned elements, n;
        int step;
        float clip, coeffs[ddpmrt::COEFFS_PER_STEP];
        bool ok = std::strcmp(word, "case") == 0 && std::fscanf(f, "%u %u %d %f", &elements, &n, &step, &clip) == 4;
        for (int i = 0; ok && i < ddpmrt::COEFFS_PER_STEP; ++i) ok = std::fscanf(f, "%f", &coeffs[i]) == 1;
        if (!ok) {
            std::printf("malformed case in %s\n", argv[1]);
            return 2;
        }
        std::vector<ddpmrt_image_key> keys(n);
        for (ddpmrt_image_key& key : keys) {
            unsigned long long seed;
            unsigned image;
            if (std::fscanf(f, "%31s %llu %u", word, &seed, &image) != 3) return 2;
            key.seed = seed, key.image = image, key.reserved = 0;
        }
        const size_t size = (size_t)elements * n;
        std::vector<float> x(size), eps(size), h1(size), h2(size), h3(size), p(size), expected(size), x0(size), xc(size);
        if (!read_floats(f, "x", x) || !read_floats(f, "eps", eps) || !read_floats(f, "h1", h1) ||
            !read_floats(f, "h2", h2) || !read_floats(f, "h3", h3) || !read_floats(f, "p", p) ||
            !read_floats(f, "expected", expected) || !read_floats(f, "x0", x0) || !read_floats(f, "xc", xc)) {
            std::printf("malformed arrays in %s\n", argv[1]);
            return 2;
        }
        ++cases;
        // The ring as the kernel lays it out: H_k in slot (step - k) % 4; this step writes slot step % 4.
        std::vector<float> ring(ddpmrt::HISTORY_SLOTS * size, 0.0f);
        const std::vector<float>* earlier[3] = {&h1, &h2, &h3};
        for (int k = 1; k <= 3; ++k)
            std::copy(earlier[k - 1]->begin(), earlier[k - 1]->end(),
                      ring.begin() + (size_t)((step - k + 16) % ddpmrt::HISTORY_SLOTS) * size);
        std::vector<float> corrected = p;
        const ddpmrt::Coefficients k = ddpmrt::coefficients_at(coeffs, 0);
        for (uint64_t g = 0; g < ddpmrt::block_count(elements, n); ++g)
            ddpmrt::update_block(x.data(), eps.data(), keys.data(), k, clip, step, g, elements, n, ring.data(),
                                 corrected.data());
        const float* kept_x0 = ring.data() + (size_t)(step % ddpmrt::HISTORY_SLOTS) * size;
        for (size_t i = 0; i < size; ++i) {
            const float got[3] = {x[i], kept_x0[i], corrected[i]}, want[3] = {expected[i], x0[i], xc[i]};
            const char* what[3] = {"x_prev", "kept x0", "corrected sample"};
            for (int j = 0; j < 3; ++j) {
                ++checks;
                if (std::fabs(got[j] - want[j]) > 1e-5f * (1.0f + std::fabs(want[j]))) {
                    std::printf("FAIL case %d element %zu %s: %.9e != %.9e\n", cases, i, what[j], got[j], want[j]);
                    ++failures;
                }
            }
        }
    }
    std::fclose(f);
    if (cases == 0) {
        std::printf("no cases read from %s\n", argv[1]);
        return 2;
    }
    std::printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
