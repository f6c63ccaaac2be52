// Host test of kernels/update_step.h: the fused update of one step, with one noise key per image,
// against NumPy's apply_update (engine/samplers.py) on the cases in update_vectors.txt.
//
//     update_host_test PATH/TO/update_vectors.txt
#include "../update_step.h"

#include <cmath>
#include <cstdio>
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
        float clip, coeffs[6];
        if (std::strcmp(word, "case") != 0 ||
            std::fscanf(f, "%u %u %d %f %f %f %f %f %f %f", &elements, &n, &step, &clip, &coeffs[0], &coeffs[1],
                        &coeffs[2], &coeffs[3], &coeffs[4], &coeffs[5]) != 10) {
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
        std::vector<float> x(elements * n), eps(elements * n), expected(elements * n);
        if (!read_floats(f, "x", x) || !read_floats(f, "eps", eps) || !read_floats(f, "expected", expected)) {
            std::printf("malformed arrays in %s\n", argv[1]);
            return 2;
        }
        ++cases;
        const ddpmrt::Coefficients k = ddpmrt::coefficients_at(coeffs, 0);
        for (uint64_t g = 0; g < ddpmrt::block_count(elements, n); ++g)
            ddpmrt::update_block(x.data(), eps.data(), keys.data(), k, clip, step, g, elements);
        for (size_t i = 0; i < x.size(); ++i) {
            ++checks;
            if (std::fabs(x[i] - expected[i]) > 1e-5f * (1.0f + std::fabs(expected[i]))) {
                std::printf("FAIL case %d element %zu: %.9e != %.9e\n", cases, i, x[i], expected[i]);
                ++failures;
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
