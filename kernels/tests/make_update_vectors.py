"""Writes update_vectors.txt: the sampler update from NumPy for the C++ host test of update_step.h.

    python kernels/tests/make_update_vectors.py > kernels/tests/update_vectors.txt

Each case is one step over a small batch whose images carry their own (seed, image index) keys,
as a served batch of several requests does; tests/test_kernels.py checks that the committed
file is what this script produces today.
"""

import numpy as np

from ddpmrt.engine.philox import STREAM_STEP, gaussian_noise
from ddpmrt.engine.samplers import apply_update

CASES = [  # elements per image, (seed, image index) per image, step, clip, coefficients (s0, s1, a, b, c, sigma)
    (7, [(0, 0), (42, 5), (2 ** 64 - 1, 2 ** 32 - 1)], 4, 1.0, (0.8, 0.6, 0.7, 0.2, 0.1, 0.3)),
    (8, [(7, 1), (7, 0)], 11, 0.0, (0.95, 0.31, 0.9, 0.05, 0.2, 0.0)),
    (5, [(123456789, 3), (987654321, 3)], 0, 0.5, (0.5, 0.87, 0.4, 0.3, 0.25, 0.6)),
]


def _floats(values) -> str:
    return " ".join(f"{v:.9e}" for v in np.asarray(values, np.float32).ravel())


def lines() -> list[str]:
    out = ["# case: elements images step clip s0 s1 a b c sigma; then keys, x, eps and the expected x_prev"]
    rng = np.random.default_rng(0)
    for elements, keys, step, clip, coeffs in CASES:
        n = len(keys)
        x = rng.standard_normal((n, elements)).astype(np.float32)
        eps = rng.standard_normal((n, elements)).astype(np.float32)
        noise = np.concatenate([gaussian_noise(seed, [image], step, STREAM_STEP, (elements,)) for seed, image in keys])
        expected = apply_update(x, eps, np.array(coeffs), clip or None, noise if coeffs[5] > 0 else None)
        out.append(f"case {elements} {n} {step} {clip:.9e} {_floats(coeffs)}")
        out += [f"key {seed} {image}" for seed, image in keys]
        out += [f"x {_floats(x)}", f"eps {_floats(eps)}", f"expected {_floats(expected)}"]
    return out


if __name__ == "__main__":
    print("\n".join(lines()))
