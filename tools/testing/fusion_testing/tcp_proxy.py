"""A loopback TCP proxy, in the test's event loop, that can lose one reply on purpose.

Put between a client and a real server (Redis, say) to reproduce the fault
that a retry cannot see through: the request reached the server and ran, but
the connection broke before the reply came back::

    async with TcpProxy(redis_server.port) as proxy:
        store = create_store(f"redis://127.0.0.1:{proxy.port}/0")
        proxy.drop_reply_to(b"lock:job")  # the next command naming it runs, its reply is lost
        ...

The server is never mocked: every byte goes to it and every reply comes from
it, except the one dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``, one task pair a connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.dropped = 0
        """How many replies were dropped (each with its connection)."""
        self._server: asyncio.Server | None = None
        self._trigger: bytes | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def drop_reply_to(self, marker: bytes) -> None:
        """Lose the reply to the next request containing ``marker``.

        The request is forwarded and runs on the server; the first reply
        that is not an error (``-...``: Redis's ``NOSCRIPT``, say, means it
        did not run) is not forwarded, and the client's connection is
        closed instead. Other connections and later requests are untouched.
        """
        self._trigger = marker

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- one client connection -------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        # Set by the client side when it forwarded the triggering request: the
        # next reply of the server is the one to drop.
        armed = asyncio.Event()
        pumps = [
            asyncio.create_task(self._requests(reader, upstream_writer, armed)),
            asyncio.create_task(self._replies(upstream_reader, writer, armed)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for end in (writer, upstream_writer):
                self._writers.discard(end)
                end.close()
                with contextlib.suppress(OSError):
                    await end.wait_closed()

    async def _requests(
        self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, armed: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            if self._trigger is not None and self._trigger in data:
                armed.set()
            upstream.write(data)
            await upstream.drain()

    async def _replies(
        self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, armed: asyncio.Event
    ) -> None:
        while data := await upstream.read(65536):
            if armed.is_set():
                armed.clear()
                if not data.startswith(b"-"):
                    # The request ran; its reply is lost with the connection.
                    self._trigger = None
                    self.dropped += 1
                    return
            writer.write(data)
            await writer.drain()
