"""One plain onnxruntime float pass over a data source: the yardstick for compile time.

    python benchmarks/float_pass.py MODEL.onnx DATA [--preprocess FILE.yaml] [--batch 16]

DATA is anything ``--calib`` takes (a folder of images, .npy, .npz); it is
read with the same loader qcompile uses, so decoding costs the same on
both sides. Run it as a fresh process, like qcompile, so that interpreter
start, imports and session creation count on both sides too.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import yaml

from qcompiler import runtime
from qcompiler.config import schema
from qcompiler.data.images import Preprocess
from qcompiler.data.sources import InputSpec, open_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data")
    parser.add_argument("--preprocess", type=Path)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    session = runtime.session(args.model)
    preprocess = schema.build(Preprocess, yaml.safe_load(args.preprocess.read_text())) if args.preprocess else None
    inputs = InputSpec.of_model(onnx.load(args.model, load_external_data=False))
    for feed in open_data(args.data, inputs, preprocess, None).batches(args.batch):
        session.run(None, feed)


if __name__ == "__main__":
    main()
