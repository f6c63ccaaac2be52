"""Writes update_vectors.txt: the sampler update from NumPy for the C++ host test of update_step.h.

    python kernels/tests/make_update_vectors.py > kernels/tests/update_vectors.txt

Each case is one step over a small batch whose images carry their own (seed, image index) keys,
as a served batch of several requests does: a DDIM/DDPM row, a DPM-Solver++ row (earlier x̂₀ read,
its own kept), a UniPC row (the corrector: the previous corrected sample read, the new one
kept) and iPNDM rows (earlier ε read, its own ε kept, with and without clipping).
tests/test_kernels.py checks that the committed file is what this script produces today.
"""

import numpy as np

from ddpmrt.engine.philox import STREAM_STEP, gaussian_noise
from ddpmrt.engine.samplers import COEFFS_PER_STEP, KEEP_EPS, KEEP_X0, History, apply_update, coefficient_table


def _row(**columns) -> np.ndarray:
    return coefficient_table(1, **columns)[0]


CASES = [  # elements per image, (seed, image index) per image, step, clip, coefficient row
    (7, [(0, 0), (42, 5), (2 ** 64 - 1, 2 ** 32 - 1)], 4, 1.0, _row(s0=0.8, s1=0.6, a=0.7, b=0.2, c=0.1, sigma=0.3)),
    (8, [(7, 1), (7, 0)], 11, 0.0, _row(s0=0.95, s1=0.31, a=0.9, b=0.05, c=0.2)),
    (5, [(123456789, 3), (987654321, 3)], 0, 0.5, _row(s0=0.5, s1=0.87, a=0.4, b=0.3, c=0.25, sigma=0.6)),
    # DPM-Solver++(3M)-like: x̂₀ of two earlier steps, its own kept.
    (8, [(3, 0), (3, 1)], 6, 0.0, _row(s0=0.7, s1=0.71, a=1.3, b=0.4, h1=-0.5, h2=0.12, keep=1)),
    # UniPC-like: the corrector reads P and three earlier x̂₀, the step keeps its x̂₀ and x_c.
    (6, [(11, 2), (5, 0)], 9, 1.0, _row(s0=0.6, s1=0.8, a=0.9, b=0.3, h1=-0.2, h2=0.05, qx=-1.0, q0=0.45, q1=0.2,
                                         q2=-0.1, q3=0.03, qp=0.42, keep=3)),
    # iPNDM-like: earlier ε read, its own ε kept (KEEP_EPS); clipped, the ε its clipped x̂₀ implies.
    (8, [(21, 0), (21, 4)], 5, 0.0, _row(s0=0.55, s1=0.84, a=-0.6, b=1.2, h1=-0.3, h2=0.1, h3=-0.02, keep=4)),
    (7, [(9, 1)], 3, 1.0, _row(s0=0.3, s1=0.95, a=-0.4, b=1.1, h1=-0.25, h2=0.07, keep=4)),
]


def _floats(values) -> str:
    return " ".join(f"{v:.9e}" for v in np.asarray(values, np.float32).ravel())


def lines() -> list[str]:
    out = ["# case: elements images step clip and the 16 coefficients; then keys, x, eps, the earlier x0 (h1-h3) and "
           "corrected sample (p), the expected x_prev, and the x0 and corrected sample the step leaves behind"]
    rng = np.random.default_rng(0)
    for elements, keys, step, clip, row in CASES:
        n = len(keys)
        assert row.size == COEFFS_PER_STEP
        x, eps, h1, h2, h3, p = (rng.standard_normal((n, elements)).astype(np.float32) for _ in range(6))
        noise = np.concatenate([gaussian_noise(seed, [image], step, STREAM_STEP, (elements,)) for seed, image in keys])
        history = History()
        history.x0, history.corrected = [h1.copy(), h2.copy(), h3.copy()], p.copy()
        expected = apply_update(x, eps, row, clip or None, noise, history)
        kept_x0 = history.x0[0] if int(row[15]) & (KEEP_X0 | KEEP_EPS) else np.zeros_like(x)
        out.append(f"case {elements} {n} {step} {clip:.9e} {_floats(row)}")
        out += [f"key {seed} {image}" for seed, image in keys]
        for name, values in (("x", x), ("eps", eps), ("h1", h1), ("h2", h2), ("h3", h3), ("p", p),
                             ("expected", expected), ("x0", kept_x0), ("xc", history.corrected)):
            out.append(f"{name} {_floats(values)}")
    return out


if __name__ == "__main__":
    print("\n".join(lines()))
