"""What a GGUF file says about its model: name, architecture, layers, trained context, weight bytes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from gguf.constants import LlamaFileType

from kvtui.core.model.gguf import GGUFFormatError, read_metadata, tensor_bytes

_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The model facts kvtui shows and records; ``None`` where the file does not say."""

    path: str
    name: str
    size_mib: float
    arch: str
    layers: int | None
    ctx_train: int | None
    file_size: int = 0  # bytes of this file (the first part of a split model)
    model_bytes: int | None = None  # sum of the tensor sizes, every split part counted
    quant: str | None = None  # general.file_type as llama.cpp names it, e.g. "Q4_K_M"
    chat_template: bool | None = None  # the file carries tokenizer.chat_template (None: unreadable)

    @property
    def model_mib(self) -> float:
        """The weights in MiB: the tensor sum when known, else the file size."""
        return self.model_bytes / 2**20 if self.model_bytes is not None else self.size_mib


@lru_cache(maxsize=16)
def _read(path: str, mtime_ns: int) -> ModelInfo:
    p = Path(path)
    size = p.stat().st_size
    size_mib = size / 2**20
    try:
        meta = read_metadata(p)
    except GGUFFormatError:  # a truncated or foreign file: report what we can
        return ModelInfo(path, p.stem, size_mib, "unknown", None, None, size)
    arch = str(meta.get("general.architecture") or "unknown")
    layers = meta.get(f"{arch}.block_count")
    ctx = meta.get(f"{arch}.context_length")
    return ModelInfo(path, str(meta.get("general.name") or p.stem), size_mib, arch,
                     int(layers) if isinstance(layers, int) else None, int(ctx) if isinstance(ctx, int) else None,
                     size, model_bytes(p), _quant_name(meta.get("general.file_type")),
                     isinstance(meta.get("tokenizer.chat_template"), str))


def read_model_info(path: str | Path) -> ModelInfo:
    """Read the model's GGUF header (cached per path and modification time).

    Args:
        path: a .gguf file.

    Returns:
        The model facts; arch "unknown" when the file cannot be parsed.
    """
    p = Path(path)
    return _read(str(p), p.stat().st_mtime_ns)


def model_bytes(path: str | Path) -> int | None:
    """Sum the sizes of the model's tensors, over every part of a split model.

    This is what the weights take once loaded (the file adds only the header
    and alignment padding); VRAM planning uses it.

    Args:
        path: a .gguf file (for a split model, any part: all parts are summed).

    Returns:
        Bytes; None when a part is missing or unreadable, or a tensor type is unknown.
    """
    p = Path(path)
    try:
        parts = _split_parts(p)
        total = 0
        for part in parts:
            n = tensor_bytes(part)
            if n is None:
                return None
            total += n
        return total
    except (OSError, GGUFFormatError):
        return None


def _split_parts(p: Path) -> list[Path]:
    """The files of a split model (``name-00001-of-00003.gguf``), or just ``p``."""
    m = _SPLIT_RE.search(p.name)
    if not m or int(m.group(2)) <= 1:
        return [p]
    stem = p.name[: m.start()]
    n = int(m.group(2))
    return [p.with_name(f"{stem}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


def _quant_name(file_type: object) -> str | None:
    """``general.file_type`` 15 -> ``Q4_K_M``, as llama.cpp prints it."""
    if not isinstance(file_type, int):
        return None
    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")
