"""Arguments that turn speculative decoding on: a side scored with them would be scored wrongly.

Tokens accepted from a draft (draft model, MTP, n-gram lookup) come back with
probability 1 and an empty top list (llama-server-facts §7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvtui.core.errors import KvtuiError

# arguments that turn speculative decoding on (or configure it): tokens accepted from a draft come back with
# probability 1 and an empty top list, so a side scored with them would be scored wrongly
_SPECULATIVE = frozenset({
    "-md", "--model-draft", "--spec-draft-model", "-hfd", "-hfrd", "--hf-repo-draft", "--spec-draft-hf",
    "--spec-default", "--fim-qwen-7b-spec", "--fim-qwen-14b-spec", "-lcs", "--lookup-cache-static", "-lcd",
    "--lookup-cache-dynamic", "-mtp", "--mtp", "--draft", "--draft-n", "--draft-max", "--draft-min",
    "--draft-n-min", "-ctkd", "-ctvd", "-td", "-tbd", "-ngld", "-devd", "-otd", "-cmoed", "-ncmoed",
    "-Cd", "-Crd", "-Cbd",
})
_SPECULATIVE_ENV = ("LLAMA_ARG_SPEC_TYPE", "LLAMA_ARG_SPEC_DRAFT_MODEL", "LLAMA_ARG_MODEL_DRAFT",
                    "LLAMA_ARG_SPEC_DRAFT_HF_REPO", "LLAMA_ARG_HF_REPO_DRAFT")


def speculative_flags(args: Sequence[str]) -> tuple[str, ...]:
    """Every argument of a command line that turns speculative decoding on (``--spec-type none`` does not)."""
    found = []
    for j, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag == "--spec-type":
            value = value if eq else (args[j + 1] if j + 1 < len(args) else "")
            if value.strip().lower() != "none":
                found.append(f"{flag} {value}".strip())
            continue
        if flag in _SPECULATIVE or flag.startswith(("--spec-", "--draft", "--lookup")) or (
                flag.startswith("--") and ("draft" in flag or flag.endswith("-spec"))):
            found.append(arg)
    return tuple(dict.fromkeys(found))


def speculative_argument(args: Sequence[str], env: Mapping[str, str] | None = None) -> str | None:
    """The first argument (or environment variable) that turns speculative decoding on, or None."""
    flags = speculative_flags(args)
    if flags:
        return flags[0]
    for name in _SPECULATIVE_ENV:
        value = (env or {}).get(name, "")
        if value and not (name == "LLAMA_ARG_SPEC_TYPE" and value.strip().lower() == "none"):
            return f"${name}={value}"
    return None


def check_not_speculative(name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Refuse to score a side whose server would decode speculatively.

    Raises:
        KvtuiError: naming the side, the argument and why.
    """
    found = speculative_argument(args, env)
    if found is not None:
        raise KvtuiError(f"{name}: {found} turns on speculative decoding, whose accepted draft tokens come back "
                         "with probability 1 and no top list, so this side cannot be scored",
                         "remove it from the profile's extra_args (or the environment) for kvtui score")
