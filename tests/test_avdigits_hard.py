"""benchmarks/avdigits.py --hard: the rendering (small drifting digit over clutter of random
brightness, a word at a random time in speaker-dependent noise) is deterministic and hard."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def avdigits():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import avdigits

    return avdigits


@pytest.fixture(scope="module")
def digit_image():
    from sklearn.datasets import load_digits

    return load_digits().images[3]


def test_hard_frames_are_deterministic_for_a_seed(avdigits, digit_image):
    a = avdigits.render_hard_digit(digit_image, np.random.default_rng(7), 13, 64)
    b = avdigits.render_hard_digit(digit_image, np.random.default_rng(7), 13, 64)
    c = avdigits.render_hard_digit(digit_image, np.random.default_rng(8), 13, 64)
    assert a.shape == (13, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_hard_digit_is_smaller_than_the_frame_and_drifts(avdigits, digit_image):
    # The digit alone: a blank 8x8 scan gives the background, the difference is the digit.
    moves = []
    for seed in range(5):
        with_digit = avdigits.render_hard_digit(digit_image, np.random.default_rng(seed), 13, 64)
        without = avdigits.render_hard_digit(np.zeros_like(digit_image), np.random.default_rng(seed), 13, 64)
        ink = np.abs(with_digit.astype(int) - without.astype(int))[..., 0] > 40  # T×H×W
        assert ink.any(axis=(1, 2)).all()  # on every frame
        rows, cols = np.flatnonzero(ink[0].any(1)), np.flatnonzero(ink[0].any(0))
        assert np.ptp(rows) + 1 <= 0.6 * 64 and np.ptp(cols) + 1 <= 0.6 * 64  # well inside the frame
        centres = [np.argwhere(frame).mean(axis=0) for frame in ink]
        moves.append(np.abs(centres[0] - centres[-1]).max())
    assert max(moves) > 8  # it drifts (from one random place to another)


def test_hard_background_brightness_and_clutter_vary(avdigits):
    backgrounds = [avdigits.hard_background(np.random.default_rng(seed), 64) for seed in range(20)]
    brightness = np.array([b for _, b in backgrounds])
    assert brightness.min() < 0.3 and brightness.max() > 0.7  # random brightness
    for image, level in backgrounds:
        assert image.shape == (64, 64) and 0 <= image.min() and image.max() <= 1
        assert (np.abs(image - level) > 0.08).mean() > 0.003  # clutter, not a flat field
    assert not np.allclose(backgrounds[0][0], backgrounds[1][0])


def test_hard_audio_places_the_word_at_random_times_in_speaker_noise(avdigits):
    rate = 8000
    word = np.sin(2 * np.pi * 440 * np.arange(int(0.4 * rate)) / rate).astype(np.float32) * 0.5
    george, nicolas = avdigits.speaker_noise("george"), avdigits.speaker_noise("nicolas")
    assert george == avdigits.speaker_noise("george") and george != nicolas
    outs = [avdigits.hard_audio(word, rate, int(1.6 * rate), george, np.random.default_rng(s)) for s in range(4)]
    again = avdigits.hard_audio(word, rate, int(1.6 * rate), george, np.random.default_rng(0))
    assert np.array_equal(outs[0], again)
    assert all(o.shape == (int(1.6 * rate),) and np.abs(o).max() <= 0.9 + 1e-6 for o in outs)
    # Where the word is: the loudest 0.4 s, found at different times in different videos.
    starts = []
    for o in outs:
        energy = np.convolve(o ** 2, np.ones(word.size), mode="valid")
        starts.append(int(np.argmax(energy)))
    assert max(starts) - min(starts) > 0.1 * rate
    silent_part = outs[0][np.r_[0:200, -200:0]]
    assert silent_part.std() > 0.01  # noise everywhere, not only under the word


def test_table_has_each_probe_and_the_margins_against_the_spread(avdigits):
    """aggregate + markdown: mean ± std over seeds per probe (retrieval as recall@1), and the
    XDC-vs-RAND verdict uses the larger std of the two."""
    def run(method, seed, top1, recall):
        return {"method": method, "seed": seed, "seconds": 1.0,
                **{f"{mode}_{m}": {"top1_video": top1, "recall@1": recall}
                   for mode in ("linear", "knn", "retrieval") for m in ("video", "audio")}}

    results = [run("rand", 0, 0.20, 0.30), run("rand", 1, 0.22, 0.34),
               run("xdc", 0, 0.40, 0.50), run("xdc", 1, 0.30, 0.54)]
    table = avdigits.aggregate(results)
    assert table["xdc"]["retrieval_video"][0] == pytest.approx(0.52)
    assert table["xdc"]["linear_audio"][0] == pytest.approx(0.35)
    verdict = avdigits.beats(table, "xdc", "rand", "linear_video")
    assert verdict["margin"] == pytest.approx(0.14) and verdict["spread"] == pytest.approx(0.0707, abs=1e-4)
    assert verdict["wins"]
    text = avdigits.markdown(table, {"XDC vs RAND": {"video": verdict, "audio": None}}, "header")
    assert "| video R@1 | audio R@1 |" in text and "0.520 ± 0.028" in text
    assert "yes (+0.140, spread 0.071)" in text
