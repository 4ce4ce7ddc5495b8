"""One-time downloads: stream a server file to disk, atomically."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from yarl import URL

from fusion.client.client import FusionClient
from fusion.client.errors import FusionClientError, FusionConnectionError
from fusion.concept import PendingDownloadKey
from fusion.helper.filesystem import safe_filename

if TYPE_CHECKING:
    from fusion.client.progress import TransferProgress, TransferProgressCallback

# safe_filename is the helper's, named here too: the client exported it first.
__all__ = ["FusionDownloadAPIClient", "ProgressCallback", "safe_filename"]

ProgressCallback = Callable[[int, int | None], None]
"""The older form of progress: ``progress(received_bytes, total_bytes_or_None)``.

Prefer ``on_progress``, which gets a :class:`~fusion.client.TransferProgress`
(rate and ETA too)."""

_CHUNK_SIZE = 256 * 1024


class FusionDownloadAPIClient:
    """``/api/download/{guid}/{token}``, or a service route that answers a file.

    A one-time key is a credential of its own; a service's route (a log, a
    report) may want the caller's too. So the fetch carries the client's
    credentials to URLs on the client's own server (the API key, and the
    session cookie, which goes to the service's hosts only: see
    :class:`~fusion.client.FusionCookieJar`), and nothing to any other host.
    """

    def __init__(self, client: FusionClient) -> None:
        self.client = client

    def url_for(self, key_or_url: PendingDownloadKey | str) -> URL:
        """The download URL of a key, an API path, or an absolute URL."""
        if isinstance(key_or_url, PendingDownloadKey):
            token = quote(key_or_url.token, safe="")
            return self.client.url(f"/api/download/{key_or_url.guid}/{token}")
        url = URL(key_or_url)
        if url.scheme:
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(f"invalid download URL {key_or_url!r}: expected http(s)")
            return url
        if not key_or_url.startswith("/"):
            raise ValueError(
                f"invalid download key {key_or_url!r}: expected a URL or /api/download/GUID/TOKEN"
            )
        return self.client.url(key_or_url)

    async def download(
        self,
        key_or_url: PendingDownloadKey | str,
        destination: Path | str,
        *,
        on_progress: TransferProgressCallback | None = None,
        max_size: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream the file to ``destination`` and return the path written.

        When ``destination`` is an existing directory, the file takes the
        server's Content-Disposition name (made safe by
        :func:`~fusion.helper.filesystem.safe_filename`)
        inside it; otherwise ``destination`` is the file path. The data goes
        to a temporary file in the same directory, renamed into place only
        when complete, so a failed download never leaves a partial file.
        ``max_size`` (bytes) aborts larger downloads. ``on_progress`` gets a
        :class:`~fusion.client.TransferProgress` at the start and after each
        chunk, whose ``total`` is the answer's ``Content-Length`` (``None``
        when the server does not say); ``progress`` is the older two-number form.
        """
        from fusion.client.progress import ProgressMeter
        from fusion.helper.streaming import SizeLimitError, stream_to_file

        url = self.url_for(key_or_url)
        destination = Path(destination)
        into_directory = await asyncio.to_thread(destination.is_dir)
        async with self.client.stream("GET", url) as response:
            total = response.content_length
            if max_size is not None and total is not None and total > max_size:
                raise FusionClientError(f"download is {total} bytes, more than {max_size}")
            if into_directory:
                disposition = response.content_disposition
                name = disposition.filename if disposition is not None else None
                target = destination / safe_filename(name, fallback=url.name or "download")
            else:
                target = destination

            def report(step: TransferProgress) -> None:
                if on_progress is not None:
                    on_progress(step)
                if progress is not None:
                    progress(step.done, step.total)

            meter = ProgressMeter(report, total)

            async def counted() -> AsyncIterator[bytes]:
                meter.start()
                async for chunk in response.content.iter_chunked(_CHUNK_SIZE):
                    meter.advance(len(chunk))
                    yield chunk
                # Raised before stream_to_file renames, so a short file never lands.
                if total is not None and meter.done != total:
                    raise FusionConnectionError(
                        f"{url}: download truncated at {meter.done} of {total} bytes"
                    )

            try:
                await stream_to_file(counted(), target, max_size=max_size)
            except SizeLimitError:
                raise FusionClientError(f"download exceeds {max_size} bytes") from None
        return target
