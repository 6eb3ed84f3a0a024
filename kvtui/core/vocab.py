"""kvtui's words, each defined once: cache types, side and session statuses, stop reasons, schedules.

The enums are ``StrEnum``: a member equals its string (``SideStatus.DONE == "done"``),
so records, events and TOML hold plain strings, and a value read from a file is
checked by ``SideStatus(value)``.
"""

from __future__ import annotations

from enum import StrEnum

# (values per block, bytes per block) of every type llama-server's -ctk/-ctv accept; ggml's block layouts
CACHE_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4), "f16": (1, 2), "bf16": (1, 2),
    "q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20),
    "iq4_nl": (32, 18), "q5_0": (32, 22), "q5_1": (32, 24),
}
QUANTIZED_TYPES = frozenset(t for t, (block, _) in CACHE_TYPES.items() if block > 1)


class SideStatus(StrEnum):
    """Where one side of the comparison is."""

    WAITING = "waiting"  # not started: waits for its turn (sequential) or for the session to start
    STARTING = "starting"  # its llama-server process is starting
    LOADING = "loading"  # the server loads the model (the app: until its warm-up is done)
    WARMING = "warming"  # the runner sends the warm-up request
    READY = "ready"  # the server answers /health (the record, until the side generates)
    WARMED_UP = "warmed up"  # the warm-up request is done; the measured requests come next
    GENERATING = "generating"  # a measured request is streaming
    LOOPING = "looping"  # a measured request is streaming and its output is stuck in a repetition loop
    DONE = "done"  # every measured request finished
    ABORTED = "aborted"  # stopped by you, a quit or a signal
    CRASHED = "crashed"  # its llama-server process died
    ERROR = "error"  # a request or the server's start failed while the process lived


ENDED = frozenset({SideStatus.DONE, SideStatus.ABORTED, SideStatus.CRASHED, SideStatus.ERROR})
"""A side in one of these does nothing more until it is rerun."""
FAILED = frozenset({SideStatus.CRASHED, SideStatus.ERROR})
"""A side in one of these failed: the session's status is ``failed`` and kvtui exits 1."""


class SessionStatus(StrEnum):
    """Where the whole session is."""

    RUNNING = "running"  # still going (an autosave), or kvtui was killed before it could finish the record
    DONE = "done"  # every side finished
    FAILED = "failed"  # a side crashed or errored (a rerun that fails counts too)
    ABORTED = "aborted"  # a side was aborted, or kvtui was quit or interrupted before the end


def session_status(sides: list[SideStatus | str], unfinished: SessionStatus = SessionStatus.ABORTED) -> SessionStatus:
    """The session's status from its sides': failed beats aborted beats done.

    Args:
        sides: every side's status.
        unfinished: what a side that had not ended makes the session (a session cut short: aborted).
    """
    if any(s in FAILED for s in sides):
        return SessionStatus.FAILED
    if any(s not in ENDED for s in sides):
        return unfinished
    if any(s == SideStatus.ABORTED for s in sides):
        return SessionStatus.ABORTED
    return SessionStatus.DONE


class StopReason(StrEnum):
    """Why a measured request ended."""

    EOS = "eos"  # the model ended its text
    LENGTH = "length"  # n_predict or the context ran out
    WORD = "word"  # a stop string
    LOOP = "loop"  # kvtui stopped a repetition loop (run.stop_on_loop)
    ABORTED = "aborted"  # stopped by you, a quit or a signal; or cut short when kvtui ended
    ERROR = "error"  # the request failed (the server died, stalled or sent something malformed)


CLEAN_STOPS = frozenset({StopReason.EOS, StopReason.LENGTH, StopReason.WORD})
"""A run that stopped for one of these ended on its own."""


class Schedule(StrEnum):
    """How a measured figure was taken."""

    SIMULTANEOUS = "simultaneous"  # every side generated at once: the servers shared the hardware (contended)
    ALTERNATE = "alternate"  # every server loaded, one request at a time
    SOLO = "solo"  # only this side's server ran (sequential mode, a rerun of one side, the other side gone)
    SEPARATE = "separate"  # every side generated at once, each on its own GPU or machine: not contended

    @property
    def contended(self) -> bool:
        """Another server generated at the same time, so the figure is not comparable with an uncontended one."""
        return self is Schedule.SIMULTANEOUS
