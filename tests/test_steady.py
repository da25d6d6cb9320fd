"""Zero-phase alignment smoothing (lipsync.face.steady): no lag, syllable-rate motion removed,
runs never blended, every item out once and in order, bounded lookahead."""

import numpy as np
import pytest

from lipsync.face.steady import SIGMA_FRAMES, SteadyAlignment, jumped, steady_alignments

SIZE = 96


def sim(tx=0.0, ty=0.0, angle=0.0, scale=1.0):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def run_all(mats, breaks=()):
    items = list(enumerate(mats))
    out = list(steady_alignments(items, lambda t: t[0], lambda t: t[1], SIZE,
                                 breaks=lambda t: t[0] in breaks))
    assert [it for it, _ in out] == items  # every item, once, in order
    return [m for _, m in out]


def test_no_lag_and_syllable_rate_removed():
    t = np.arange(250) / 25.0
    slow = 3.0 * np.sin(2 * np.pi * 1.0 * t)  # head motion, 1 Hz
    fast = 1.0 * np.sin(2 * np.pi * 5.0 * t)  # what moves with syllables, 5 Hz
    out = np.array([m[0, 2] for m in run_all([sim(tx=a + b) for a, b in zip(slow, fast)])])
    mid = slice(20, 230)
    # The slow part comes through in phase: the residual is smallest at lag 0 ...
    resid = {lag: np.abs(out[mid] - np.roll(slow, lag)[mid]).mean() for lag in (-2, -1, 0, 1, 2)}
    assert min(resid, key=resid.get) == 0
    # ... at the Gaussian's gain (exp(-2 pi^2 sigma^2 f^2), sigma in seconds), and the fast part is gone.
    gain = np.exp(-2 * np.pi ** 2 * (SIGMA_FRAMES / 25.0) ** 2)
    assert np.abs(out[mid] - gain * slow[mid]).max() < 0.05


def test_constant_and_similarity_preserved():
    rng = np.random.default_rng(0)
    mats = [sim(40 + rng.normal(0, 0.5), 30 + rng.normal(0, 0.5), rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.005))
            for _ in range(40)]
    for m in run_all(mats):
        assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == pytest.approx(-m[1, 0])
    const = sim(12.0, -3.0, 0.1, 0.7)
    for m in run_all([const] * 30):
        np.testing.assert_allclose(m, const, atol=1e-12)
    # Jitter is reduced.
    raw = np.array([m[0, 2] for m in mats])
    smooth = np.array([m[0, 2] for m in run_all(mats)])
    assert np.diff(smooth).std() < 0.3 * np.diff(raw).std()


def test_runs_are_not_blended():
    a, b = sim(10.0, 10.0), sim(11.0, 10.5)  # close enough not to count as a jump
    assert not jumped(a, b, SIZE)
    far = sim(40.0, 10.0)
    assert jumped(a, far, SIZE)
    # A face-less frame, a caller break and a jump each end a run.
    mats = [a] * 10 + [None] + [b] * 10
    out = run_all(mats)
    assert out[10] is None
    assert all(np.allclose(m, a) for m in out[:10]) and all(np.allclose(m, b) for m in out[11:])
    out = run_all([a] * 10 + [b] * 10, breaks={10})
    assert all(np.allclose(m, a) for m in out[:10]) and all(np.allclose(m, b) for m in out[10:])
    out = run_all([a] * 10 + [far] * 10)
    assert all(np.allclose(m, a) for m in out[:10]) and all(np.allclose(m, far) for m in out[10:])
    # A gap in the indices too.
    steady = SteadyAlignment(SIZE)
    got = []
    for i, m in [(i, a) for i in range(5)] + [(i, b) for i in range(9, 14)]:
        got += steady.push(i, m, i)
    got += steady.finish()
    assert [g[0] for g in got] == [0, 1, 2, 3, 4, 9, 10, 11, 12, 13]
    assert all(np.allclose(m, a if i < 5 else b) for i, m, _ in got)


def test_lookahead_is_bounded():
    steady = SteadyAlignment(SIZE)
    out = []
    for i in range(100):
        out += steady.push(i, sim(float(i) * 0.1), i)
        assert len(out) == max(0, i + 1 - steady.radius)
        assert len(steady._mats) <= 2 * steady.radius + 1
    out += steady.finish()
    assert [o[2] for o in out] == list(range(100))


def _texture(seed=0, size=240):
    import cv2

    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 4)
    return np.clip((img - img.mean()) * 60 / img.std() + 128, 0, 255).astype(np.uint8)


def _crop_points(m, size=128):
    """Where M sends a few frame points, to compare matrices in crop pixels."""
    pts = np.array([[60.0, 60.0], [180.0, 60.0], [120.0, 170.0]])
    return pts @ np.asarray(m)[:, :2].T + np.asarray(m)[:, 2]


def test_registration_undoes_a_landmark_bias():
    from lipsync.face.register import UpperFaceRegistrar

    image = _texture()
    m0 = sim(-20.0, -20.0, 0.0, 128 / 200)  # frame -> 128 px crop
    reg = UpperFaceRegistrar(128)
    assert reg.refine(m0, image, new_run=True) is not None
    # The same face, but landmarks that put the crop 1.5 px off, 1 % larger and 0.5 degree turned.
    bias = np.vstack([sim(1.5, -1.0, np.deg2rad(0.5), 1.01), [0, 0, 1]])
    biased = (bias @ np.vstack([m0, [0, 0, 1]]))[:2]
    fixed = reg.refine(biased, image)
    assert np.abs(_crop_points(biased) - _crop_points(m0)).max() > 1.0
    # Within a few tenths of a pixel (at the 96 px working size ECC cannot do much better).
    assert np.abs(_crop_points(fixed) - _crop_points(m0)).max() < 0.5
    assert reg.fallbacks == 0
    # Something else entirely: the landmark alignment is kept and becomes the new anchor.
    other = _texture(seed=1)
    assert np.allclose(reg.refine(biased, other), biased)
    assert reg.fallbacks == 1
    assert np.abs(_crop_points(reg.refine(m0, other)) - _crop_points(biased)).max() < 0.5


def test_steady_alignments_register_each_run_to_its_first_crop():
    image = _texture()
    m0 = sim(-20.0, -20.0, 0.0, 96 / 200)
    jitter = [sim(0.8 * np.sin(i), 0.8 * np.cos(1.7 * i)) for i in range(30)]
    items = [(i, (np.vstack([j, [0, 0, 1]]) @ np.vstack([m0, [0, 0, 1]]))[:2]) for i, j in enumerate(jitter)]
    out = list(steady_alignments(items, lambda t: t[0], lambda t: t[1], 96, image_of=lambda t: image))
    first = out[0][1]
    drift = [np.abs(_crop_points(m) - _crop_points(first)).max() for _, m in out]
    raw = [np.abs(_crop_points(m) - _crop_points(items[0][1])).max() for _, m in items]
    assert max(drift) < 0.5 and max(raw) > 1.0
