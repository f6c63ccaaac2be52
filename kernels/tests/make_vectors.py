"""Writes philox_vectors.txt: noise values from the Python generator for the C++ host test.

    python kernels/tests/make_vectors.py > kernels/tests/philox_vectors.txt

tests/test_kernels.py checks that the committed file is what the generator produces today.
"""

import numpy as np

from ddpmrt.engine.philox import STREAM_INITIAL, STREAM_STEP, gaussian_noise, uniform_noise

CASES = [  # seed, image index, step, stream, elements
    (0, 0, 0, STREAM_INITIAL, 8),
    (42, 5, 0, STREAM_INITIAL, 7),
    (0x0123456789ABCDEF, 3, 7, STREAM_STEP, 11),
    (2 ** 64 - 1, 2 ** 32 - 1, 999, STREAM_STEP, 6),
]


def lines() -> list[str]:
    out = ["# seed image step stream element uniform_bits normal"]
    for seed, image, step, stream, n in CASES:
        u = uniform_noise(seed, [image], step, stream, (n,)).ravel()
        z = gaussian_noise(seed, [image], step, stream, (n,)).ravel()
        for e in range(n):
            bits = int(np.float32(u[e]).view(np.uint32))
            out.append(f"{seed} {image} {step} {stream} {e} {bits:08x} {z[e]:.9e}")
    return out


if __name__ == "__main__":
    print("\n".join(lines()))
