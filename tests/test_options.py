"""The one declaration of generation options (lipsync/options.py): parsing from flags, cells and
JSON gives the same typed values, and bad values name the option."""

import argparse

import pytest

from lipsync.options import BY_NAME, OPTIONS, GenerateOptions, add_option_flags, as_values, options_from


def test_every_field_is_declared_once_with_help_and_a_parser():
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    assert {o.attr for o in OPTIONS} == set(GenerateOptions.__dataclass_fields__)
    for o in OPTIONS:
        assert o.help and o.kind in ("int", "float", "bool", "choice", "face")
        assert o.parse(None) is None and o.parse("  ") is None
        if o.default is not None:
            assert o.parse(str(o.default)) == o.default


def test_flags_cells_and_json_agree():
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    flags = vars(parser.parse_args(["--num_steps", "7", "--guidance_scale", "2.5", "--seed", "3", "--face", "1",
                                    "--loop", "freeze", "--silence_gating", "--overlap", "2", "--deepcache", "3",
                                    "--batch_size", "2"]))
    cells = {"num_steps": "7", "guidance_scale": "2.5", "seed": "3", "face": "1", "loop": "freeze",
             "silence_gating": "yes", "overlap": "2", "deepcache": "3", "batch_size": "2"}
    json_body = {"num_steps": 7, "guidance_scale": 2.5, "seed": 3, "face": 1, "loop": "freeze",
                 "silence_gating": True, "overlap": 2, "deepcache": 3, "batch_size": 2}
    a, b, c = options_from(flags), options_from(cells), options_from(json_body)
    assert a == b == c
    assert a.deepcache_interval == 3 and a.face == 1 and a.silence_gating is True
    assert options_from(as_values(a)) == a


def test_not_given_keeps_the_defaults():
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    assert options_from(vars(parser.parse_args([]))) == GenerateOptions()
    assert options_from({"num_steps": "", "seed": None, "face": float("nan")}) == GenerateOptions()
    base = GenerateOptions(seed=9)
    assert options_from({"loop": "repeat"}, base) == GenerateOptions(seed=9, loop="repeat")


@pytest.mark.parametrize("name,value,words", [
    ("num_steps", "0", "between 1 and 1000"), ("num_steps", "2.5", "whole number"), ("seed", "-1", "between"),
    ("guidance_scale", "nan", "finite"), ("guidance_scale", "x", "not a number"), ("face", "left", "largest"),
    ("face", "track:x", "track:ID"), ("loop", "bounce", "pingpong"), ("silence_gating", "maybe", "true / false"),
    ("overlap", True, "whole number"),
])
def test_bad_values_name_the_option(name, value, words):
    with pytest.raises(ValueError) as err:
        BY_NAME[name].parse(value)
    assert str(err.value).startswith(f"{name}: ") and words in str(err.value)


def test_a_bad_flag_is_an_argparse_error(capsys):
    parser = argparse.ArgumentParser(prog="lipsync generate")
    add_option_flags(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--num_steps", "0"])
    assert "--num_steps" in capsys.readouterr().err
