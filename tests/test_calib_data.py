"""Calibration data sources: folders, .npy, .npz, module:function; checked batch by batch."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qcompiler.data.images import Preprocess
from qcompiler.data.sources import InputSpec, open_data
from qcompiler.errors import QCompileError, UsageError

IMAGE_INPUT = [InputSpec("x", ("N", 3, 8, 8), np.dtype(np.float32))]


def batches(data, size):
    return [feed["x"].shape[0] for feed in data.batches(size)]


def make_images(folder, count):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(folder / f"img{index:02d}.png")
    return folder


def test_image_folder_streams_in_name_order(tmp_path):
    folder = make_images(tmp_path / "photos", 5)
    data = open_data(str(folder), IMAGE_INPUT, Preprocess(resize=(8, 8), scale=1 / 255))
    assert data.count == 5 and batches(data, 2) == [2, 2, 1]
    assert data.decodes  # reading competes with onnxruntime for the CPU
    first = next(data.batches(5))["x"]
    assert first.shape == (5, 3, 8, 8) and first.dtype == np.float32 and 0 <= first.min() and first.max() <= 1
    np.testing.assert_array_equal(data.head(2)["x"], first[:2])
    assert open_data(str(folder), IMAGE_INPUT, Preprocess(resize=(8, 8)), limit=3).count == 3


def test_default_preprocess_resizes_to_the_input_and_warns(tmp_path):
    data = open_data(str(make_images(tmp_path / "photos", 1)), IMAGE_INPUT)
    assert next(data.batches(1))["x"].shape == (1, 3, 8, 8)
    assert len(data.warnings) == 1 and "not normalized" in data.warnings[0]
    assert open_data(str(tmp_path / "photos"), IMAGE_INPUT, Preprocess(scale=1 / 255)).warnings == []


def test_npy_and_npz(tmp_path):
    array = np.random.default_rng(1).normal(size=(7, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", array)
    data = open_data(str(tmp_path / "a.npy"), IMAGE_INPUT)
    assert batches(data, 3) == [3, 3, 1] and not data.decodes
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in data.batches(3)]), array)
    two_inputs = [InputSpec("x", ("N", 3, 8, 8), np.dtype(np.float32)), InputSpec("y", ("N", 2), np.dtype(np.float32))]
    np.savez(tmp_path / "b.npz", x=array, y=np.zeros((7, 2), np.float32))
    assert batches(open_data(str(tmp_path / "b.npz"), two_inputs), 4) == [4, 3]


@pytest.mark.parametrize("share, held", [(0.25, [3, 7, 11]), (0.5, [1, 3, 5, 7, 9, 11]), (0.3, [3, 6, 9])])
@pytest.mark.parametrize("batch", [1, 2, 5, 16])
def test_split_holds_out_a_share_spread_through_the_data_at_any_batch_size(tmp_path, share, held, batch):
    array = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1) * np.ones((1, 3, 8, 8), np.float32)
    np.save(tmp_path / "a.npy", array)
    kept, held_out = open_data(str(tmp_path / "a.npy"), IMAGE_INPUT).split(share)
    indices = {name: [int(v) for feed in part.batches(batch) for v in feed["x"][:, 0, 0, 0]]
               for name, part in (("kept", kept), ("held", held_out))}
    assert indices["held"] == held and indices["kept"] == [i for i in range(12) if i not in held]
    assert held_out.count == len(held) and kept.count == 12 - len(held)
    sizes = [feed["x"].shape[0] for feed in kept.batches(batch)]
    assert all(size == batch for size in sizes[:-1]) and 0 < sizes[-1] <= batch


def test_split_of_a_function_of_unknown_length(tmp_path, monkeypatch):
    (tmp_path / "eight_feeds.py").write_text(
        "import numpy as np\n"
        "def feeds():\n"
        "    for i in range(4):\n"
        "        yield {'x': np.full((2, 3, 8, 8), i, np.float32)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    kept, held = open_data("eight_feeds:feeds", IMAGE_INPUT).split(0.25)
    assert held.count is None and batches(held, 4) == [2] and batches(kept, 4) == [4, 2]


def test_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_feeds.py").write_text(
        "import numpy as np\n"
        "def feeds():\n"
        "    for i in range(3):\n"
        "        yield {'x': np.full((2, 3, 8, 8), i, np.float32)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = open_data("my_feeds:feeds", IMAGE_INPUT, limit=5)
    assert batches(data, 99) == [2, 2, 1]


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 3, 9, 8), np.float32), "does not fit input x of shape ['N', 3, 8, 8] (axis 2)"),
    (np.zeros((4, 3, 8, 8), np.float64), "dtype float64, but input x takes float32"),
    (np.full((4, 3, 8, 8), np.nan, np.float32), "holds NaN or Inf"),
    (np.zeros((4, 8, 8), np.float32), "give N x [3, 8, 8]"),
])
def test_bad_arrays_are_one_line_errors(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(QCompileError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        list(open_data(str(tmp_path / "bad.npy"), IMAGE_INPUT).batches(2))


def test_bad_sources_are_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no images"):
        open_data(str(tmp_path / "empty"), IMAGE_INPUT)
    with pytest.raises(UsageError, match="cannot import feeds from no_such_module"):
        open_data("no_such_module:feeds", IMAGE_INPUT)
    np.savez(tmp_path / "c.npz", z=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match=r"holds arrays \['z'\]; the model's inputs are \['x'\]"):
        open_data(str(tmp_path / "c.npz"), IMAGE_INPUT)
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(UsageError, match="could not be read as a NumPy file"):
        open_data(str(tmp_path / "broken.npy"), IMAGE_INPUT)
    two = IMAGE_INPUT + [InputSpec("y", ("N", 2), np.dtype(np.float32))]
    np.save(tmp_path / "d.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match="the model has 2 inputs"):
        open_data(str(tmp_path / "d.npy"), two)
