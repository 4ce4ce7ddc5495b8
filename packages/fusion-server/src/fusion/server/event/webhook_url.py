"""Whether a webhook URL lies under an allowed prefix, compared as a server would read it."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = ["url_under_prefix"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


class _Location(NamedTuple):
    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]


def _location(url: str) -> _Location | None:
    """Scheme, host, port and decoded path segments of ``url``; None when it is
    not a plain http(s) URL or its path is ambiguous.

    Dot segments are resolved after percent-decoding (``%2e%2e`` is ``..``), the
    scheme and host are lower-cased, a missing port is the scheme's default. A
    segment that decodes to something holding ``/`` or ``\\`` could be read as
    several segments by the receiving server: such a URL is not trusted.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None:
        return None
    segments: list[str] = []
    raw_segments = parts.path.split("/")[1:] if parts.path else []
    for raw in raw_segments:
        segment = unquote(raw, errors="strict")
        if "/" in segment or "\\" in segment or "\x00" in segment:
            return None
        if segment == ".":
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    if raw_segments and raw_segments[-1] in (".", ".."):
        segments.append("")  # "/a/b/.." is the directory "/a/"
    return _Location(scheme, host, port or _DEFAULT_PORTS[scheme], tuple(segments))


def url_under_prefix(url: str, prefix: str) -> bool:
    """True when ``url`` is on the prefix's scheme, host and port and its path is
    under the prefix's path, whole segments compared (``/hooks`` does not cover
    ``/hooks-evil``; ``/hooks/../evil`` and ``/hooks/%2e%2e/evil`` are not under
    ``/hooks/``)."""
    try:
        target, allowed = _location(url), _location(prefix)
    except UnicodeDecodeError:
        return False
    if target is None or allowed is None:
        return False
    if target[:3] != allowed[:3]:
        return False
    wanted, found = allowed.segments, target.segments
    if wanted and wanted[-1] == "":
        # "/hooks/" covers "/hooks/" and what lies under it, not "/hooks" itself.
        head = wanted[:-1]
        return len(found) > len(head) and found[: len(head)] == head
    return found[: len(wanted)] == wanted
