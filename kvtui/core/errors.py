"""The project's one error type: a cause a person can read and the fix."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2


class KvtuiError(Exception):
    """A failure that kvtui explains in one line, with what to do about it.

    Args:
        message: the cause, one line.
        hint: what the user should do, one line (may be empty).
        exit_code: 1 when a run failed, 2 for bad input.
    """

    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ProfileError(KvtuiError):
    """A profile file that cannot be used as written."""


class RecordError(KvtuiError):
    """A session record that cannot be read."""


class ServerError(KvtuiError):
    """A llama-server that could not start or that died."""

    def __init__(self, message: str, hint: str = "", log_tail: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint, exit_code=1)
        self.log_tail = log_tail


class RequestRefused(KvtuiError):
    """A server answered a request with an HTTP error status: it lives, and may take the next request."""

    def __init__(self, message: str, hint: str = "", status: int = 0) -> None:
        super().__init__(message, hint, exit_code=1)
        self.status = status
