"""How calibration batches its data: the batch size, and reading the next batch while the current one runs."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Literal

from qcompiler.data.sources import CalibrationData, Feed
from qcompiler.errors import UsageError

# An "auto" calibration batch holds about this much input. Small batches keep
# a batch's activations in cache: the MobileNetV2 observer (224x224 input,
# 0.6 MB a sample, so batch 2) takes 0.37 s over 93 photos at batch 2 against
# 0.55 s at batch 16. Small inputs get larger batches, which share each run's
# fixed cost: the PaddleOCR classifier (48x192, 0.11 MB, batch 13) is
# fastest at batch 8-16 and 2x slower at batch 1.
AUTO_BATCH_INPUT_BYTES = 1_500_000
AUTO_BATCH_MAX = 16


def batch_size(configured: int | Literal["auto"], data: CalibrationData) -> int:
    """The configured batch size, or for "auto" the model's fixed batch or the one ``auto_batch_size`` picks."""
    if data.fixed_batch is not None:
        if configured not in ("auto", data.fixed_batch):
            raise UsageError(f"calibration.batch_size is {configured}, but the model's inputs fix the batch at "
                             f"{data.fixed_batch}; set calibration.batch_size={data.fixed_batch} or auto")
        return data.fixed_batch
    return configured if configured != "auto" else auto_batch_size(data)


def auto_batch_size(data: CalibrationData) -> int:
    """Samples per calibration batch: about AUTO_BATCH_INPUT_BYTES of input, at most AUTO_BATCH_MAX."""
    sample = data.head(1)
    sample_bytes = sum(array.nbytes for array in sample.values())
    return max(1, min(AUTO_BATCH_MAX, AUTO_BATCH_INPUT_BYTES // max(sample_bytes, 1)))


def read_ahead(batches: Iterator[Feed]) -> Iterator[Feed]:
    """``batches``, each one read in a worker thread while the caller works on the one before.

    Image decoding and onnxruntime both release the GIL, so reading overlaps
    observing (MobileNetV2, 93 photos: 0.85 s -> 0.65 s). The source is
    advanced from that one thread, one batch at a time, so a module:function
    generator needs no locking.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calibration-reader") as reader:
        pending = reader.submit(next, batches, None)
        while (feed := pending.result()) is not None:
            pending = reader.submit(next, batches, None)
            yield feed
