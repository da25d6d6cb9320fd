"""The job setup (lipsync.pipeline.job) shared by generate and the batch job: the speech decoded
once, a remote source fetched once, and one face alignment for inference and evaluation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lipsync.synth.corpus import make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    make_clip(root / "a", seed=61, seconds=0.8, size=128, langs=["en"])
    return root / "a"


@pytest.fixture(scope="module")
def setup():
    from lipsync.pipeline.components import load_components
    from lipsync.pipeline.job import JobSetup
    from lipsync.profiles import load_profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        comps = load_components(load_profile("tiny"), None, parts={"audio"})
    comps.to("cpu")
    return JobSetup(comps.profile, comps.audio_encoder)


def test_speech_is_decoded_once_into_both_tracks(media_kit, tmp_path):
    """decode_speech's 16 kHz mono is bit-for-bit load_audio's, its native track load_audio_native's."""
    from lipsync.media import load_audio, load_audio_native
    from lipsync.pipeline.inputs import decode_speech

    t = np.arange(int(44100 * 0.7)) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)]).astype(np.float32)
    paths = [media_kit.write_audio(tmp_path / "s.m4a", stereo, 44100, "aac"),
             media_kit.write_audio(tmp_path / "m.mp3", stereo[:1], 16000, "libmp3lame")]
    import soundfile

    soundfile.write(tmp_path / "s.wav", stereo.T, 48000, subtype="PCM_16")
    paths.append(str(tmp_path / "s.wav"))
    for path in paths:
        samples, native, rate = decode_speech(path)
        want_native, want_rate = load_audio_native(path)
        assert np.array_equal(samples, load_audio(path)) and samples.dtype == np.float32, path
        assert np.array_equal(native, want_native) and rate == want_rate, path


def test_evaluator_crops_are_the_pipelines_crops(clip, setup):
    """lipsync eval reads the crops inference regenerates: the same tracker and FaceAligner
    (smoothed + registered), not the One-Euro landmarks' own alignment."""
    from lipsync.eval.evaluator import analyze_video
    from lipsync.face import FaceDetector
    from lipsync.pipeline import GenerateOptions

    crops, matrices = {}, {}
    with FaceDetector(max_faces=8) as detector, \
            setup.open(video=str(clip / "video.mp4"), audio=str(clip / "audio.wav"),
                       options=GenerateOptions(), detector=detector) as job:
        for step in job.steps():
            if step.item is not None:
                matrices[step.item.index] = step.matrix
            for w in step.windows:
                crops.update(zip(w.window.frames, w.crops))
        assert not job.notes()
    res = setup.faces.size
    analysis = analyze_video(str(clip / "video.mp4"), crop_size=res, aspect=setup.faces.aspect, lower_size=res)
    n = min(len(matrices), analysis.num_frames)
    assert n >= 19 and len(crops) >= n - 1
    for j in range(n):
        assert analysis.has_face[j] == (matrices[j] is not None)
        if j in crops:
            assert np.array_equal(analysis.crops[j], crops[j]), f"frame {j}"


def test_remote_source_is_fetched_once_and_errors_name_the_uri(clip, setup, s3_bucket, caplog, tmp_path):
    """One download per remote input, whatever reads it (the header check, the tracking pass, the
    loop's seeks, both audio decodes); a bad remote file is reported under its URI."""
    import logging

    import s3fs

    from lipsync.errors import CorruptMediaError
    from lipsync.face import FaceDetector
    from lipsync.media import load_audio, save_wav
    from lipsync.media.uri import storage_options
    from lipsync.pipeline import GenerateOptions

    s3 = s3fs.S3FileSystem(skip_instance_cache=True, **storage_options())
    s3.put(str(clip / "video.mp4"), f"{s3_bucket}/v.mp4")
    # 1.2 s of speech for 0.8 s of video: the frames loop, re-reading the local copy by seeking.
    save_wav(tmp_path / "long.wav", np.tile(load_audio(str(clip / "audio.wav")), 2)[:19200], 16000)
    s3.put(str(tmp_path / "long.wav"), f"{s3_bucket}/long.wav")
    s3.pipe(f"{s3_bucket}/broken.mp4", b"\x00garbage" * 64)

    def downloads(key):  # object GETs the moto server logged
        return sum(f'"GET /{s3_bucket}/{key} ' in r.getMessage() for r in caplog.records)

    with FaceDetector(max_faces=8) as detector, caplog.at_level(logging.INFO, logger="werkzeug"):
        caplog.clear()
        with setup.open(video=f"s3://{s3_bucket}/v.mp4", audio=f"s3://{s3_bucket}/long.wav",
                        options=GenerateOptions(), detector=detector) as job:
            steps = list(job.steps())
        assert len(steps) == job.num_frames + 1 == 31
        assert "video looped (pingpong)" in job.notes()[0]
        assert (downloads("v.mp4"), downloads("long.wav")) == (1, 1)
        with pytest.raises(CorruptMediaError, match=f"^s3://{s3_bucket}/broken.mp4: "):
            with setup.open(video=f"s3://{s3_bucket}/broken.mp4", audio=str(clip / "audio.wav"),
                            detector=detector) as job:
                list(job.steps())
