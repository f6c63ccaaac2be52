"""The noise generator: Random123 known answers, the documented layout, batch independence."""

import numpy as np
import pytest

from ddpmrt.engine.philox import (
    STREAM_INITIAL,
    STREAM_STEP,
    gaussian_noise,
    normals_from_words,
    philox4x32,
    uniform_noise,
    uniforms_from_words,
)

# From ../shared/reference/philox4x32-10.md (Random123 kat_vectors).
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_known_answer_vectors(counter, key, expected):
    out = philox4x32(np.array(counter, np.uint32), key)
    assert [int(w) for w in out] == list(expected)


def test_counter_layout_is_as_documented():
    seed, image, step, shape = 0x1234_5678_9ABC_DEF0, 7, 3, (3, 5, 5)  # 75 elements: a partial last block
    u = uniform_noise(seed, [image], step, STREAM_STEP, shape).reshape(-1)
    for element in (0, 1, 5, 42, 74):
        words = philox4x32(np.array([element // 4, image, step, STREAM_STEP], np.uint32),
                           (seed & 0xFFFFFFFF, seed >> 32))
        expected = ((int(words[element % 4]) >> 8) + 1) / 2 ** 24
        assert u[element] == np.float32(expected)


def test_uniform_conversion_is_exact_and_in_unit_interval():
    words = np.array([0, 0xFF, 0x100, 0xFFFFFFFF], np.uint32)
    u = uniforms_from_words(words)
    assert u.dtype == np.float32
    assert list(u) == [2.0 ** -24, 2.0 ** -24, 2.0 ** -23, 1.0]


def test_box_muller_pairs():
    words = np.array([[0xFFFFFFFF, 0x40000000, 0x00000000, 0x00000000]], np.uint32)
    z = normals_from_words(words)[0]
    # u0 = 1 gives r = 0; u2 = 2^-24 gives r = sqrt(48 ln 2) and theta = 2π·2^-24 ≈ 0.
    assert z[0] == 0 and z[1] == 0
    assert z[2] == pytest.approx(np.sqrt(-2 * np.log(2.0 ** -24)), rel=1e-6)
    assert abs(z[3]) < 1e-5


def test_normals_are_standard():
    z = gaussian_noise(0, np.arange(64), 0, STREAM_INITIAL, (3, 32, 32)).reshape(-1)
    assert z.dtype == np.float32 and z.size == 64 * 3 * 32 * 32
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.mean(z ** 3)) < 0.03 and abs(np.mean(z ** 4) - 3) < 0.1


def test_image_noise_does_not_depend_on_batch():
    batch = gaussian_noise(5, np.arange(64), 9, STREAM_STEP, (1, 7, 7))
    alone = gaussian_noise(5, [37], 9, STREAM_STEP, (1, 7, 7))
    np.testing.assert_array_equal(batch[37], alone[0])


def test_streams_steps_seeds_differ():
    base = gaussian_noise(1, [0], 0, STREAM_INITIAL, (16,))
    for other in (gaussian_noise(1, [0], 0, STREAM_STEP, (16,)), gaussian_noise(1, [0], 1, STREAM_INITIAL, (16,)),
                  gaussian_noise(2, [0], 0, STREAM_INITIAL, (16,)), gaussian_noise(1, [1], 0, STREAM_INITIAL, (16,))):
        assert not np.array_equal(base, other)


def test_seed_range_checked():
    # The one seed check (checks.seeds), as the samplers and the kernels' image keys use it.
    from ddpmrt.engine.errors import UserError

    with pytest.raises(UserError, match=r"seed must lie in \[0, 18446744073709551615\]"):
        gaussian_noise(-1, [0], 0, STREAM_INITIAL, (4,))
    with pytest.raises(UserError, match="every seed must lie"):
        gaussian_noise((1, 2 ** 64), [0, 1], 0, STREAM_INITIAL, (4,))
