"""The mirror's security defaults: loopback only unless ``--allow-remote``, and an optional API key.

The mirror drives servers that answer whatever they are asked, with prompts that may hold a user's code,
so by default it listens on 127.0.0.1 only and also refuses, from a loopback peer, requests a web page
could make it send (a non-loopback ``Host``: DNS rebinding; a non-loopback ``Origin``: another site's
script). An API key (``--api-key`` or ``$KVTUI_MIRROR_API_KEY``) is checked in constant time on every
endpoint but ``/health``.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from kvtui.core.errors import KvtuiError
from kvtui.core.mirror.http import HttpRequest

API_KEY_ENV = "KVTUI_MIRROR_API_KEY"
PUBLIC_PATHS = ("/health", "/v1/health")  # answered without the key, as llama-server does


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (brackets and an IPv4-mapped form allowed)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse to listen beyond loopback without ``--allow-remote`` (exit 2)."""
    if not allow_remote and not is_loopback(host):
        raise KvtuiError(f"--host {host} would let other machines send requests to the mirror (and its servers)",
                         "drop --host (the mirror listens on 127.0.0.1), or pass --allow-remote to accept that")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: the HTTP status, the OpenAI error ``code`` and a one-line message."""

    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Guard:
    """Checks each request against the mirror's settings.

    Args:
        api_key: the key agents must send as ``Authorization: Bearer KEY``; "" for none.
        allow_remote: accept peers, ``Host`` s and ``Origin`` s beyond loopback.
    """

    api_key: str = ""
    allow_remote: bool = False

    def check(self, req: HttpRequest, peer: str) -> Refusal | None:
        """None when the request may go on, else why not."""
        if not self.allow_remote:
            if not is_loopback(peer):
                return Refusal(403, "remote_not_allowed", f"the mirror only answers this machine (you are {peer}); "
                                                          "start it with --allow-remote to accept others")
            host = req.header("host")
            if host is not None and not is_loopback(_hostname(host)):
                return Refusal(403, "host_not_allowed", f"Host {host!r} is not a loopback name: use "
                                                        "http://127.0.0.1:PORT, or start the mirror with "
                                                        "--allow-remote")
            origin = req.header("origin")
            if origin is not None and origin != "null" and not is_loopback(urlsplit(origin).hostname or ""):
                return Refusal(403, "origin_not_allowed", f"requests from web pages ({origin}) are refused; "
                                                          "start the mirror with --allow-remote to accept them")
        if self.api_key and req.path not in PUBLIC_PATHS and not self.key_ok(req):
            return Refusal(401, "invalid_api_key", "missing or wrong API key: send 'Authorization: Bearer KEY' "
                                                   "with the mirror's --api-key (or $" + API_KEY_ENV + ")")
        return None

    def key_ok(self, req: HttpRequest) -> bool:
        given = req.header("authorization") or ""
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer":
            token = req.header("x-api-key") or ""  # what some agents send instead
        return hmac.compare_digest(token.strip().encode("utf-8"), self.api_key.encode("utf-8"))


def _hostname(host_header: str) -> str:
    """The host of a ``Host`` header (``127.0.0.1:8080``, ``[::1]:8080``, ``localhost``)."""
    h = host_header.strip()
    if h.startswith("["):
        return h[1:].partition("]")[0]
    return h.rpartition(":")[0] if h.count(":") == 1 else h
