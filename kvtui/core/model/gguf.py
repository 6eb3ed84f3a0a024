"""A fast reader of a GGUF file's metadata keys (the header, not the tensors).

``gguf.GGUFReader`` maps every element of every array, which takes tens of
seconds on a model with a 262k-token vocabulary. kvtui needs only the model's
hyper-parameters, so this reads the key/value section directly, using the
type codes of llama.cpp's own ``gguf`` package, and skips long arrays (the
tokenizer) without decoding them.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.constants import GGUFValueType as T

from kvtui.core.errors import KvtuiError

_SCALARS: dict[int, str] = {
    T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
    T.FLOAT32: "<f", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d", T.BOOL: "<?",
}
_MAX_ARRAY = 4096  # longer arrays (vocabularies, merges) are skipped


class GGUFFormatError(KvtuiError):
    """The file is not a readable GGUF file."""


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise GGUFFormatError("the GGUF header ends early (truncated file?)", "re-download or re-convert the model")
    return struct.unpack(fmt, raw)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    raw = f.read(n)
    if len(raw) != n:
        raise GGUFFormatError("the GGUF header ends early (truncated file?)", "re-download or re-convert the model")
    return raw.decode("utf-8", "replace")


def _value(f: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    if vtype == T.STRING:
        return _string(f)
    if vtype == T.ARRAY:
        itype, n = _read(f, "<I"), _read(f, "<Q")
        if itype in _SCALARS and n > _MAX_ARRAY:
            f.seek(n * struct.calcsize(_SCALARS[itype]), 1)
            return None
        if itype == T.STRING and n > _MAX_ARRAY:
            for _ in range(n):
                f.seek(_read(f, "<Q"), 1)
            return None
        return [_value(f, itype) for _ in range(n)]
    raise GGUFFormatError(f"unknown GGUF value type {vtype}", "this file may be corrupt or from a newer GGUF version")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read every metadata key of a GGUF file (long arrays come back as None).

    Args:
        path: a .gguf file.

    Returns:
        Key to value; arrays of at most 4096 items as lists.

    Raises:
        GGUFFormatError: not a GGUF file, or a truncated header.
    """
    p = Path(path)
    return dict(_cached(str(p), p.stat().st_mtime_ns))


def tensor_bytes(path: str | Path) -> int | None:
    """The sum of the tensors' byte sizes in one GGUF file (None for a tensor type newer than gguf knows).

    Raises:
        GGUFFormatError: not a GGUF file, or a truncated header.
    """
    p = Path(path)
    return _parse(str(p), p.stat().st_mtime_ns)[1]


def _cached(path: str, mtime_ns: int) -> tuple[tuple[str, Any], ...]:
    return _parse(path, mtime_ns)[0]


@lru_cache(maxsize=16)
def _parse(path: str, mtime_ns: int) -> tuple[tuple[tuple[str, Any], ...], int | None]:
    """One walk of the header: the metadata keys, then the tensor infos' sizes."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFFormatError(f"not a GGUF file: {path}", "llama-server needs a .gguf model")
        version = _read(f, "<I")
        if version < 2:
            raise GGUFFormatError(f"GGUF version {version} is too old", "re-convert the model with a current llama.cpp")
        n_tensors = _read(f, "<Q")
        n_kv = _read(f, "<Q")
        items = []
        for _ in range(n_kv):
            key = _string(f)
            items.append((key, _value(f, _read(f, "<I"))))
        return tuple(items), _tensors_total(f, n_tensors)


def _tensors_total(f: BinaryIO, n_tensors: int) -> int | None:
    total = 0
    for _ in range(n_tensors):
        _string(f)
        n_dims = _read(f, "<I")
        raw = f.read(8 * n_dims)
        if len(raw) != 8 * n_dims:
            raise GGUFFormatError("the GGUF header ends early (truncated file?)", "re-download or re-convert the model")
        n_elements = 1
        for d in struct.unpack(f"<{n_dims}Q", raw):
            n_elements *= d
        type_id = _read(f, "<I")
        _read(f, "<Q")  # data offset
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
        except (ValueError, KeyError):  # a tensor type newer than this gguf package
            return None
        total += n_elements // block * size
    return total
