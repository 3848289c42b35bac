"""Shared fixtures: golden files, the ../shared data, and compiling test models.

``pytest --update-golden`` rewrites every golden file a test checks and then
fails the run, so that ``git diff golden/`` is read before it is committed.
A missing golden fails with the command that creates it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "golden"
SHARED = REPO.parent / "shared"
SHARED_MODELS = SHARED / "models"
SHARED_IMAGES = SHARED / "images"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files (the run still fails)")


class Golden:
    def __init__(self, update: bool):
        self.update = update
        self.rewritten: list[Path] = []
        self.changed: list[Path] = []

    def check(self, relative: str, text: str) -> None:
        path = GOLDEN_DIR / relative
        old = path.read_text() if path.exists() else None
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            self.rewritten.append(path)
            if old != text:
                self.changed.append(path)
            return
        if old is None:
            pytest.fail(f"golden/{relative} is missing; create it with: pytest --update-golden")
        if old != text:
            diff = _first_difference(old, text)
            pytest.fail(f"golden/{relative} differs at line {diff}; if intended: pytest --update-golden, then review git diff")


    def check_absent(self, relative: str) -> None:
        """No golden file at ``relative``: what it would hold is stored elsewhere (or nowhere)."""
        path = GOLDEN_DIR / relative
        if not path.exists():
            return
        if self.update:
            path.unlink()
            self.changed.append(path)
            return
        pytest.fail(f"golden/{relative} is stale (nothing stores it any more); remove it with: pytest --update-golden")


def _first_difference(old: str, new: str) -> str:
    for number, (a, b) in enumerate(zip(old.splitlines(), new.splitlines()), start=1):
        if a != b:
            return f"{number}:\n  golden: {a}\n  now:    {b}"
    return f"{min(len(old.splitlines()), len(new.splitlines())) + 1} (one text is longer)"


@pytest.fixture(scope="session")
def golden(request: pytest.FixtureRequest) -> Golden:
    keeper = Golden(request.config.getoption("--update-golden"))
    request.config._golden = keeper
    return keeper


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    keeper = getattr(session.config, "_golden", None)
    if keeper is not None and keeper.update:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"--update-golden: rewrote {len(keeper.rewritten)} golden files, {len(keeper.changed)} changed; "
                "review `git diff golden/` and rerun without the flag", red=True)


class SharedData:
    """The real models and photos in ../shared; a test that needs them skips without them."""

    def model(self, name: str) -> Path:
        path = SHARED_MODELS / name
        if not path.exists():
            pytest.skip(f"{path} is not available (../shared/models beside the checkout)")
        return path

    def images(self, count: int) -> list[Path]:
        from qcompiler.data.images import list_images

        if not SHARED_IMAGES.is_dir():
            pytest.skip(f"{SHARED_IMAGES} is not available")
        return list_images(SHARED_IMAGES)[:count]


@pytest.fixture(scope="session")
def shared() -> SharedData:
    return SharedData()


@pytest.fixture
def model_path(model_file) -> Path:
    """A small residual block (input x: [N, 16, 16, 16]) saved as model.onnx."""
    from qcompiler.testing.models import TEST_MODELS

    return model_file(TEST_MODELS["resnet_basic_block"]())


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    """Twelve seeded standard-normal samples for model_path, as calib.npy."""
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(0).standard_normal((12, 16, 16, 16)).astype(np.float32))
    return path


@pytest.fixture
def model_file(tmp_path: Path):
    """Save a ModelProto under tmp_path and return its path."""

    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save(model, str(path))
        return path

    return save


IMAGENET_PREPROCESS = dict(resize_shorter=256, crop=(224, 224), mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375))


@pytest.fixture(scope="session")
def mobilenet_photos(shared, tmp_path_factory):
    """32 preprocessed photos as calib.npy, and 16 more held out (an array)."""
    import numpy as np

    from qcompiler.data.images import Preprocess, load_batch

    images = shared.images(48)
    preprocess = Preprocess(**IMAGENET_PREPROCESS)
    folder = tmp_path_factory.mktemp("photos")
    np.save(folder / "calib.npy", load_batch(images[:32], preprocess))
    return folder / "calib.npy", load_batch(images[32:], preprocess)


@pytest.fixture(scope="session")
def mobilenet_compiled(shared, mobilenet_photos, tmp_path_factory):
    """``compile(backend) -> out dir`` of mobilenetv2_bn with the 32 photos, each backend compiled once."""
    from qcompiler.cli import main

    model = shared.model("mobilenetv2_bn.onnx")
    calib, _ = mobilenet_photos
    outputs: dict[str, Path] = {}

    def compile_for(backend: str) -> Path:
        if backend not in outputs:
            out = tmp_path_factory.mktemp(backend) / "out"
            assert main([str(model), "-b", backend, "-o", str(out), "--calib", str(calib), "-q"]) == 0
            outputs[backend] = out
        return outputs[backend]

    return compile_for
