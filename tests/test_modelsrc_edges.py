"""CLI input edges (issue 12): a model file raising a BaseException subclass, a misspelt --point."""

import pytest

from qsim_hooks.modelsrc import ModelFileError, load_model


def test_a_model_file_raising_a_base_exception_subclass_is_a_model_file_error(tmp_path):
    f = tmp_path / "boom.py"
    f.write_text("class Boom(BaseException):\n    pass\n\nraise Boom('no model today')\n")
    with pytest.raises(ModelFileError, match=r"boom\.py: Boom: no model today"):
        load_model(str(f))


def test_keyboard_interrupt_in_a_model_file_still_interrupts(tmp_path):
    f = tmp_path / "stop.py"
    f.write_text("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_model(str(f))


def test_a_misspelt_point_is_a_usage_error_naming_what_is_allowed(capsys):
    from qsim_hooks import cli

    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, before any model is built
        cli.main(["report", "--model", "resnet18", "--point", "bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "input, weight, output" in err and "context" in err


def test_a_config_rule_that_matches_nothing_exits_2_naming_the_rule(tmp_path, capsys):
    from pathlib import Path

    from qsim_hooks import cli

    small_cnn = str(Path(__file__).resolve().parents[1] / "examples" / "small_cnn.py")
    cfg = tmp_path / "typo.toml"
    cfg.write_text('input = "e4m3"\n\n[[rules]]\nmatch = "no_such_layer*"\nweight = "int4"\n')
    assert cli.main(["report", "--model", small_cnn, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no_such_layer*" in err and "typo.toml" in err and "Traceback" not in err
