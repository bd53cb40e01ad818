"""Request tensors: TF Serving's JSON and TensorProto forms <-> numpy, validated at the edge.

Everything a client sends is checked here before any TensorFlow op runs: the names
against the signature, dtypes, rank, rectangular (not ragged) nesting, the batch size and
the history / candidate lengths, and that the inputs agree with each other (one batch
size; every `history_*` input of the same shape). The limits are checked on the shapes a
request declares, before any array of that size is allocated. A failure is a
`ServingError(INVALID_ARGUMENT)` (HTTP 400), never an exception that reaches the server
loop.

JSON follows TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest):
strings are JSON strings (UTF-8) or `{"b64": "..."}`; string outputs are JSON strings,
or `{"b64": ...}` when the output's name ends in `_bytes`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from tfrec_lm.serve.errors import invalid_argument


HISTORY_PREFIX = "history_"

# Defaults of the edge limits (the `python -m tfrec_lm.serve` flags of the same names).
# They bound one request's memory: the model's largest tensors are [rows, candidates, 2 x
# embedding] floats in `rank` (about 65 MB at these limits and the default width of 64),
# and TF Serving's own batching config caps a batch at 128 users (serving/batching_parameters.txt).
DEFAULT_MAX_BATCH_SIZE = 128
DEFAULT_MAX_HISTORY_LENGTH = 512
DEFAULT_MAX_CANDIDATES = 1000


@dataclasses.dataclass(frozen=True)
class Limits:
    """Edge limits of one request, checked on declared shapes before any allocation.

    Attributes:
        max_batch_size: int. most rows (users) per request (`--max_batch_size`).
        max_history_length: int. longest second dimension of a `history_*` input
            (`--max_history_length`).
        max_candidates: int. longest second dimension of any other input, e.g.
            `candidate_item_ids` of `rank` (`--max_candidates`).
    """

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_history_length: int = DEFAULT_MAX_HISTORY_LENGTH
    max_candidates: int = DEFAULT_MAX_CANDIDATES

    def check(self, name: str, shape) -> None:
        """Checks an input's declared shape against the limits.

        Raises:
            ServingError: INVALID_ARGUMENT if an input of this shape breaks a limit.
        """
        if len(shape) >= 1:
            if shape[0] == 0:
                raise invalid_argument(f"input '{name}' has an empty batch (0 rows)")
            if shape[0] > self.max_batch_size:
                raise invalid_argument(
                    f"input '{name}' has batch size {shape[0]}, more than --max_batch_size={self.max_batch_size}; "
                    "split the users over several requests")
        if len(shape) >= 2:
            if name.startswith(HISTORY_PREFIX):
                if shape[1] > self.max_history_length:
                    raise invalid_argument(
                        f"input '{name}' has history length {shape[1]}, more than "
                        f"--max_history_length={self.max_history_length}; send only the most recent items")
            elif shape[1] > self.max_candidates:
                raise invalid_argument(f"input '{name}' has length {shape[1]}, more than "
                                       f"--max_candidates={self.max_candidates}")


def dtype_name(dtype) -> str:
    return getattr(dtype, "name", str(dtype))


def check_shape(name: str, shape, spec) -> None:
    """Rank and fixed dimensions of `shape` against the signature's TensorSpec."""
    expected = spec.shape
    if expected.rank is None:
        return
    if len(shape) != expected.rank:
        dims = ", ".join("None" if d is None else str(d) for d in expected.as_list())
        raise invalid_argument(f"input '{name}' must have rank {expected.rank} (shape [{dims}]), "
                               f"got rank {len(shape)} (shape {list(shape)})")
    for axis, (got, want) in enumerate(zip(shape, expected.as_list())):
        if want is not None and got != want:
            raise invalid_argument(f"input '{name}' must have size {want} in dimension {axis}, got {got}")


def check_names(given, specs: Mapping[str, Any]) -> None:
    given, wanted = set(given), set(specs)
    if given != wanted:
        missing, extra = sorted(wanted - given), sorted(given - wanted)
        parts = []
        if missing:
            parts.append(f"missing: {missing}")
        if extra:
            more = f" and {len(extra) - 10} more" if len(extra) > 10 else ""
            parts.append(f"not in the signature: {[_short(n) if len(n) > 40 else n for n in extra[:10]]}{more}")
        raise invalid_argument(f"inputs do not match the signature ({sorted(wanted)}): " + "; ".join(parts))


def check_batch(arrays: Mapping[str, np.ndarray]) -> int:
    sizes = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    distinct = {s for s in sizes.values() if s is not None}
    if len(distinct) > 1:
        raise invalid_argument(f"inputs have different batch sizes: {sizes}")
    return distinct.pop() if distinct else 0


def check_shapes(shapes: Mapping[str, list], specs: Mapping[str, Any], limits: Limits | None) -> None:
    """Every input's declared shape, before any of them is decoded.

    Checks, in order: the limits (so nothing over them is ever allocated), each input's
    rank against the signature, one batch size for all inputs, and one full shape for all
    `history_*` inputs (`history_timestamps` has one timestamp per `history_item_ids`
    entry).

    Args:
        shapes: {input name: list of int}. the shapes the request declares.
        specs: {input name: tf.TensorSpec}. the signature's inputs.
        limits: Limits or None.

    Raises:
        ServingError: INVALID_ARGUMENT naming the inputs that disagree.
    """
    for name, shape in shapes.items():
        if limits is not None:
            limits.check(name, shape)
        check_shape(name, shape, specs[name])
    batch = {name: shape[0] for name, shape in shapes.items() if len(shape) >= 1}
    if len(set(batch.values())) > 1:
        raise invalid_argument(f"inputs have different batch sizes: {batch}; every input needs one row per user")
    history = sorted(name for name in shapes if name.startswith(HISTORY_PREFIX))
    for name in history[1:]:
        if list(shapes[name]) != list(shapes[history[0]]):
            first = history[0]
            raise invalid_argument(
                f"inputs '{first}' (shape {list(shapes[first])}) and '{name}' (shape {list(shapes[name])}) must "
                f"have the same shape: one {name[len(HISTORY_PREFIX):]} entry per {first[len(HISTORY_PREFIX):]} entry, "
                "padded alike")


# ---------------------------------------------------------------- JSON -> numpy


class _Mismatch(Exception):
    def __init__(self, found: str, expected):
        super().__init__(found)
        self.path: list[int] = []
        self.found = found
        self.expected = expected


def nominal_shape(value) -> list[int]:
    """The shape implied by following the first element of each nested list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _flatten(value, shape, depth: int, out: list) -> None:
    if depth == len(shape):
        if isinstance(value, list):
            raise _Mismatch("a list", "a value")
        out.append(value)
        return
    if not isinstance(value, list):
        raise _Mismatch("a value", f"a list of {shape[depth]}")
    if len(value) != shape[depth]:
        raise _Mismatch(f"a list of {len(value)}", f"a list of {shape[depth]}")
    for i, item in enumerate(value):
        try:
            _flatten(item, shape, depth + 1, out)
        except _Mismatch as mismatch:
            mismatch.path.insert(0, i)
            raise


def _position(index: int, shape) -> str:
    return "".join(f"[{i}]" for i in np.unravel_index(index, shape)) if shape else ""


def _b64(value, name: str, where: str) -> bytes:
    if len(value) != 1 or "b64" not in value or not isinstance(value["b64"], str):
        raise invalid_argument(f"input '{name}'{where}: a JSON object as a string value must be {{\"b64\": \"...\"}}")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise invalid_argument(f"input '{name}'{where}: invalid base64: {error}") from None


def _integer_bounds(dtype: np.dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _utf8(value: str, name: str, index: int, shape) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate, e.g. the JSON escape "\ud800"
        where = _position(index, shape)
        bad = value[error.start:error.end].encode("unicode_escape").decode("ascii")
        raise invalid_argument(f"input '{name}' at {name}{where}: not a valid Unicode string (unpaired surrogate "
                               f"{bad}); send UTF-8 text, or bytes as {{\"b64\": \"...\"}}") from None


def _leaves_to_array(flat: list, shape, dtype, name: str) -> np.ndarray:
    kind = dtype_name(dtype)
    if kind == "string":
        out = []
        for i, v in enumerate(flat):
            if type(v) is str:
                out.append(_utf8(v, name, i, shape))
            elif isinstance(v, dict):
                out.append(_b64(v, name, _position(i, shape)))
            else:
                raise invalid_argument(f"input '{name}' expects strings (dtype string), got {_json_type(v)} "
                                       f"at {name}{_position(i, shape)}: {_short(v)}")
        array = np.empty(len(out), dtype=object)
        array[:] = out
        return array.reshape(shape)
    np_dtype = np.dtype(kind) if kind != "bool" else np.dtype(bool)
    if kind == "bool":
        for i, v in enumerate(flat):
            if type(v) is not bool:
                raise invalid_argument(f"input '{name}' expects booleans, got {_json_type(v)} at "
                                       f"{name}{_position(i, shape)}")
        return np.array(flat, dtype=bool).reshape(shape)
    if np_dtype.kind in "iu":
        low, high = _integer_bounds(np_dtype)
        for i, v in enumerate(flat):
            if type(v) is not int:
                raise invalid_argument(f"input '{name}' expects integers (dtype {kind}), got {_json_type(v)} "
                                       f"at {name}{_position(i, shape)}: {_short(v)}")
            if not low <= v <= high:
                raise invalid_argument(f"input '{name}': {v} at {name}{_position(i, shape)} is out of range "
                                       f"for {kind}")
        return np.array(flat, dtype=np_dtype).reshape(shape)
    if np_dtype.kind == "f":
        for i, v in enumerate(flat):
            if type(v) not in (int, float):
                raise invalid_argument(f"input '{name}' expects numbers (dtype {kind}), got {_json_type(v)} "
                                       f"at {name}{_position(i, shape)}: {_short(v)}")
        return np.array(flat, dtype=np_dtype).reshape(shape)
    raise invalid_argument(f"input '{name}' has dtype {kind}, which JSON requests cannot carry here")


def _json_type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object",
            list: "a list", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def json_to_array(value, spec, name: str, limits: Limits | None, shape=None) -> np.ndarray:
    """A JSON tensor value (nested lists) as a numpy array of the spec's dtype.

    Args:
        value: the parsed JSON value, batch dimension first.
        spec: tf.TensorSpec. the signature's input.
        name: str. the input's name (for messages and the limits).
        limits: Limits or None.
        shape: list of int or None. `nominal_shape(value)`, already checked by the caller
            (`check_shapes`); None: computed and checked here.
    """
    if shape is None:
        shape = nominal_shape(value)
        if limits is not None:
            limits.check(name, shape)
        check_shape(name, shape, spec)
    flat: list = []
    try:
        _flatten(value, shape, 0, flat)
    except _Mismatch as mismatch:
        where = "".join(f"[{i}]" for i in mismatch.path)
        raise invalid_argument(
            f"input '{name}' is ragged or unevenly nested: {name}{where} is {mismatch.found}, expected "
            f"{mismatch.expected} (every row must have the same length; pad histories with \"\" and "
            f"timestamp 0)") from None
    return _leaves_to_array(flat, shape, spec.dtype, name)


def decode_json_request(body: bytes | str, signatures: Mapping[str, Any], limits: Limits | None):
    """Parses a TF Serving `:predict` JSON body.

    Args:
        body: bytes or str. the request body.
        signatures: callable(signature name) -> {input name: tf.TensorSpec}; called with the
            request's `signature_name` (default `serving_default`), raises ServingError
            for an unknown one.
        limits: Limits or None.

    Returns:
        (signature_name, {input name: np.ndarray}, form): form is `row` (`instances`)
        or `columnar` (`inputs`), which decides the response's shape.
    """
    import json

    try:
        request = json.loads(body)
    except RecursionError:
        raise invalid_argument("JSON Parse error: the body is nested too deeply (request tensors have rank 2)") \
            from None
    except (UnicodeDecodeError, ValueError) as error:
        raise invalid_argument(f"JSON Parse error: {error}") from None
    if not isinstance(request, dict):
        raise invalid_argument(f"the request body must be a JSON object, got {_json_type(request)}")
    signature_name = request.get("signature_name", "serving_default")
    if not isinstance(signature_name, str):
        raise invalid_argument("'signature_name' must be a string")
    signature_name = signature_name or "serving_default"
    specs = signatures(signature_name)
    has_instances, has_inputs = "instances" in request, "inputs" in request
    if has_instances == has_inputs:
        raise invalid_argument("the request must have exactly one of 'instances' (row format) or "
                               "'inputs' (columnar format)")
    if has_instances:
        return signature_name, _decode_instances(request["instances"], specs, limits), "row"
    return signature_name, _decode_inputs(request["inputs"], specs, limits), "columnar"


def _decode_instances(instances, specs, limits: Limits | None) -> dict:
    if not isinstance(instances, list):
        raise invalid_argument(f"'instances' must be a list, got {_json_type(instances)}")
    if not instances:
        raise invalid_argument("'instances' is empty")
    if limits is not None and len(instances) > limits.max_batch_size:
        raise invalid_argument(f"'instances' has {len(instances)} rows, more than "
                               f"--max_batch_size={limits.max_batch_size}; split the users over several requests")
    names = list(specs)
    if len(names) == 1 and not isinstance(instances[0], dict):
        return {names[0]: json_to_array(instances, specs[names[0]], names[0], limits)}
    columns: dict[str, list] = {name: [] for name in names}
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise invalid_argument(f"instances[{i}] must be an object of named inputs {names}, got "
                                   f"{_json_type(instance)}")
        if set(instance) != set(names):
            try:
                check_names(instance, specs)
            except Exception as error:
                raise invalid_argument(f"instances[{i}]: {error}") from None
        for name in names:
            columns[name].append(instance[name])
    return _decode_columns(columns, specs, limits)


def _decode_inputs(inputs, specs, limits: Limits | None) -> dict:
    names = list(specs)
    if not isinstance(inputs, dict) or (len(names) == 1 and names[0] not in inputs):
        if len(names) == 1:
            return {names[0]: json_to_array(inputs, specs[names[0]], names[0], limits)}
        raise invalid_argument(f"'inputs' must be an object of named inputs {names}, got {_json_type(inputs)}")
    check_names(inputs, specs)
    return _decode_columns(inputs, specs, limits)


def _decode_columns(columns: Mapping[str, Any], specs, limits: Limits | None) -> dict:
    """All inputs' shapes checked together first (limits, ranks, agreement), then each decoded."""
    shapes = {name: nominal_shape(columns[name]) for name in specs}
    check_shapes(shapes, specs, limits)
    return {name: json_to_array(columns[name], specs[name], name, limits, shapes[name]) for name in specs}


# ---------------------------------------------------------------- numpy -> JSON


def _nested(value, convert):
    if isinstance(value, list):
        return [_nested(v, convert) for v in value]
    return convert(value)


def array_to_json(name: str, array: np.ndarray):
    """A numpy output as a JSON value, TF Serving style."""
    if array.dtype == object or array.dtype.kind in "SU":
        if name.endswith("_bytes"):
            def convert(v):
                return {"b64": base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode("ascii")}
        else:
            def convert(v):
                return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        return _nested(array.tolist(), convert)
    return array.tolist()


def encode_json_response(outputs: Mapping[str, np.ndarray], form: str) -> dict:
    """`{"predictions": ...}` (row form) or `{"outputs": ...}` (columnar form)."""
    if form == "columnar":
        if len(outputs) == 1:
            return {"outputs": array_to_json(*next(iter(outputs.items())))}
        return {"outputs": {name: array_to_json(name, array) for name, array in outputs.items()}}
    batch = check_batch(outputs)
    if len(outputs) == 1:
        return {"predictions": array_to_json(*next(iter(outputs.items())))}
    columns = {name: array_to_json(name, array) for name, array in outputs.items()}
    return {"predictions": [{name: columns[name][i] for name in columns} for i in range(batch)]}


# ---------------------------------------------------------------- TensorProto <-> numpy


_VALUE_FIELDS = ("half_val", "float_val", "double_val", "int_val", "string_val", "scomplex_val", "int64_val",
                 "bool_val", "dcomplex_val", "resource_handle_val", "variant_val", "uint32_val", "uint64_val",
                 "float8_val")


def tensor_proto_shape(proto, spec, name: str) -> list[int]:
    """The shape a request TensorProto declares, after checking its dtype (nothing decoded)."""
    import tensorflow as tf

    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except (TypeError, ValueError):
        raise invalid_argument(f"input '{name}' has an unknown dtype enum {proto.dtype}") from None
    if dtype != spec.dtype:
        raise invalid_argument(f"input '{name}' expects dtype {dtype_name(spec.dtype)} but "
                               f"{dtype_name(dtype)} is provided")
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"input '{name}' has an unknown rank")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise invalid_argument(f"input '{name}' has a negative dimension: {shape}")
    return shape


def _check_proto_content(proto, shape, name: str) -> None:
    """The values a TensorProto carries fit its shape (TF pads fewer values, never more)."""
    import tensorflow as tf

    elements = math.prod(shape)
    if proto.tensor_content:
        itemsize = tf.dtypes.as_dtype(proto.dtype).size
        if proto.dtype == tf.string.as_datatype_enum or len(proto.tensor_content) != elements * itemsize:
            raise invalid_argument(f"input '{name}': malformed TensorProto for shape {shape}: tensor_content has "
                                   f"{len(proto.tensor_content)} bytes, expected {elements} x {itemsize}")
        return
    for field in _VALUE_FIELDS:
        count = len(getattr(proto, field, ()))
        if count > elements:
            raise invalid_argument(f"input '{name}': malformed TensorProto for shape {shape}: {count} values in "
                                   f"{field} for {elements} elements")


def tensor_protos_to_arrays(protos: Mapping[str, Any], specs: Mapping[str, Any], limits: Limits | None) -> dict:
    """A request's TensorProtos as numpy: every declared shape checked (`check_shapes`) before any is decoded.

    Args:
        protos: {input name: TensorProto}. names already checked against `specs`.
        specs: {input name: tf.TensorSpec}.
        limits: Limits or None.
    """
    shapes = {name: tensor_proto_shape(proto, specs[name], name) for name, proto in protos.items()}
    check_shapes(shapes, {name: specs[name] for name in protos}, limits)
    return {name: tensor_proto_to_array(proto, specs[name], name, None, shapes[name]) for name, proto in protos.items()}


def tensor_proto_to_array(proto, spec, name: str, limits: Limits | None, shape=None) -> np.ndarray:
    """A request TensorProto as numpy, checked against the signature before decoding.

    Args:
        proto: TensorProto.
        spec: tf.TensorSpec.
        name: str. the input's name.
        limits: Limits or None.
        shape: list of int or None. the declared shape, already checked by the caller
            (`tensor_protos_to_arrays`); None: checked here.
    """
    import tensorflow as tf

    if shape is None:
        shape = tensor_proto_shape(proto, spec, name)
        if limits is not None:
            limits.check(name, shape)
        check_shape(name, shape, spec)
    _check_proto_content(proto, shape, name)
    try:
        array = tf.make_ndarray(proto)
    except Exception as error:  # malformed content: wrong byte count, etc.
        raise invalid_argument(f"input '{name}': malformed TensorProto for shape {shape}: {error}") from None
    if list(array.shape) != shape:
        raise invalid_argument(f"input '{name}': TensorProto content does not match its shape {shape}")
    return array
