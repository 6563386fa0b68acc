"""How data reaches the model: a DataLoader of (images, labels) fed by default gets an error that says what to
pass (chained to the model's own), and ``forward_loop=fn`` (a function that runs the model) gives exactly what
the same data gives as batches, in calibrate, compare, sweep, sensitivity and capture."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import qsim_hooks as qh
from qsim_hooks.batches import feed, feeding_hint

from .core.model_check import snapshot, verify_unchanged

CFG = qh.QuantConfig(input="int8", weight="int4")


@pytest.fixture(autouse=True)
def _eager(eager_kernels):
    yield


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def _loader():
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(12, 3, 8, 8, generator=g), torch.randint(0, 5, (12,), generator=g))
    return DataLoader(ds, batch_size=4)


def _images():
    return [b[0] for b in _loader()]


def _loop(m):
    for images, _labels in _loader():
        m(images)


CALLS = {
    "calibrate": lambda m, **kw: qh.calibrate(m, CFG, progress=False, **kw),
    "compare": lambda m, **kw: qh.compare(m, CFG, progress=False, **kw),
    "sweep": lambda m, **kw: qh.sweep(m, CFG, ["int8", "e4m3"], progress=False, **kw),
    "sensitivity": lambda m, **kw: qh.sensitivity(m, CFG, progress=False, **kw),
    "capture": lambda m, **kw: qh.capture(m, CFG, points=["3:input"], progress=False, **kw),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_loader_of_images_and_labels_says_how_to_feed_it(name):
    m = _net()
    snap = snapshot(m)
    data = {"data": _loader()} if name == "calibrate" else {"batches": _loader()}
    with pytest.raises(TypeError) as exc:
        CALLS[name](m, **data)
    msg = str(exc.value)
    assert "model(*batch)" in msg and "Tensor[4, 3, 8, 8], Tensor[4]" in msg
    assert "forward=lambda m, b: m(b[0])" in msg and "forward_loop=" in msg and "Sequential.forward" in msg
    assert isinstance(exc.value.__cause__, TypeError)  # the model's own error, chained
    assert "positional argument" in str(exc.value.__cause__)
    verify_unchanged(m, snap)


@pytest.mark.parametrize("name", list(CALLS))
def test_forward_loop_gives_what_the_same_batches_give(name):
    m = _net()
    snap = snapshot(m)
    by_loop = CALLS[name](m, forward_loop=_loop)
    as_batches = CALLS[name](m, data=_images()) if name == "calibrate" else CALLS[name](m, batches=_images())
    verify_unchanged(m, snap)  # the counting hook is gone too
    if name == "calibrate":
        assert by_loop.keys() == as_batches.keys() and len(by_loop) == 4  # 2 inputs, 2 weights
        assert all(by_loop[k].amax == as_batches[k].amax for k in by_loop.keys())
        assert by_loop.num_batches == 3  # three calls of the model
    elif name == "compare":
        assert by_loop.output_sqnr_db == as_batches.output_sqnr_db and by_loop.batches == 3
        assert by_loop.stats == as_batches.stats
    elif name == "capture":
        assert [torch.equal(a.data, b.data) for a, b in zip(by_loop.values(), as_batches.values())] == [True]
    else:
        assert by_loop.rows == as_batches.rows


def test_the_explicit_forward_works_and_agrees_with_forward_loop():
    m = _net()
    with_forward = qh.calibrate(m, CFG, _loader(), forward=lambda model, b: model(b[0]), progress=False)
    by_loop = qh.calibrate(m, CFG, forward_loop=_loop, progress=False)
    assert all(with_forward[k].amax == by_loop[k].amax for k in by_loop.keys())


def test_an_error_inside_the_model_is_not_mistaken_for_the_feeding():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            raise TypeError("inside forward")

    with pytest.raises(TypeError, match="^inside forward$"):
        qh.compare(Broken(), CFG, torch.randn(2, 4))
    assert feeding_hint(Broken(), torch.randn(2, 4)) is None


def test_feeding_hints_for_dicts_and_single_values():
    m = nn.Linear(4, 4)
    hint = feeding_hint(m, {"input_ids": torch.zeros(2, 4), "mask": torch.ones(2, 4)})
    assert "model(**batch)" in hint and "['input_ids', 'mask']" in hint and "m(b['input_ids'])" in hint
    assert feeding_hint(m, torch.zeros(2, 4)) is None and feeding_hint(m, (torch.zeros(2, 4),)) is None
    assert feed(m, (torch.zeros(2, 4),)).shape == (2, 4)


def test_forward_loop_errors():
    m = _net()
    with pytest.raises(ValueError, match="never called the model"):
        qh.compare(m, CFG, forward_loop=lambda model: None)
    with pytest.raises(ValueError, match="never called the model"):
        qh.calibrate(m, CFG, forward_loop=lambda model: None, progress=False)
    with pytest.raises(TypeError, match="not both"):
        qh.compare(m, CFG, torch.randn(1, 3, 8, 8), forward_loop=_loop)
    with pytest.raises(TypeError, match="not both"):
        qh.calibrate(m, CFG, _images(), forward_loop=_loop)
    with pytest.raises(TypeError, match="forward_loop must be a function"):
        qh.compare(m, CFG, forward_loop=3)
    seen = iter([1, 2])
    with pytest.raises(ValueError, match="same data every time"):  # a loop that runs 1 batch, then 2
        qh.compare(m, CFG, forward_loop=lambda model: [model(x) for x in _images()[:next(seen)]])


def _on(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Identity(), nn.Linear(4, 3)).eval().to(device)


#: the model's kind of device and another one: a real GPU where there is one, the meta device everywhere
OTHER = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", OTHER)
@pytest.mark.parametrize("name", list(CALLS))
def test_a_batch_on_another_device_is_warned_about(name, device):
    model, x = _on(device), torch.randn(2, 4)  # the model on `device`, the batch on the CPU
    with pytest.warns(UserWarning, match=rf"parameters are on {device} but the batch's tensors are on cpu"):
        try:
            CALLS[name](model, **{"data" if name == "calibrate" else "batches": [(x,)]})
        except Exception:  # the model's own error (it cannot run on mixed devices) may follow the warning
            pass
    model, xs = _on("cpu"), [x.to(device)]  # and the reverse, through a forward_loop
    with pytest.warns(UserWarning, match=rf"parameters are on cpu but the batch's tensors are on {device}"):
        try:
            CALLS[name](model, forward_loop=lambda m: [m(b) for b in xs])
        except Exception:
            pass


def test_no_warning_when_the_devices_agree(recwarn):
    model, x = _on("cpu"), torch.randn(2, 4)
    feed(model, {"input": x})
    qh.compare(model, CFG, batches=[x], progress=False)
    assert not [w for w in recwarn if "device" in str(w.message)]
