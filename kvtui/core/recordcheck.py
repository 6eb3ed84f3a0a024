"""Type checks for a session record read from disk, with the key that is wrong."""

from __future__ import annotations

from typing import Any

from .errors import RecordError

_NUM = (int, float)
_TOP: dict[str, Any] = {"created": str, "kvtui_version": str, "mode": str, "mode_reason": str, "schedule": str,
                        "status": str, "duration_s": _NUM, "host": dict, "server": dict, "model": dict,
                        "profile": dict, "sides": list, "error": str,
                        "comparisons": list, "verdicts": list, "warnings": list}
_SIDE: dict[str, Any] = {"name": str, "cache_type_k": str, "cache_type_v": str, "argv": list, "status": str,
                         "kv_cache_mib": _NUM, "kv_estimate_mib": _NUM, "vram_peak_mib": _NUM, "rss_peak_mib": _NUM,
                         "t_start": _NUM, "t_ready": _NUM, "t_exit": _NUM, "pid": int, "load_s": _NUM, "n_ctx": int,
                         "warmup_ms": _NUM, "t_warm": _NUM, "memory_t": list, "memory_mib": list, "runs": list,
                         "log_tail": list, "reply_loop": dict,
                         "error": str, "exit_code": int}
_RUN: dict[str, Any] = {"run": int, "stop": str, "prompt_n": int, "prompt_per_second": _NUM, "predicted_n": int,
                        "predicted_per_second": _NUM, "ttft_ms": _NUM, "client_tokens_per_second": _NUM,
                        "t_end": _NUM, "t_sent": _NUM, "text": str, "pieces": list, "t_ms": list, "ids": list,
                        "counts": list, "loop": dict, "error": str, "prompt": str, "repeat": int, "seed": int,
                        "check": dict, "top_ids": list, "top_logprobs": list}
_MODEL: dict[str, Any] = {"path": str, "name": str, "size_mib": _NUM, "arch": str}
_SERVER: dict[str, Any] = {"bin": str, "version": str}
_HOST: dict[str, Any] = {"os": str, "machine": str, "cpu": str, "cores": int, "ram_mib": _NUM, "gpu_name": str,
                         "gpu_count": int, "gpu_total_mib": _NUM, "gpu_driver": str}
_STOPS = ("eos", "length", "word", "loop", "aborted", "error")


def _check(table: dict[str, Any], schema: dict[str, Any], where: str, source: str) -> None:
    for key, kind in schema.items():
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise RecordError(f"{source}: {where}{key} has the wrong type ({type(value).__name__})",
                                  "the record was edited by hand or is damaged")


def check_record(data: dict[str, Any], source: str) -> None:
    """Raise RecordError naming the first key whose value has the wrong type.

    Args:
        data: the parsed TOML.
        source: the file name for the message.
    """
    _check(data, _TOP, "", source)
    for key, schema in (("model", _MODEL), ("server", _SERVER), ("host", _HOST)):
        _check(data.get(key, {}), schema, f"{key}.", source)
    for i, side in enumerate(data.get("sides", [])):
        if not isinstance(side, dict):
            raise RecordError(f"{source}: sides[{i}] is not a table", "the record is damaged")
        _check(side, _SIDE, f"sides[{i}].", source)
        if len(side.get("memory_t", [])) != len(side.get("memory_mib", [])):
            raise RecordError(f"{source}: sides[{i}].memory_t and memory_mib differ in length", "the record is damaged")
        for key in ("name", "cache_type_k", "cache_type_v"):
            if key not in side:
                raise RecordError(f"{source}: sides[{i}].{key} is missing", "the record is damaged")
        for j, run in enumerate(side.get("runs", [])):
            where = f"sides[{i}].runs[{j}]."
            if not isinstance(run, dict):
                raise RecordError(f"{source}: {where[:-1]} is not a table", "the record is damaged")
            _check(run, _RUN, where, source)
            if run.get("stop", "eos") not in _STOPS:
                raise RecordError(f"{source}: {where}stop = {run['stop']!r} is not one of {', '.join(_STOPS)}",
                                  "the record was edited by hand or is damaged")
            loop = run.get("loop")
            if loop is not None and not all(isinstance(loop.get(k), int) and not isinstance(loop.get(k), bool)
                                            for k in ("period", "start", "repeats")):
                raise RecordError(f"{source}: {where}loop needs integer period, start and repeats",
                                  "the record is damaged")
            pieces, t_ms = run.get("pieces", []), run.get("t_ms", [])
            if len(pieces) != len(t_ms) or any(len(run.get(k, pieces)) != len(pieces) for k in ("ids", "counts")):
                raise RecordError(f"{source}: {where}pieces and t_ms differ in length", "the record is damaged")
            if not all(isinstance(x, str) for x in pieces) or not all(
                    isinstance(x, _NUM) and not isinstance(x, bool) for x in t_ms) or not all(
                    isinstance(x, int) and not isinstance(x, bool) for k in ("ids", "counts") for x in run.get(k, [])):
                raise RecordError(f"{source}: {where}pieces/t_ms hold values of the wrong type",
                                  "the record is damaged")
