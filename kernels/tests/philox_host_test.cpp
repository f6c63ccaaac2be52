// Host test of kernels/philox.h: Random123's known-answer vectors, and bit-for-bit agreement
// with the Python generator (engine/philox.py) on the values in philox_vectors.txt.
//
//     philox_host_test PATH/TO/philox_vectors.txt
#include "../philox.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>

struct KnownAnswer {
    uint32_t counter[4], key[2], expected[4];
};

// From shared/reference/philox4x32-10.md (Random123 kat_vectors).
static const KnownAnswer KNOWN_ANSWERS[] = {
    {{0x00000000, 0x00000000, 0x00000000, 0x00000000}, {0x00000000, 0x00000000},
     {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

int main(int argc, char** argv) {
    int failures = 0, checks = 0;
    for (const KnownAnswer& kat : KNOWN_ANSWERS) {
        const ddpmrt::Words4 out = ddpmrt::philox4x32_10(kat.counter[0], kat.counter[1], kat.counter[2], kat.counter[3],
                                                         kat.key[0], kat.key[1]);
        ++checks;
        if (std::memcmp(out.w, kat.expected, sizeof out.w) != 0) {
            std::printf("FAIL known answer for counter %08x...: got %08x %08x %08x %08x\n", kat.counter[0], out.w[0],
                        out.w[1], out.w[2], out.w[3]);
            ++failures;
        }
    }

    if (argc < 2) {
        std::printf("usage: %s philox_vectors.txt\n", argv[0]);
        return 2;
    }
    FILE* f = std::fopen(argv[1], "r");
    if (!f) {
        std::printf("cannot open %s\n", argv[1]);
        return 2;
    }
    char line[256];
    int vectors = 0;
    while (std::fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        unsigned long long seed;
        unsigned image, step, stream, element, bits;
        double expected_normal;
        if (std::sscanf(line, "%llu %u %u %u %u %x %lf", &seed, &image, &step, &stream, &element, &bits,
                        &expected_normal) != 7)
            continue;
        ++vectors;
        const uint32_t group = element / 4, lane = element % 4;
        const ddpmrt::Words4 words = ddpmrt::philox4x32_10(group, image, step, stream, (uint32_t)seed,
                                                           (uint32_t)(seed >> 32));
        const float u = ddpmrt::uniform_from_word(words.w[lane]);
        uint32_t u_bits;
        std::memcpy(&u_bits, &u, sizeof u_bits);
        float z[4];
        ddpmrt::normal4(seed, image, step, stream, group, z);
        checks += 2;
        if (u_bits != bits) {
            std::printf("FAIL uniform seed %llu image %u step %u element %u: %08x != %08x\n", seed, image, step,
                        element, u_bits, bits);
            ++failures;
        }
        if (std::fabs(z[lane] - expected_normal) > 1e-6) {
            std::printf("FAIL normal seed %llu image %u step %u element %u: %.9e != %.9e\n", seed, image, step,
                        element, z[lane], expected_normal);
            ++failures;
        }
    }
    std::fclose(f);
    if (vectors == 0) {
        std::printf("no vectors read from %s\n", argv[1]);
        return 2;
    }

    // The GPU's single-precision Box-Muller against the double-precision specification, over the
    // extreme words (u = 2^-24 and u = 1, angle 0 and 2π) and a million Philox words.
    const uint32_t extremes[] = {0u, 0xFFu, 0x100u, 0x7FFFFFFFu, 0xFFFFFF00u, 0xFFFFFFFFu};
    double worst = 0.0;
    for (uint32_t i = 0; i < 1000000u + 36u; ++i) {
        uint32_t w_even, w_odd;
        if (i < 36u) {
            w_even = extremes[i / 6];
            w_odd = extremes[i % 6];
        } else {
            const ddpmrt::Words4 words = ddpmrt::philox4x32_10(i, 0, 0, 0, 12345u, 678u);
            w_even = words.w[0];
            w_odd = words.w[1];
        }
        float spec[2], fast[2];
        ddpmrt::box_muller(w_even, w_odd, &spec[0], &spec[1]);
        ddpmrt::box_muller_fp32(w_even, w_odd, &fast[0], &fast[1]);
        for (int k = 0; k < 2; ++k) worst = std::fmax(worst, std::fabs((double)fast[k] - (double)spec[k]));
    }
    ++checks;
    if (worst > 2e-6) {
        std::printf("FAIL single-precision Box-Muller: max |fp32 - fp64| = %.3e > 2e-6\n", worst);
        ++failures;
    } else {
        std::printf("single-precision Box-Muller: max |fp32 - fp64| = %.3e\n", worst);
    }
    std::printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
