"""One request, three entry points: `lipsync generate` flags, `lipsync dub` flags and manifest cells,
and the server's form (then the JSON the ingress hands the model replica) resolve to the same
GenerateOptions and the same denoising settings, for non-default values of every request option and
for none given; their help texts are the declaration's. With default options, `make demo`'s
command, `lipsync dub` and the server give bit-identical frames for the same input.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest

from lipsync.cli import build_parser, generate_request
from lipsync.options import OPTIONS, REQUEST_OPTIONS, GenerateOptions, as_values
from lipsync.pipeline.stages import settings_of_options, window_planner
from lipsync.profiles import load_profile
from ray_fixtures import ray_session  # noqa: F401  (the session's Ray instance)
from serve_helpers import serve_port  # noqa: F401  (Ray Serve on a free port, once per session)

# A non-default value of every request option (a new option fails here until it is added).
REQUEST = {"num_steps": 7, "guidance_scale": 2.5, "seed": 3, "face": 1, "loop": "freeze", "silence_gating": True,
           "overlap": 2, "deepcache": 3, "scheduler": "unipc", "guidance_interval": 0.5, "no_face": "passthrough",
           "composite": "person_warp"}
NONE: dict = {}


def as_flags(values: dict) -> list[str]:
    out = []
    for name, v in values.items():
        if isinstance(v, bool):
            out.append(f"--{name}" if v else f"--no-{name}")
        else:
            out += [f"--{name}", str(v)]
    return out


def as_cells(values: dict) -> dict[str, str]:
    return {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in values.items()}


def via_generate(values: dict) -> GenerateOptions:
    args = build_parser().parse_args(["generate", "--video_path", "v.mp4", "--audio_path", "a.wav",
                                      "--output_path", "o.mp4", *as_flags(values)])
    return generate_request(args)


def via_dub(values: dict, tmp_path, in_manifest: bool) -> GenerateOptions:
    """The job's defaults from the dub flags, then a manifest row: the values as flags and an empty
    row, or no flags and the values as the row's cells."""
    from lipsync.pipeline.manifest import build_tasks
    from pipelines.cli import dub_defaults

    flags = [] if in_manifest else as_flags(values)
    args = build_parser().parse_args(["dub", "--manifest", "m.csv", "--output_dir", str(tmp_path), *flags])
    row = {"id": "x", "video": "v.mp4", "audio": "a.wav", **{o.name: "" for o in REQUEST_OPTIONS}}
    if in_manifest:
        row.update(as_cells(values))
    job = build_tasks([row], str(tmp_path), dub_defaults(args))
    assert not job.errors, job.errors
    return job.tasks[0].options


def via_server(values: dict) -> GenerateOptions:
    """The form parsed as POST /generate and POST /jobs parse it (serve.request.generate_form, then
    serve.validate.check_options with the server's defaults), through JSON to the model replica."""
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from serve.config import load_settings
    from serve.request import GenerateForm, generate_form, request_options
    from serve.validate import check_options

    settings = load_settings({})
    app = fastapi.FastAPI()

    @app.post("/resolve")
    def resolve(form: GenerateForm = fastapi.Depends(generate_form)):
        options = check_options(form.options, settings.defaults.options(), settings.limits)
        return as_values(options, REQUEST_OPTIONS)  # the spec the ingress stores and sends

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(app)
    r = client.post("/resolve", data=as_cells(values), files={"video": ("v.mp4", b"x")})
    assert r.status_code == 200, r.text
    return request_options(json.loads(r.text), settings.model.batch_size)


@pytest.mark.parametrize("values", [REQUEST, NONE], ids=["every-option-set", "defaults"])
def test_the_same_request_resolves_the_same_everywhere(values, tmp_path):
    assert set(REQUEST) == {o.name for o in REQUEST_OPTIONS}
    assert all(REQUEST[o.name] != o.default for o in REQUEST_OPTIONS)
    resolved = {
        "generate": via_generate(values),
        "dub flags": via_dub(values, tmp_path, in_manifest=False),
        "dub manifest": via_dub(values, tmp_path, in_manifest=True),
        "server": via_server(values),
    }
    expected = GenerateOptions(**{o.attr: values[o.name] for o in REQUEST_OPTIONS if o.name in values})
    for where, options in resolved.items():
        assert options == expected, where
    profile = load_profile("tiny")
    settings = {where: (settings_of_options(profile, o),
                        window_planner(profile, o.overlap).overlap) for where, o in resolved.items()}
    assert len({repr(s) for s in settings.values()}) == 1, settings
    denoise, overlap = settings["generate"]
    if values is NONE:  # the profile's: what `make demo` runs (it gives no option flag)
        assert (denoise.num_steps, denoise.guidance_scale) == (profile.num_steps, profile.guidance_scale)
        assert (denoise.scheduler, denoise.deepcache_interval) == (profile.scheduler, profile.deepcache_interval)
        assert denoise.guidance_interval == tuple(profile.guidance_interval)
        assert overlap == profile.overlap and expected.seed == 1247
    else:
        assert (denoise.num_steps, denoise.guidance_scale, denoise.deepcache_interval) == (7, 2.5, 3)
        assert (denoise.scheduler, denoise.guidance_interval) == ("unipc", (0.0, 0.5))
        assert overlap == 2


def test_a_bad_value_names_the_option_everywhere(tmp_path, capsys):
    from lipsync.pipeline.manifest import build_tasks
    from serve.errors import ApiError
    from serve.validate import check_options
    from serve.config import load_settings

    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--video_path", "v", "--audio_path", "a", "--output_path", "o",
                                   "--overlap", "16"])
    assert "--overlap" in capsys.readouterr().err
    job = build_tasks([{"id": "x", "video": "v.mp4", "audio": "a.wav", "overlap": "16"}], str(tmp_path),
                      GenerateOptions())
    assert job.errors[0].message.endswith("overlap: '16' must be between 0 and 15")
    settings = load_settings({})
    with pytest.raises(ApiError) as err:
        check_options({"overlap": 16}, settings.defaults.options(), settings.limits)
    assert err.value.status == 400 and err.value.detail == "overlap: 16 must be between 0 and 15"
    with pytest.raises(ApiError, match="max_num_steps 100"):  # the server's own limit, on top
        check_options({"num_steps": 500}, settings.defaults.options(), settings.limits)


def _help_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: a.help for a in parser._actions if a.help}


def test_help_docs_and_options_say_the_same():
    """--help of generate and dub, the API's form fields in /docs and GET /options: one text per
    option, the declaration's help and default."""
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient

    from serve.config import load_settings
    from serve.request import GenerateForm, generate_form, options_document

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    generate, dub = _help_of(sub.choices["generate"]), _help_of(sub.choices["dub"])
    app = FastAPI()

    @app.post("/generate")
    def route(form: GenerateForm = Depends(generate_form)):
        return {}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        spec = TestClient(app).get("/openapi.json").json()
    (schema,) = [s for n, s in spec["components"]["schemas"].items() if n.startswith("Body_")]
    document = {item["name"]: item for item in options_document(load_settings({}))["options"]}
    for o in OPTIONS:
        text = o.help_text()
        assert generate[o.name] == text
        if o.scope == "request":
            field = schema["properties"][o.name]
            assert dub[o.name] == text and field["description"] == text
            assert document[o.name]["description"] == text
            if o.choices:
                assert field["anyOf"][0]["enum"] == list(o.choices)
        else:
            assert o.name not in dub and o.name not in schema["properties"] and o.name not in document
    assert not [o.name for o in OPTIONS if "1.5" in generate[o.name]]  # the old, wrong "default 1.5"


# -- the same frames -------------------------------------------------------------------------------
@pytest.mark.slow  # three generations with the profile's 20 steps + guidance: a few minutes on 2 busy cores
def test_default_options_give_identical_frames(ray_session, serve_port, tmp_path):  # noqa: F811
    """`make demo`'s command (`lipsync generate`, no option flag), `lipsync dub` (a 1-row manifest
    without option cells, no option flag) and the server (POST /generate without option fields)
    give the same decoded frames for the same input: default options mean the same everywhere.
    All three denoise with the same number of torch threads: another count changes a few crop
    pixels by one grey level, which the default person_warp composite's face mesh turns into
    sub-pixel moves of the person's texture (up to 20 grey levels on sharp edges)."""
    requests = pytest.importorskip("requests")
    import torch
    from serve_helpers import deploy, settings_for_test, undeploy

    from lipsync.cli import main
    from lipsync.media import iter_frames
    from lipsync.synth.corpus import make_clip

    make_clip(tmp_path / "in", seed=32, seconds=0.6, size=128, langs=["en"])  # 15 frames: one window
    video, audio = tmp_path / "in" / "video.mp4", tmp_path / "in" / "audio.wav"
    outputs = {"generate": tmp_path / "generate.mp4", "server": tmp_path / "server.mp4",
               "dub": tmp_path / "dub" / "clip.mp4"}

    assert main(["generate", "--video_path", str(video), "--audio_path", str(audio),
                 "--output_path", str(outputs["generate"])]) == 0

    threads = torch.get_num_threads()  # generate's, in this process
    settings = settings_for_test("api", tmp_path / "state", tmp_path / "work", request_timeout_s=900)
    settings["model"]["torch_threads"] = threads
    svc = deploy(serve_port, "lipsync-test-options", settings)
    try:
        with open(video, "rb") as v, open(audio, "rb") as a:
            r = requests.post(svc.url("/generate"), files={"video": ("v.mp4", v), "audio": ("a.wav", a)}, timeout=900)
        assert r.status_code == 200, r.text
        outputs["server"].write_bytes(r.content)
    finally:
        undeploy(svc)  # the dub job's pools need the model replica's CPU

    (tmp_path / "m.csv").write_text(f"id,video,audio\nclip,{video},{audio}\n")
    assert main(["dub", "--manifest", str(tmp_path / "m.csv"), "--output_dir", str(tmp_path / "dub"),
                 "--set", f"denoise.torch_threads={threads}"]) == 0

    frames = {k: [f.image for f in iter_frames(str(p))] for k, p in outputs.items()}
    reference = frames.pop("generate")
    assert len(reference) == 15
    for where, got in frames.items():
        assert len(got) == len(reference), where
        assert all(np.array_equal(g, w) for g, w in zip(got, reference)), where


def test_readme_table_is_the_declaration():
    from pathlib import Path

    from lipsync.options import options_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert options_table() in readme  # regenerate: python -c "from lipsync.options import options_table as t; print(t())"
