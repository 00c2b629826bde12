"""Read flax-serialised parameter trees (``flax.serialization.to_bytes``) without jax.

The format (docs/formats.md §8): a msgpack map of nested string-keyed maps whose leaves use
msgpack extension types — code 1 is an ndarray and code 3 a numpy scalar, each packed as
the msgpack triple ``[shape, dtype name, raw C-order bytes]``. Arrays over 1 GiB are split
into ``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {...}}`` maps. Only
data is decoded here: msgpack has no code execution, and unknown extension types are refused.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from irkit.errors import InputError

NDARRAY_EXT = 1
COMPLEX_EXT = 2
NPSCALAR_EXT = 3
CHUNKED_MARKER = "__msgpack_chunked_array__"


def _decode_array(data: bytes, source: str) -> np.ndarray:
    import msgpack

    try:
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise InputError(f"a flax ndarray leaf is not [shape, dtype, bytes] ({exc})", path=source) from None
    name = dtype_name.decode("ascii", "replace") if isinstance(dtype_name, bytes) else str(dtype_name)
    shape = tuple(int(s) for s in shape)
    if name == "bfloat16":  # no numpy dtype: widen the upper 16 bits of a float32
        raw = np.frombuffer(buffer, dtype=np.uint16).astype(np.uint32) << 16
        array = raw.view(np.float32)
    else:
        try:
            dtype = np.dtype(name)
        except TypeError:
            raise InputError(f"a flax ndarray leaf has unknown dtype {name!r}", path=source) from None
        if dtype.hasobject:
            raise InputError(f"a flax ndarray leaf has object dtype {name!r}; expected numeric data", path=source)
        array = np.frombuffer(buffer, dtype=dtype)
    expected = int(np.prod(shape)) if shape else 1
    if array.size != expected:
        raise InputError(f"a flax ndarray leaf holds {array.size} values for shape {list(shape)} "
                         f"(expected {expected}); the file is truncated or corrupt", path=source)
    return array.reshape(shape).copy()


def _ext_hook(source: str):
    import msgpack

    def hook(code: int, data: bytes) -> Any:
        if code == NDARRAY_EXT:
            return _decode_array(data, source)
        if code == NPSCALAR_EXT:
            return _decode_array(data, source)[()]
        if code == COMPLEX_EXT:
            real, imag = msgpack.unpackb(data)
            return complex(real, imag)
        raise InputError(f"unknown msgpack extension type {code}; expected flax's ndarray (1), complex (2) "
                         "or numpy scalar (3)", path=source)
    return hook


def _flatten(tree: Any, prefix: str, out: dict[str, np.ndarray], source: str) -> None:
    if isinstance(tree, Mapping):
        if tree.get(CHUNKED_MARKER):
            shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
            chunks = [np.asarray(tree["chunks"][str(i)]) for i in range(len(tree["chunks"]))]
            out[prefix] = np.concatenate(chunks).reshape(shape)
            return
        for key, value in tree.items():
            _flatten(value, f"{prefix}/{key}" if prefix else str(key), out, source)
        return
    if isinstance(tree, np.ndarray):
        out[prefix] = tree
    elif isinstance(tree, (np.generic, int, float, bool, complex)):
        out[prefix] = np.asarray(tree)
    elif tree is None:
        return  # flax writes None for empty sub-trees
    else:
        raise InputError(f"leaf {prefix!r} is a {type(tree).__name__}; expected an array", path=source)


def read_flax_msgpack_bytes(data: bytes, source: os.PathLike | str = "<bytes>") -> dict[str, np.ndarray]:
    """Decode flax msgpack ``data`` -> ``{"a/b/c": array}`` (flattened with ``/``, arrays copied).

    ``source`` names the file in errors. Raises :class:`InputError` on anything that is not
    a flax-serialised tree of arrays.
    """
    try:
        import msgpack
    except ImportError:  # pragma: no cover - msgpack is a dependency
        raise InputError("reading flax msgpack files needs the msgpack package (pip install msgpack)") from None
    source = str(source)
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook(source), raw=False, strict_map_key=False)
    except InputError:
        raise
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError,
            UnicodeDecodeError) as exc:
        raise InputError(f"not a flax msgpack parameter file ({type(exc).__name__}: {exc})", path=source) from None
    if not isinstance(tree, Mapping):
        raise InputError(f"a flax msgpack parameter file holds a map at the top; found {type(tree).__name__}",
                         path=source)
    flat: dict[str, np.ndarray] = {}
    _flatten(tree, "", flat, source)
    return flat


def read_flax_msgpack(path: os.PathLike | str) -> dict[str, np.ndarray]:
    """Read a ``flax.serialization.to_bytes`` file -> ``{"a/b/c": array}`` without jax."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InputError(f"cannot read flax msgpack file ({exc.strerror})", path=path) from None
    return read_flax_msgpack_bytes(data, path)
