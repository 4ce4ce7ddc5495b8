"""Configuration of the download API."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["FusionDownloadConfig"]


class FusionDownloadConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a service writes under ``download:`` in its configuration.

    ``roots`` are the only directories whose files can be prepared for
    download: a key can never point outside them, even through a symlink.
    (Strings, as configuration files hold them; resolved when the API is built.)
    """

    roots: list[str] = msgspec.field(default_factory=list)
    ttl: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0
    """Seconds a prepared key stays valid."""
    max_pending: Annotated[int, msgspec.Meta(ge=1)] = 1000
    """Most keys pending at once, across every replica."""
    chunk_size: Annotated[int, msgspec.Meta(ge=4096, le=16 * 1024 * 1024)] = 256 * 1024
