"""ONNX out of a graph without copying its weights through protobuf.

Exporting a graph the usual way (``gs.export_onnx`` then ``SerializeToString``)
copies every weight three times: to bytes, into a TensorProto, into the
graph's repeated field, and once more to serialize. On a 550 MB model that
was most of a compile. Here the message is built around its large
constants instead:

- ``write_model`` streams a model file: the protobuf encoding is written
  field by field in field-number order, and each large constant's raw data
  goes from the numpy array to the file. The bytes are those
  ``ir.to_model(graph).SerializeToString()`` gives. ``save_model`` writes a
  model past protobuf's 2 GiB limit with external data instead: the large
  constants in ``<model>.data`` beside it, the message pointing into it.
- ``skeleton_model`` leaves large constants out as typed graph inputs, for
  the ONNX checker and shape inference after every pass.
- ``session_model`` marks them external, for an onnxruntime session that is
  handed their arrays in memory (``runtime.graph_session``).

Large means ``LARGE_BYTES`` or more; small constants (shape tensors, scalars,
scales) stay in the message, since shape inference propagates their values.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx, update_import_domains
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from qcompiler.fileio import write_atomic

LARGE_BYTES = 4096
# Protobuf parses no message past 2 GiB; a model whose constants come near it keeps them in a file beside it.
EXTERNAL_DATA_BYTES = 2**31 - 2**26
# where an external initializer's data lives for a session given it in memory
IN_MEMORY = "qcompiler-in-memory"

_GRAPH_FIELD = 7          # ModelProto.graph
_INITIALIZER_FIELD = 5    # GraphProto.initializer
_RAW_DATA_FIELD = 9       # TensorProto.raw_data


def is_large(constant: gs.Constant) -> bool:
    values = constant._values  # a LazyValues knows its size without loading its values
    return values.nbytes >= LARGE_BYTES


def skeleton_model(graph: gs.Graph) -> onnx.ModelProto:
    """``graph`` as ONNX with every large constant a typed graph input instead of an initializer."""
    large = [c for c in _constants(graph) if is_large(c)]
    stand_ins = [onnx.helper.make_tensor_value_info(c.name, dtype_to_onnx(c.dtype), c.shape) for c in large]
    initializers = [OnnxExporter.export_tensor_proto(c) for c in _constants(graph) if not is_large(c)]
    return _model(graph, _graph_proto(graph, initializers, extra_inputs=stand_ins))


def session_model(graph: gs.Graph, extra_outputs: Sequence[str] = ()) -> tuple[onnx.ModelProto, list[gs.Constant]]:
    """``graph`` as ONNX whose large initializers are external (their data given to the session in memory),
    returning ``extra_outputs`` too; and those large constants."""
    constants = _constants(graph)
    large = [c for c in constants if is_large(c)]
    initializers = [_external_header(c) if is_large(c) else OnnxExporter.export_tensor_proto(c) for c in constants]
    added = _output_infos(graph, extra_outputs)
    return _model(graph, _graph_proto(graph, initializers, extra_outputs=added)), large


def save_model(graph: gs.Graph, path: Path) -> list[Path]:
    """Write ``graph`` to ``path`` as an ONNX model file, atomically; the files written.

    One file (``write_model``) unless the constants come near protobuf's
    2 GiB limit: then the large ones go to ``<name>.data`` beside it, in
    graph order, and the model holds their offsets, as ``onnx.save_model``
    with ``save_as_external_data`` lays them out; every reader here
    (onnx.load, onnxruntime, TensorRT's parser given the path) finds them.
    """
    path = Path(path)
    constants = _constants(graph)
    if sum(c.values.nbytes for c in constants) < EXTERNAL_DATA_BYTES:
        write_atomic(path, lambda out: write_model(graph, out))
        return [path]
    data = path.with_name(path.name + ".data")
    large = [c for c in constants if is_large(c)]
    write_atomic(data, lambda out: [out.write(_raw(c)) for c in large])
    offsets = np.cumsum([0] + [c.values.nbytes for c in large]).tolist()
    placed = {c.name: (offset, c.values.nbytes) for c, offset in zip(large, offsets)}
    initializers = [_external_header(c, data.name, *placed[c.name]) if c.name in placed
                    else OnnxExporter.export_tensor_proto(c) for c in constants]
    write_atomic(path, _model(graph, _graph_proto(graph, initializers)).SerializeToString())
    return [path, data]


def write_model(graph: gs.Graph, out: BinaryIO) -> None:
    """Write ``graph`` to ``out`` as an ONNX model file, each large constant's data straight from its array."""
    entries = [_initializer_entry(c) for c in _constants(graph)]
    shell = _model(graph, None)
    low, high = _split(shell, _GRAPH_FIELD)
    graph_low, graph_high = _split(_graph_proto(graph, []), _INITIALIZER_FIELD)
    graph_length = len(graph_low) + sum(_entry_length(entry) for entry in entries) + len(graph_high)
    out.write(low)
    out.write(_tag(_GRAPH_FIELD) + _varint(graph_length))
    out.write(graph_low)
    for entry in entries:
        if isinstance(entry, bytes):
            out.write(entry)
            continue
        header, raw = entry
        out.write(_tag(_INITIALIZER_FIELD) + _varint(len(header) + _field_length(raw.nbytes)))
        out.write(header + _tag(_RAW_DATA_FIELD) + _varint(raw.nbytes))
        out.write(raw)
    out.write(graph_high)
    out.write(high)


def _constants(graph: gs.Graph) -> list[gs.Constant]:
    """The graph's dense constants in the order onnx-graphsurgeon exports them as initializers."""
    return [t for t in graph.tensors().values() if isinstance(t, gs.Constant) and not isinstance(t._values, SparseValues)]


def _graph_proto(graph: gs.Graph, initializers: list[onnx.TensorProto], extra_inputs: Sequence[onnx.ValueInfoProto] = (),
                 extra_outputs: Sequence[onnx.ValueInfoProto] = ()) -> onnx.GraphProto:
    """What ``OnnxExporter.export_graph`` makes of ``graph``, with the given initializers."""
    tensors = graph.tensors()
    sparse = [OnnxExporter.export_sparse_tensor_proto(t) for t in tensors.values()
              if isinstance(t, gs.Constant) and isinstance(t._values, SparseValues)]
    boundary = {t.name for t in [*graph.inputs, *graph.outputs]}
    value_info = [_value_info(t) for t in tensors.values() if isinstance(t, gs.Variable) and t.name not in boundary
                  and (t.dtype is not None or t.shape is not None)]
    return onnx.helper.make_graph(
        [OnnxExporter.export_node(node) for node in graph.nodes], graph.name,
        [*map(_value_info, graph.inputs), *extra_inputs], [*map(_value_info, graph.outputs), *extra_outputs],
        initializer=initializers, sparse_initializer=sparse, doc_string=graph.doc_string, value_info=value_info)


def _model(graph: gs.Graph, graph_proto: onnx.GraphProto | None) -> onnx.ModelProto:
    """What ``gs.export_onnx`` makes around ``graph_proto`` (the model's other fields alone when None)."""
    model = onnx.helper.make_model(graph_proto or onnx.GraphProto(), opset_imports=update_import_domains(graph),
                                   functions=[OnnxExporter.export_function(f) for f in graph.functions])
    model.producer_name = graph.producer_name
    model.producer_version = graph.producer_version
    if graph.ir_version is not None:
        model.ir_version = graph.ir_version
    if graph_proto is None:
        model.ClearField("graph")
    return model


def _value_info(tensor: gs.Tensor) -> onnx.ValueInfoProto:
    return OnnxExporter.export_value_info_proto(tensor, do_type_check=False)


def _output_infos(graph: gs.Graph, names: Sequence[str]) -> list[onnx.ValueInfoProto]:
    """Output declarations for those of ``names`` that are not graph outputs yet, typed where the graph knows."""
    tensors = graph.tensors()
    existing = {t.name for t in graph.outputs}
    infos = []
    for name in dict.fromkeys(names):
        if name in existing:
            continue
        dtype = tensors[name].dtype if name in tensors and tensors[name].dtype is not None else np.float32
        infos.append(onnx.helper.make_tensor_value_info(name, dtype_to_onnx(dtype), None))
    return infos


def _external_header(constant: gs.Constant, location: str = IN_MEMORY, offset: int | None = None,
                     length: int | None = None) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=constant.name, data_type=dtype_to_onnx(constant.dtype), dims=constant.shape,
                              data_location=onnx.TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value=location)
    if offset is not None:
        tensor.external_data.add(key="offset", value=str(offset))
        tensor.external_data.add(key="length", value=str(length))
    return tensor


def _raw(constant: gs.Constant) -> memoryview:
    """A constant's bytes as ONNX stores them (little-endian, C order), without a copy where it can."""
    return memoryview(np.ascontiguousarray(constant.values)).cast("B")


def _initializer_entry(constant: gs.Constant) -> bytes | tuple[bytes, memoryview]:
    """A constant as GraphProto.initializer bytes, or (TensorProto without raw_data, the raw data) to stream."""
    lazy = isinstance(constant._values, LazyValues)
    converted = constant.export_dtype is not None and np.dtype(constant.export_dtype) != np.dtype(constant.dtype)
    if lazy or converted or constant.data_location is not None or not is_large(constant):
        encoded = OnnxExporter.export_tensor_proto(constant).SerializeToString()
        return _tag(_INITIALIZER_FIELD) + _varint(len(encoded)) + encoded
    header = onnx.TensorProto(dims=constant.shape, data_type=dtype_to_onnx(constant.dtype), name=constant.name)
    return header.SerializeToString(), _raw(constant)


def _entry_length(entry: bytes | tuple[bytes, memoryview]) -> int:
    if isinstance(entry, bytes):
        return len(entry)
    header, raw = entry
    return _field_length(len(header) + _field_length(raw.nbytes))


def _field_length(payload: int) -> int:
    """Bytes of a length-delimited field (one-byte tag, varint length, payload)."""
    return 1 + len(_varint(payload)) + payload


def _split(message: onnx.ModelProto | onnx.GraphProto, number: int) -> tuple[bytes, bytes]:
    """``message`` serialized as its fields numbered below ``number`` and those above it (that one left out)."""
    low, high = type(message)(), type(message)()
    low.CopyFrom(message)
    high.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        if descriptor.number >= number:
            low.ClearField(descriptor.name)
        if descriptor.number <= number:
            high.ClearField(descriptor.name)
    return low.SerializeToString(), high.SerializeToString()


def _tag(field: int) -> bytes:
    return _varint(field << 3 | 2)  # wire type 2: length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
