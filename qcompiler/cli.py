"""``qcompile``: the command line.

    qcompile MODEL --backend NAME|FILE --out DIR --calib DATA [--dump-dir D] [--set k=v ...]
    qcompile eval FLOAT.onnx QUANT.onnx --data DATA
    qcompile check --backend NAME|FILE MODEL.onnx
    qcompile --list-backends | --list-passes | --show-backend NAME|FILE

Exit codes: 0 success; 2 a usage or input error, anything in the invocation
you can fix (a flag, a backend file, a model file that is not an FP32 ONNX
model, the data, the output folder); 1 a compile that failed on a valid
model (an op onnxruntime cannot run, a pass that failed, an internal error).
Errors are one line on stderr: ``qcompile: error: <what went wrong and what
to do>``; warnings ``qcompile: warning: ...``. SIGINT and SIGTERM stop a
compile with nothing written.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from qcompiler import __version__
from qcompiler.config import schema
from qcompiler.config.loader import backend_label, load_backend, read_yaml_mapping, resolved_yaml, shipped_backends
from qcompiler.data.images import Preprocess
from qcompiler.driver import CompileRequest, bind_backend, compile_model
from qcompiler.emit.emitters import EmitOption
from qcompiler.emit.registry import checkers
from qcompiler.errors import QCompileError, UsageError, first_line
from qcompiler.graph.ops import is_quantized_op
from qcompiler.measure.deployment_gap import summary as gap_summary
from qcompiler.pipeline.manager import format_stats

PROG = "qcompile"
EVAL_BATCH = 16
# Older flags for emitter options, kept as aliases of --emit-option KEY=VALUE.
EMIT_OPTION_ALIASES = {"trt_version": "--trt-version", "encodings_version": "--encodings-version"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Quantize an FP32 ONNX model exactly as a backend runs it.",
                     epilog=f"other commands: '{PROG} eval FLOAT.onnx QUANT.onnx --data DATA' compares a quantized "
                            f"model with its float self; '{PROG} check --backend NAME|FILE M.onnx' lists every rule "
                            f"of a backend a Q/DQ model breaks (see {PROG} eval --help, {PROG} check --help)")
    parser.add_argument("model", nargs="?", type=Path, help="the FP32 ONNX model")
    parser.add_argument("-b", "--backend", help="shipped backend name or path of a backend YAML file")
    parser.add_argument("-o", "--out", type=Path, help="output directory (created; files replaced atomically)")
    add_set_argument(parser)
    add_data_arguments(parser, "--calib", "calibration data: a folder of images, .npy, .npz or module:function")
    parser.add_argument("--calib-size", type=int, metavar="N", help="use the first N calibration samples")
    accuracy = parser.add_argument_group("accuracy target (layer_fallback)")
    accuracy.add_argument("--target", metavar="EXPR",
                          help="return the fewest layers to float that meet EXPR: top1_agreement>=0.98, sqnr_db>=30, "
                               "drop(top1_agreement)<=0.01 or module:function>=VALUE")
    accuracy.add_argument("--eval-data", metavar="DATA",
                          help="what --target is measured on, preprocessed as --calib is (default: a quarter of the "
                               "--calib samples, held out from calibration)")
    files = parser.add_argument_group("backend files")
    files.add_argument("--emit-option", dest="emit_options", action="append", default=[], metavar="KEY=VALUE",
                       help="an option of the backend's emitters, e.g. trt_version=8.6.1 (tensorrt: the "
                            "calibration.cache header) or encodings_version=1.0.0 (snpe: 0.6.1, 1.0.0, 2.0.0)")
    for key, flag in EMIT_OPTION_ALIASES.items():
        files.add_argument(flag, dest=key, metavar="VALUE", help=f"the same as --emit-option {key}=VALUE")
    debug = parser.add_argument_group("seeing inside")
    debug.add_argument("--dump-dir", type=Path, help="write NNN_<pass>.qir/.onnx per stage and pipeline files")
    debug.add_argument("--print-after", action="append", default=[], metavar="PASS", help="print the QIR after PASS")
    debug.add_argument("--print-after-all", action="store_true", help="print the QIR after every pass")
    debug.add_argument("--print-changed", action="store_true", help="print the QIR after passes that changed it")
    debug.add_argument("--stop-after", metavar="PASS", help="stop the pipeline after PASS")
    debug.add_argument("--disable", action="append", default=[], metavar="PASS", help="skip PASS")
    debug.add_argument("--explain", action="append", default=[], metavar="PASS",
                       help="say, per node, why PASS did or did not apply")
    info = parser.add_argument_group("information")
    info.add_argument("--list-backends", action="store_true", help="list the shipped backends")
    info.add_argument("--list-passes", action="store_true", help="list the registered passes")
    info.add_argument("--show-backend", metavar="NAME|FILE", help="print a backend's resolved configuration")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.add_argument("--strict", action="store_true",
                        help="make every warning (degenerate calibration data, ...) an error")
    add_logging_arguments(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a backend field, e.g. --set quantizers.weight.bits=4")


def emit_options_from(args: argparse.Namespace) -> list[EmitOption]:
    """The emitter options of ``--emit-option KEY=VALUE`` and of its alias flags."""
    options = []
    for assignment in args.emit_options:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise UsageError(f"--emit-option {assignment!r}: expected KEY=VALUE, e.g. --emit-option trt_version=8.6.1")
        options.append(EmitOption(key, text, f"--emit-option {key}"))
    for key, flag in EMIT_OPTION_ALIASES.items():
        if getattr(args, key) is not None:
            options.append(EmitOption(key, getattr(args, key), flag))
    return options


def add_data_arguments(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(flag, dest="data", metavar="DATA", help=help_text)
    data.add_argument("--preprocess", type=Path, metavar="FILE.yaml",
                      help="image preprocessing: resize_shorter, resize, crop, scale, mean, std, channels, layout")
    data.add_argument("--resize", type=_pair, metavar="HxW", help="resize images to exactly HxW")
    data.add_argument("--resize-shorter", type=int, metavar="N", help="resize the shorter image side to N")
    data.add_argument("--crop", type=_pair, metavar="HxW", help="center-crop images to HxW")
    data.add_argument("--scale", type=float, help="multiply 0..255 pixel values by this first")
    data.add_argument("--mean", type=_floats, metavar="R,G,B", help="subtract per channel (after --scale)")
    data.add_argument("--std", type=_floats, metavar="R,G,B", help="divide per channel (after --mean)")
    data.add_argument("--bgr", action="store_true", help="feed channels in BGR order")
    data.add_argument("--nhwc", action="store_true", help="feed images as NHWC rather than NCHW")


def preprocess_from(args: argparse.Namespace) -> Preprocess | None:
    """The image preprocessing the flags (over an optional YAML file) describe, or None for the default."""
    fields: dict = {}
    if args.preprocess is not None:
        fields.update(read_yaml_mapping(args.preprocess, f"--preprocess {args.preprocess}"))
    flags = {"resize": args.resize, "resize_shorter": args.resize_shorter, "crop": args.crop,
             "scale": args.scale, "mean": args.mean, "std": args.std,
             "channels": "BGR" if args.bgr else None, "layout": "NHWC" if args.nhwc else None}
    fields.update({key: value for key, value in flags.items() if value is not None})
    if not fields:
        return None
    try:
        return schema.build(Preprocess, fields)
    except UsageError as exc:
        raise UsageError(f"preprocess: {exc}") from None


def _pair(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW, e.g. 224x224") from None
    return height, width


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress (-vv: debug)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")


def build_eval_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"{PROG} eval", description="Compare a quantized model with its float self on data.")
    parser.add_argument("float_model", type=Path, help="the float model")
    parser.add_argument("quant_model", type=Path, help="the quantized model (e.g. OUT/model.qdq.onnx)")
    add_data_arguments(parser, "--data", "a folder of images, .npy, .npz or module:function")
    parser.add_argument("--data-size", type=int, metavar="N", help="use the first N samples")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help=f"samples a run (default {EVAL_BATCH}, or the batch the model's inputs fix)")
    parser.add_argument("--onnxruntime-kernels", action="store_true",
                        help="run QUANT with onnxruntime's fused integer kernels, as its CPU provider deploys it, "
                             "instead of Q/DQ as the ONNX spec defines them")
    add_logging_arguments(parser)
    return parser


def build_check_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"{PROG} check", description="List every rule of a backend that a Q/DQ model breaks.")
    parser.add_argument("model", type=Path, help="the Q/DQ ONNX model")
    parser.add_argument("-b", "--backend", required=True,
                        help="shipped backend name or path of a backend YAML file (its constraints and its "
                             "emitters' rules are checked)")
    add_set_argument(parser)
    add_logging_arguments(parser)
    return parser


class Interrupted(QCompileError):
    """SIGINT or SIGTERM during a compile: its staging folders are gone, out/ is as it was."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    previous = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
    try:
        if argv[:1] == ["eval"]:
            return _eval(_parsed(build_eval_parser(), argv[1:]))
        if argv[:1] == ["check"]:
            return _check(_parsed(build_check_parser(), argv[1:]))
        return _run(_parsed(build_parser(), argv))
    except QCompileError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like SIGINT: every staging folder is removed on the way out


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _parsed(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` and set up logging from its -v count."""
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logging.basicConfig(level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
                        handlers=[handler], force=True)
    return args


class _Formatter(logging.Formatter):
    """``qcompile: warning: ...`` for warnings (and errors), ``qcompile: ...`` for what -v tells."""

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"{PROG}: {level}{record.getMessage()}"


def _run(args: argparse.Namespace) -> int:
    if args.list_backends:
        return _list_backends()
    if args.list_passes:
        return _list_passes()
    if args.show_backend:
        backend = load_backend(args.show_backend, args.overrides)
        bind_backend(backend, backend_label(args.show_backend))  # its passes and emitters exist, options fit
        print(resolved_yaml(backend), end="")
        return 0
    missing = [flag for flag, value in (("MODEL", args.model), ("--backend", args.backend), ("--out", args.out))
               if value is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}; e.g. {PROG} model.onnx --backend tensorrt --out out/")
    try:
        result = compile_model(_request(args))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; nothing was written ({args.out} is as it was)") from None
    for pass_name in args.explain:
        for explanation in result.ctx.explanations_of(pass_name):
            print(explanation)
    if not args.quiet:
        _print_summary(args, result)
    return 0


def _request(args: argparse.Namespace) -> CompileRequest:
    return CompileRequest(
        model=args.model, backend=args.backend, out=args.out, overrides=args.overrides,
        dump_dir=args.dump_dir, print_after=args.print_after, print_after_all=args.print_after_all,
        print_changed=args.print_changed, stop_after=args.stop_after, disable=args.disable,
        explain=args.explain, calib=args.data, calib_size=args.calib_size, preprocess=preprocess_from(args),
        progress=not args.quiet, emit_options=emit_options_from(args), strict=args.strict,
        target=args.target, eval_data=args.eval_data,
    )


def _eval(args: argparse.Namespace) -> int:
    from qcompiler.data.sources import InputSpec, open_data
    from qcompiler.graph.importer import load_model
    from qcompiler.measure.evaluate import evaluate

    if args.data is None:
        raise UsageError(f"give the data to compare on: {PROG} eval FLOAT QUANT --data DIR|FILE.npy|FILE.npz")
    # read here for their inputs and to refuse what is not ONNX; onnxruntime reads the files (external data too)
    float_model = load_model(args.float_model, external_data=False)
    load_model(args.quant_model, external_data=False)
    if any(is_quantized_op(node.op_type) for node in float_model.graph.node):
        raise UsageError(f"{args.float_model.name} is quantized; eval compares a quantized model with its float one: "
                         f"{PROG} eval FLOAT.onnx QUANT.onnx --data DATA")
    for flag, value in (("--data-size", args.data_size), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: give a positive number")
    data = open_data(args.data, InputSpec.of_model(float_model), preprocess_from(args), args.data_size)
    for warning in data.warnings:
        logging.getLogger("qcompiler").warning("%s", warning)
    if data.fixed_batch is not None and args.batch_size not in (None, data.fixed_batch):
        raise UsageError(f"--batch-size {args.batch_size}: the model's inputs fix the batch at {data.fixed_batch}")
    batch_size = data.fixed_batch or args.batch_size or EVAL_BATCH
    try:
        result = evaluate(args.float_model, args.quant_model, data, batch_size, args.onnxruntime_kernels)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for output in result.outputs:
        print(output.summary())
    return 0


def _check(args: argparse.Namespace) -> int:
    """Exit 0 when the model keeps every rule, 1 when it breaks one."""
    from qcompiler.graph.importer import load_model

    backend = load_backend(args.backend, args.overrides)
    found = checkers(backend)
    if not found:
        with_rules = [name for name in shipped_backends() if checkers(load_backend(name))]
        raise UsageError(f"--backend {args.backend}: no rules to check (no constraints, no emitter with a "
                         f"checker); backends with rules: {', '.join(with_rules)}")
    model = load_model(args.model)
    if not any(is_quantized_op(node.op_type) for node in model.graph.node):
        raise UsageError(f"{args.model.name} is a float model (no quantizer, no integer op): check reads a quantized "
                         "model, such as OUT/model.qdq.onnx or a backend's model file")
    reports = [check(model, backend) for check in found]
    for report in reports:
        print(report.text(backend.name), end="")
    return 1 if any(report.violations for report in reports) else 0


def _print_summary(args: argparse.Namespace, result) -> None:
    print(f"{args.model.name} -> {args.out} (backend {result.backend.name})")
    for record in result.records:
        if record.status == "ran":
            print(f"  {record.label:<24} {record.seconds:7.2f} s  {format_stats(record.stats)}")
        else:
            print(f"  {record.label:<24} {record.status}")
    print("wrote " + ", ".join(str(path) for path in result.outputs))
    if result.report is not None and "deployment_gap" in result.report:
        print(gap_summary(result.report["deployment_gap"]) + " (report.json: deployment_gap)")
    if result.ctx.plan.fallback is not None:
        print(fallback_summary(result.ctx.plan.fallback) + " (report.json: layer_fallback)")
    print(summary_line(result))


def fallback_summary(search: dict) -> str:
    """One line: the target, the metric quantized and with the float layers, and what the search cost."""
    verdict = "met" if search["met"] else f"not met ({search['stopped']})"
    quantized, final = (f"{value:.4g}" if isinstance(value, float) else str(value)
                        for value in (search["quantized"]["metric"], search["final"]["metric"]))
    return (f"layer_fallback: target {search['target']} {verdict}: {quantized} quantized, "
            f"{final} with {len(search['reverted'])} of {search['layers']} layers in float, "
            f"on {search['eval_samples']} held-out samples, {search['evaluations']} evaluations")


def summary_line(result) -> str:
    """Backend, quantized weighted ops of all, and the fake-quant model's end-to-end SQNR on the report samples."""
    quantized, weighted = result.quantized_ops()
    line = f"{result.backend.name}: {quantized} of {weighted} weighted ops quantized"
    if result.report is not None:
        outputs = result.report["outputs"]
        sqnr = ", ".join(f"{o['sqnr_db']} dB" + (f" ({o['name']})" if len(outputs) > 1 else "") for o in outputs)
        line += f"; end-to-end SQNR {sqnr} on {result.report['report_samples']} samples (report.json)"
    if result.ctx.warnings:
        line += f"; {len(result.ctx.warnings)} warning(s)"
    return line


def _list_backends() -> int:
    for name in shipped_backends():
        backend = load_backend(name)
        print(f"{name:<10} scheme {backend.scheme}  {backend.description}")
    return 0


def _list_passes() -> int:
    from qcompiler.passes import registry

    for name, pass_cls in registry().items():
        print(f"{name:<20} {pass_cls.summary()}")
    return 0
