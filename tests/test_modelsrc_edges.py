"""A model file that raises a BaseException subclass is one error naming the file (issue 12), not a traceback."""

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
