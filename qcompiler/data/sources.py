"""Calibration and evaluation data: a repeatable stream of feed dicts.

``--calib`` (and ``--data`` of ``qcompile eval``) takes:
- a folder of images, read in name order and preprocessed by a
  ``Preprocess`` spec (flags or a small YAML; by default a plain resize to
  the model's input size), for single-input image models;
- an ``.npy`` file, N x input shape, for single-input models (memory-mapped,
  so it streams);
- an ``.npz`` file with one array per input name;
- ``module:function``, a Python callable returning an iterable of feed
  dicts (input name -> batch array); it is called once per pass over the data.
Every batch is checked against the model's inputs: rank, static dims, dtype
and finiteness. A problem is a one-line error naming the sample.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx

from qcompiler.data.images import Preprocess, list_images, load_batch
from qcompiler.errors import QCompileError, UsageError, first_line

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple | None  # ints for static dims, str/None for dynamic ones; None when the rank is unknown
    dtype: np.dtype

    @classmethod
    def of_model(cls, model: onnx.ModelProto) -> list["InputSpec"]:
        """The real inputs of ``model`` (initializers listed as inputs excluded)."""
        initializers = {i.name for i in model.graph.initializer}
        specs = []
        for value in model.graph.input:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                          for d in tensor_type.shape.dim) if tensor_type.HasField("shape") else None
            specs.append(cls(value.name, shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))))
        return specs


@dataclass
class CalibrationData:
    """Samples in a fixed order; ``batches(n)`` streams them, ``head(k)`` keeps a few."""

    description: str
    count: int | None
    _batches: Callable[[int], Iterator[Feed]]
    # whether reading a batch is real work (decoding images, a user's function)
    # rather than a copy out of an array file
    decodes: bool = False
    # the batch size the model's inputs fix (a static first dimension), if they do
    fixed_batch: int | None = None
    # what makes the data doubtful, for the caller to report (a compile: as its warnings, --strict: errors)
    warnings: list[str] = field(default_factory=list)

    def batches(self, batch_size: int) -> Iterator[Feed]:
        return self._batches(batch_size)

    def head(self, samples: int) -> Feed:
        """The first ``samples`` samples as one feed ({} when there are none)."""
        parts: list[Feed] = []
        taken = 0
        for feed in self.batches(samples):
            parts.append(feed)
            taken += len(next(iter(feed.values())))
            if taken >= samples:
                break
        return {name: np.concatenate([p[name] for p in parts])[:samples] for name in parts[0]} if parts else {}

    def split(self, fraction: float) -> tuple["CalibrationData", "CalibrationData"]:
        """The samples apart from a held-out ``fraction`` of them, and the held-out ones.

        Sample i is held out when floor((i + 1) f) > floor(i f): spread evenly
        through the data (every fourth for f = 0.25), not its tail, since
        photo folders are often sorted by subject.
        """
        def held(index: int) -> bool:
            return math.floor((index + 1) * fraction) > math.floor(index * fraction)

        def kept(index: int) -> bool:
            return not held(index)

        parts = []
        for part, label in ((kept, "calibrate"), (held, "held out")):
            count = sum(map(part, range(self.count))) if self.count is not None else None
            described = f"{self.description}, {count if count is not None else 'some'} {label}"
            parts.append(dataclasses.replace(self, description=described, count=count,
                                             _batches=_selected(self.batches, part)))
        return parts[0], parts[1]


def _selected(batches: Callable[[int], Iterator[Feed]],
              wanted: Callable[[int], bool]) -> Callable[[int], Iterator[Feed]]:
    """``batches`` with only the samples whose index is ``wanted``, re-batched to the size asked for."""
    def selected(batch_size: int) -> Iterator[Feed]:
        pending: list[Feed] = []
        held = index = 0
        for feed in batches(batch_size):
            count = len(next(iter(feed.values())))
            mask = np.fromiter((wanted(i) for i in range(index, index + count)), bool, count)
            index += count
            if mask.any():
                pending.append({name: array[mask] for name, array in feed.items()})
                held += int(mask.sum())
            while held >= batch_size:
                joined = {name: np.concatenate([p[name] for p in pending]) for name in pending[0]}
                yield {name: array[:batch_size] for name, array in joined.items()}
                rest = {name: array[batch_size:] for name, array in joined.items()}
                held -= batch_size
                pending = [rest] if held else []
        if held:
            yield {name: np.concatenate([p[name] for p in pending]) for name in pending[0]}

    return selected


def open_data(source: str, inputs: Sequence[InputSpec], preprocess: Preprocess | None = None,
              limit: int | None = None) -> CalibrationData:
    """Open ``source`` (folder, .npy, .npz or module:function) for a model with ``inputs``."""
    for spec in inputs:
        if spec.shape is not None and 0 in spec.shape:
            raise UsageError(f"input {spec.name} has shape {list(spec.shape)}: a dimension of 0 holds no data; "
                             "export the model with that dimension dynamic or of its real size")
    data = _open(source, inputs, preprocess, limit)
    data.fixed_batch = fixed_batch(inputs)
    return data


def fixed_batch(inputs: Sequence[InputSpec]) -> int | None:
    """The batch size every input fixes with a static first dimension (torch.onnx's default export: 1)."""
    firsts = {spec.shape[0] if spec.shape else None for spec in inputs}
    first = firsts.pop() if len(firsts) == 1 else None
    return first if isinstance(first, int) and first > 0 else None


def _open(source: str, inputs: Sequence[InputSpec], preprocess: Preprocess | None,
          limit: int | None) -> CalibrationData:
    path = Path(source)
    if path.is_dir():
        return _image_folder(path, _single_input(inputs, source), preprocess, limit)
    if path.suffix == ".npy" and path.is_file():
        return _npy(path, _single_input(inputs, source), limit)
    if path.suffix == ".npz" and path.is_file():
        return _npz(path, inputs, limit)
    if ":" in source and not path.exists():
        return _callable(source, inputs, limit)
    raise UsageError(f"--calib {source}: not a folder of images, an .npy or .npz file, or module:function")


def _single_input(inputs: Sequence[InputSpec], source: str) -> InputSpec:
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise UsageError(f"{source}: the model has {len(inputs)} inputs ({names}); give an .npz with one array each")
    return inputs[0]


NO_PREPROCESSING = ("no image preprocessing given: images are only resized to the input size, RGB 0..255, "
                    "not normalized; give --preprocess FILE.yaml or --mean/--std if the model expects more")


def default_preprocess(spec: InputSpec) -> Preprocess:
    """A plain resize to the model's input size: correct only for models that take raw 0..255 RGB."""
    shape = spec.shape or ()
    layout = "NHWC" if len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
    size = image_size(spec, layout)
    if size is None:
        shown = f"shape {list(spec.shape)}" if spec.shape is not None else "no shape"
        raise UsageError(f"input {spec.name} has {shown}; say how to size images with --resize HxW "
                         "(and --crop, --mean, --std) or --preprocess FILE.yaml")
    return Preprocess(resize=size, layout=layout, channels=_colour(Preprocess.channels, spec, layout))


def image_size(spec: InputSpec, layout: str) -> tuple[int, int] | None:
    """The (height, width) an image input of ``layout`` fixes, or None where it does not (dynamic, not 4-D)."""
    shape = spec.shape
    if shape is None or len(shape) != 4:
        return None
    size = shape[2:] if layout == "NCHW" else shape[1:3]
    return (size[0], size[1]) if all(isinstance(d, int) and d > 0 for d in size) else None


def sized(preprocess: Preprocess, spec: InputSpec) -> Preprocess:
    """``preprocess``, resizing to the model's input size when it says nothing of the size itself, in grayscale
    for a one-channel input.

    ``--mean``/``--std`` alone keep the resize to the input that no
    preprocessing at all gets; a resize or crop of your own is kept as given.
    """
    preprocess = dataclasses.replace(preprocess, channels=_colour(preprocess.channels, spec, preprocess.layout))
    if preprocess.resize or preprocess.resize_shorter or preprocess.crop:
        return preprocess
    size = image_size(spec, preprocess.layout)
    return dataclasses.replace(preprocess, resize=size) if size is not None else preprocess


def _colour(channels: str, spec: InputSpec, layout: str) -> str:
    """RGB (the default) becomes L for an input of one channel; BGR, asked for, is kept for the check to refuse."""
    axis = 1 if layout == "NCHW" else 3
    one_channel = spec.shape is not None and len(spec.shape) == 4 and spec.shape[axis] == 1
    return "L" if one_channel and channels == "RGB" else channels


def _image_folder(folder: Path, spec: InputSpec, preprocess: Preprocess | None, limit: int | None) -> CalibrationData:
    paths = list_images(folder)[:limit]
    if not paths:
        raise UsageError(f"{folder} holds no images (.jpg, .png, ...); give a folder of photos, an .npy or an .npz")
    warnings = [] if preprocess is not None else [NO_PREPROCESSING]
    preprocess = sized(preprocess, spec) if preprocess is not None else default_preprocess(spec)
    wanted = image_size(spec, preprocess.layout)
    fix = f"; size them with --resize {wanted[0]}x{wanted[1]} or --crop {wanted[0]}x{wanted[1]}" if wanted else ""

    def batches(batch_size: int) -> Iterator[Feed]:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start: start + batch_size]
            batch = load_batch(chunk, preprocess)
            yield {spec.name: _checked(batch, spec, f"{chunk[0].name}", fix)}

    return CalibrationData(f"{len(paths)} images from {folder}", len(paths), batches, decodes=True,
                           warnings=warnings)


def _npy(path: Path, spec: InputSpec, limit: int | None) -> CalibrationData:
    shape, dtype, offset = _npy_header(path)
    count = min(shape[0], limit) if limit else shape[0] if shape else 0
    sample = shape[1:]
    sample_bytes = int(np.prod(sample, dtype=np.int64)) * dtype.itemsize

    def batches(batch_size: int) -> Iterator[Feed]:
        # read each batch from the file: neither the array nor its pages stay in memory
        with path.open("rb") as f:
            for start in range(0, count, batch_size):
                rows = min(batch_size, count - start)
                f.seek(offset + start * sample_bytes)
                batch = np.fromfile(f, dtype, rows * sample_bytes // dtype.itemsize).reshape((rows, *sample))
                yield {spec.name: _checked(batch, spec, f"{path.name}[{start}:{start + rows}]")}

    return CalibrationData(f"{count} samples from {path.name}", count, batches)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"format version {version} is not supported")
            shape, fortran_order, dtype = read_header(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{path.name} could not be read as a NumPy file ({exc})") from exc
    if fortran_order or dtype.hasobject:
        raise UsageError(f"{path.name}: save the array C-ordered and numeric (np.save(path, np.ascontiguousarray(a)))")
    return shape, dtype, offset


def _npz(path: Path, inputs: Sequence[InputSpec], limit: int | None) -> CalibrationData:
    archive = _load_array(path, lambda: np.load(path))
    names = sorted(archive.files)
    wanted = sorted(i.name for i in inputs)
    if names != wanted:
        raise UsageError(f"{path.name} holds arrays {names}; the model's inputs are {wanted}")
    arrays = {name: archive[name][:limit] if limit else archive[name] for name in names}
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise UsageError(f"{path.name}: the arrays hold different numbers of samples ({sorted(counts)})")
    return CalibrationData(f"{counts.pop()} samples from {path.name}", len(next(iter(arrays.values()))),
                           _array_batches(arrays, inputs, path.name))


def _load_array(path: Path, load: Callable):
    try:
        return load()
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{path.name} could not be read as a NumPy file ({exc})") from exc


def _array_batches(arrays: dict[str, np.ndarray], inputs: Sequence[InputSpec], label: str):
    count = len(next(iter(arrays.values())))

    def batches(batch_size: int) -> Iterator[Feed]:
        for start in range(0, count, batch_size):
            yield {spec.name: _checked(np.asarray(arrays[spec.name][start: start + batch_size]), spec,
                                       f"{label}[{start}:{start + batch_size}]") for spec in inputs}

    return batches


def _callable(source: str, inputs: Sequence[InputSpec], limit: int | None) -> CalibrationData:
    module_name, _, function_name = source.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--calib {source}: cannot import {function_name} from {module_name} ({exc})") from exc

    def batches(batch_size: int) -> Iterator[Feed]:
        seen = 0
        for index, feed in enumerate(_calls(function, source)):
            if limit is not None and seen >= limit:
                return
            if not isinstance(feed, dict) or sorted(feed) != sorted(i.name for i in inputs):
                raise UsageError(f"{source}: item {index} is not a dict of the model's inputs "
                                    f"({', '.join(i.name for i in inputs)})")
            feed = {s.name: _checked(np.asarray(feed[s.name]), s, f"{source} item {index}") for s in inputs}
            if limit is not None:
                feed = {name: array[: limit - seen] for name, array in feed.items()}
            seen += len(next(iter(feed.values())))
            yield feed

    return CalibrationData(f"feeds from {source}", limit, batches, decodes=True)


def _calls(function: Callable[[], Iterable[Feed]], source: str) -> Iterator[Feed]:
    """What ``function()`` yields; an exception it raises is the user's data error, said in one line."""
    try:
        yield from function()
    except QCompileError:
        raise
    except Exception as exc:
        raise UsageError(f"--calib {source} raised {type(exc).__name__}: {first_line(exc)}") from exc


def _checked(batch: np.ndarray, spec: InputSpec, where: str, fix: str = "") -> np.ndarray:
    """``batch`` once it fits input ``spec``: rank, static dims, dtype, finite values; else a UsageError (exit 2)."""
    if spec.shape is not None:
        _check_shape(batch, spec, where, fix)
    if batch.dtype != spec.dtype:
        raise UsageError(f"{where}: dtype {batch.dtype}, but input {spec.name} takes {spec.dtype}; convert it")
    if batch.dtype.kind == "f" and not np.isfinite(batch).all():
        raise UsageError(f"{where}: holds NaN or Inf values; drop those samples or fix how they were made")
    return batch


def _check_shape(batch: np.ndarray, spec: InputSpec, where: str, fix: str) -> None:
    if batch.ndim != len(spec.shape):
        raise UsageError(f"{where}: a batch of shape {list(batch.shape)} for input {spec.name} of shape "
                         f"{list(spec.shape)}; give N x {list(spec.shape[1:])}")
    for axis, (have, want) in enumerate(zip(batch.shape, spec.shape)):
        if axis > 0 and isinstance(want, int) and have != want:
            raise UsageError(f"{where}: shape {list(batch.shape)} does not fit input {spec.name} "
                             f"of shape {list(spec.shape)} (axis {axis}){fix}")
