"""The overlapped stages of `lipsync generate` (lipsync.pipeline.overlap): the same frames as the
sequential loop, the same errors, bounded queues, and no thread left behind."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lipsync.errors import CorruptMediaError, NoFaceError
from lipsync.media import VideoWriter, iter_frames
from lipsync.pipeline import GenerateOptions
from lipsync.pipeline.overlap import run_overlapped


def _threads_left(prefix: str = "lipsync-") -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


# -- the runner alone ---------------------------------------------------------------------------

def _run(n, middle=lambda x: x, sink=None, fail_at=None, depth=2):
    seen = []

    def source():
        for i in range(n):
            if i == fail_at:
                raise KeyError(f"source {i}")
            yield i

    run_overlapped(source, middle, sink or seen.append, depth=depth, name="t-run")
    return seen


def test_runner_keeps_order_and_bounds_what_is_in_flight():
    produced, consumed = [], []
    ahead = []

    def source():
        for i in range(30):
            produced.append(i)
            ahead.append(len(produced) - len(consumed))
            yield i

    def sink(x):
        time.sleep(0.002)  # a slow writer: the producer must wait, not run ahead
        consumed.append(x)

    waits = run_overlapped(source, lambda x: x * 10, sink, depth=2, name="t-run")
    assert consumed == [10 * i for i in range(30)]
    # At most: 2 in each queue, one in the middle, one in the sink, one being produced.
    assert max(ahead) <= 2 * 2 + 3
    assert set(waits) == {"input", "output"}
    assert not _threads_left("t-run")


@pytest.mark.parametrize("threads", [(True, True), (True, False), (False, True), (False, False)])
def test_runner_producer_error_comes_in_order_after_the_chunks_before_it(threads):
    seen = []
    with pytest.raises(KeyError, match="source 5"):
        run_overlapped(lambda: _failing(9, 5), lambda x: x, seen.append, name="t-run",
                       source_thread=threads[0], sink_thread=threads[1])
    assert seen == [0, 1, 2, 3, 4]  # written first, as the sequential loop writes them
    assert not _threads_left("t-run")


def _failing(n, at):
    for i in range(n):
        if i == at:
            raise KeyError(f"source {i}")
        yield i


def test_runner_middle_error_lets_the_sink_finish_earlier_chunks():
    seen = []

    def middle(x):
        if x == 4:
            raise ValueError("middle 4")
        return x

    with pytest.raises(ValueError, match="middle 4"):
        _run(20, middle=middle, sink=seen.append)
    assert seen == [0, 1, 2, 3]
    assert not _threads_left("t-run")


def test_runner_sink_error_wins_over_later_errors_and_stops_everything():
    def sink(x):
        if x == 2:
            raise RuntimeError("sink 2")

    def middle(x):
        if x == 6:
            raise ValueError("middle 6")  # later in the stream: the sink's error is raised
        return x

    with pytest.raises(RuntimeError, match="sink 2"):
        _run(10, middle=middle, sink=sink)
    with pytest.raises(RuntimeError, match="sink 2"):
        _run(10, sink=sink, fail_at=7)
    assert not _threads_left("t-run")


def test_runner_base_exception_in_the_sink_stops_a_long_job():
    class Cancelled(BaseException):
        pass

    def sink(x):
        if x == 3:
            raise Cancelled()

    produced = []

    def source():
        for i in range(10_000):
            produced.append(i)
            yield i

    with pytest.raises(Cancelled):
        run_overlapped(source, lambda x: x, sink, depth=2, name="t-run")
    assert len(produced) < 20 and not _threads_left("t-run")


# -- the pipeline, overlapped vs sequential ------------------------------------------------------

FAST = GenerateOptions(num_steps=1, batch_size=1)


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    return tiny_pipe


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The bundled sample (a copy), driven by its speech's first 1.2 s: 30 output frames.

    (Not a synthetic make_clip clip: on make_clip(seed=31, 1.2 s, 160 px) the sequential path itself
    gave different frames 6-8 from one run to the next in one process, so no comparison of two runs
    could be exact there.)"""
    import shutil

    from lipsync.assets import SAMPLE_AUDIO, SAMPLE_VIDEO
    from lipsync.media import load_audio, save_wav

    root = tmp_path_factory.mktemp("overlap")
    shutil.copy(SAMPLE_VIDEO, root / "video.mp4")
    save_wav(str(root / "audio.wav"), load_audio(str(SAMPLE_AUDIO))[: int(1.2 * 16000)], 16000)
    return root


def _generate(pipe, overlapped: bool, out, **kwargs):
    saved = pipe.overlap_stages
    pipe.overlap_stages = overlapped
    try:
        return pipe(str(out), **kwargs)
    finally:
        pipe.overlap_stages = saved


def _outcome(pipe, overlapped, out, **kwargs):
    """(exception type, message) of a failing job; the output must not exist afterwards."""
    with pytest.raises(BaseException) as info:
        _generate(pipe, overlapped, out, **kwargs)
    assert not out.exists() and not list(out.parent.glob(f".{out.stem}*"))  # nothing half-written
    assert not _threads_left()
    return type(info.value), str(info.value)


def test_overlapped_frames_are_the_sequential_frames_bit_for_bit(pipe, clip, tmp_path):
    outs, results, calls = {}, {}, {}
    for mode in ("off", "full", "read", "write"):
        out = tmp_path / f"{mode}.mp4"
        calls[mode] = []
        results[mode] = _generate(pipe, mode, out, video=str(clip / "video.mp4"), audio=str(clip / "audio.wav"),
                                  options=FAST, progress=lambda d, t, c=calls[mode]: c.append((d, t)))
        outs[mode] = [f.image for f in iter_frames(out)]
        assert (results[mode].frames, results[mode].frames_with_face) == (30, 30)
        assert len(outs[mode]) == 30
        assert all(np.array_equal(a, b) for a, b in zip(outs[mode], outs["off"])), mode
        assert calls[mode] == [(i, 30) for i in range(1, 31)]
    seq, ov = results["off"], results["full"]
    # The summary says how the stages ran.
    assert ov.overlapped and not seq.overlapped and set(ov.waits) == {"input", "output"}
    assert "overlapping the denoiser" in ov.summary() and "in sequence" in seq.summary()
    assert all(ov.stages[k] > 0 for k in ("decode+face", "unet", "composite", "encode"))
    assert not _threads_left()


def test_the_environment_picks_the_mode_and_forces_the_sequential_path(monkeypatch):
    from lipsync.pipeline.lipsync_pipeline import DEFAULT_OVERLAP, overlap_mode

    monkeypatch.delenv("LIPSYNC_SEQUENTIAL", raising=False)
    monkeypatch.delenv("LIPSYNC_OVERLAP", raising=False)
    assert overlap_mode(None) == DEFAULT_OVERLAP["cpu"]
    assert (overlap_mode(False), overlap_mode(True), overlap_mode("write")) == ("off", "full", "write")
    monkeypatch.setenv("LIPSYNC_OVERLAP", "read")
    assert overlap_mode(None) == "read"
    monkeypatch.setenv("LIPSYNC_SEQUENTIAL", "1")
    assert overlap_mode(None) == "off" and overlap_mode(True) == "full"
    with pytest.raises(ValueError, match="stage overlap 'both'"):
        overlap_mode("both")


def test_a_video_that_breaks_mid_way_fails_the_same_way(pipe, clip, tmp_path, monkeypatch):
    """The decoder fails at source frame 28 of 30 (after the first window was denoised and frames
    written): the decode thread's CorruptMediaError, naming the file, reaches the caller, and
    nothing is committed. A truncated mp4 (its error comes after the frames it still holds) likewise."""
    import av

    from lipsync.media import video as video_mod

    class FailingContainer:
        def __init__(self, container):
            self.container = container

        def decode(self, *a, **k):
            for n, frame in enumerate(self.container.decode(*a, **k)):
                if n == 28:
                    raise av.error.InvalidDataError(-1094995529, "Invalid data found when processing input")
                yield frame

    init = video_mod._Source.__init__

    def failing_init(self, container, *a, **k):
        init(self, FailingContainer(container), *a, **k)

    monkeypatch.setattr(video_mod._Source, "__init__", failing_init)
    args = dict(video=str(clip / "video.mp4"), audio=str(clip / "audio.wav"), options=FAST)
    written = {False: [], True: []}
    got = {ov: _outcome(pipe, ov, tmp_path / "o.mp4", progress=lambda d, t, w=written[ov]: w.append(d), **args)
           for ov in (False, True)}
    assert got[True] == got[False]
    assert got[True][0] is CorruptMediaError
    assert got[True][1].startswith(str(clip / "video.mp4")) and "decoding failed after 28 frames" in got[True][1]
    assert written[True] == written[False] and written[True]  # the frames before it were written, then dropped
    monkeypatch.undo()

    data = (clip / "video.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.3)])  # decodes 17 frames, then "truncated"
    got = {ov: _outcome(pipe, ov, tmp_path / "o.mp4", video=str(cut), audio=str(clip / "audio.wav"),
                        options=FAST) for ov in (False, True)}
    assert got[True] == got[False]
    assert got[True][0] is CorruptMediaError and "cut.mp4" in got[True][1]


def test_no_face_fails_the_same_way(pipe, clip, tmp_path):
    from face_helpers import textured_background

    empty = tmp_path / "empty.mp4"
    with VideoWriter(str(empty), fps=25) as w:
        for i in range(20):
            w.write(np.roll(textured_background(96, 128, seed=2), 3 * i, axis=1))
    got = {ov: _outcome(pipe, ov, tmp_path / "o.mp4", video=str(empty), audio=str(clip / "audio.wav"),
                        options=FAST) for ov in (False, True)}
    assert got[True] == got[False] and got[True][0] is NoFaceError and "empty.mp4" in got[True][1]


def test_errors_in_the_denoiser_and_the_writer_thread_fail_the_same_way(pipe, clip, tmp_path, monkeypatch):
    from lipsync.pipeline.stages import Compositor, Denoiser

    args = dict(video=str(clip / "video.mp4"), audio=str(clip / "audio.wav"), options=FAST)
    frame = Compositor.frame

    def broken_frame(self, index, *a, **k):
        if index == 13:
            raise RuntimeError(f"composite failed at frame {index}")
        return frame(self, index, *a, **k)

    monkeypatch.setattr(Compositor, "frame", broken_frame)
    got = {ov: _outcome(pipe, ov, tmp_path / "o.mp4", **args) for ov in (False, True)}
    assert got[True] == got[False] == (RuntimeError, "composite failed at frame 13")
    monkeypatch.undo()

    call = Denoiser.__call__
    count = {"n": 0}

    def broken_denoiser(self, *a, **k):
        count["n"] += 1
        if count["n"] % 2 == 0:
            raise RuntimeError("out of memory in the UNet")
        return call(self, *a, **k)

    monkeypatch.setattr(Denoiser, "__call__", broken_denoiser)
    got = {ov: _outcome(pipe, ov, tmp_path / "o.mp4", **args) for ov in (False, True)}
    assert got[True] == got[False] == (RuntimeError, "out of memory in the UNet")
    monkeypatch.undo()

    class Cancelled(BaseException):  # what the server's progress callback raises
        pass

    def progress(done, total):
        if done == 5:
            raise Cancelled("cancelled")

    got = {ov: _outcome(pipe, ov, tmp_path / "o.mp4", progress=progress, **args) for ov in (False, True)}
    assert got[True] == got[False] == (Cancelled, "cancelled")
