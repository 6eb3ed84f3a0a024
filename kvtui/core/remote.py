"""Which servers a profile would expose to, or reach on, other machines: refused unless --allow-remote."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from kvtui.core.errors import ProfileError
from kvtui.core.profiles import Profile
from kvtui.core.tablecheck import one_line


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def remote_hosts(profile: Profile) -> list[tuple[str, str]]:
    """(key, host) for each ``--host`` in the extra_args that is not a loopback address.

    kvtui starts every server with ``--host 127.0.0.1``; a later ``--host`` in
    extra_args (``--host X`` or ``--host=X``) would override it.
    """
    found = []
    lists = [("server.extra_args", profile.extra_args)]
    lists += [(f"sides[{i}].extra_args", s.extra_args) for i, s in enumerate(profile.sides)]
    for where, args in lists:
        for j, arg in enumerate(args):
            if arg == "--host":
                host = args[j + 1] if j + 1 < len(args) else ""
            elif arg.startswith("--host="):
                host = arg.partition("=")[2]
            else:
                continue
            if not _is_loopback(host):
                found.append((where, host))
    for i, s in enumerate(profile.sides):
        if s.url and not _is_loopback(urlsplit(s.url).hostname or ""):
            found.append((f"sides[{i}].url", urlsplit(s.url).hostname or ""))
    return found


def check_remote(profile: Profile, allow_remote: bool = False) -> None:
    """Refuse extra_args that would make a server listen beyond loopback, unless ``allow_remote``.

    Raises:
        ProfileError: naming the file, the key and the host.
    """
    bad = remote_hosts(profile)
    if bad and not allow_remote:
        where, host = bad[0]
        if where.endswith(".url"):
            raise ProfileError(one_line(f"{profile.source or '<profile>'}: {where}: {host} is another machine: kvtui "
                                         "would send prompts (and the API key) over the network"),
                               "pass --allow-remote to attach to a server on another machine")
        raise ProfileError(one_line(f"{profile.source or '<profile>'}: {where}: --host {host or '(empty)'} would let "
                                     "other machines reach llama-server"),
                           "remove it (kvtui keeps its servers on 127.0.0.1), or pass --allow-remote to accept that")
