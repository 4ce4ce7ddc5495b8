"""Server-side sessions in the shared store, named by an opaque random id."""

from __future__ import annotations

import re
import secrets

import msgspec

from fusion.concept import Identity
from fusion.helper.store import GetBatcher, SharedStore
from fusion.server.auth.config import SessionConfig

__all__ = ["SessionManager"]

# token_urlsafe(32): 43 characters of the URL-safe alphabet.
_SESSION_ID = re.compile(r"[A-Za-z0-9_\-]{43}")
_IDENTITY_DECODER = msgspec.json.Decoder(Identity)


class SessionManager:
    """Creates, loads and revokes sessions.

    The cookie only carries the id; the identity lives in the shared store
    with the session's time to live, so every replica sees a login and a
    logout at once, and loading a session is one store round trip.
    """

    def __init__(self, store: SharedStore, config: SessionConfig, *, prefix: str = "session:"):
        self.store = store
        self.config = config
        self.prefix = prefix
        # Concurrent loads of one loop iteration share one round trip (MGET).
        self._read = GetBatcher(store).get if store.remote else store.get

    @staticmethod
    def valid_id(session_id: str) -> bool:
        """Whether ``session_id`` has the shape of an id this manager makes."""
        return _SESSION_ID.fullmatch(session_id) is not None

    async def create(self, identity: Identity, *, replaces: str | None = None) -> str:
        """Store a new session for ``identity``; revoke ``replaces`` (the caller's old session)."""
        session_id = secrets.token_urlsafe(32)
        await self.store.set(self.prefix + session_id, identity.to_json(), ttl=self.config.ttl)
        if replaces is not None and self.valid_id(replaces):
            await self.store.delete(self.prefix + replaces)
        return session_id

    async def load(self, session_id: str) -> Identity | None:
        """The identity of a live session; None when unknown, expired or malformed."""
        if not self.valid_id(session_id):
            return None
        raw = await self._read(self.prefix + session_id)
        if raw is None:
            return None
        try:
            identity: Identity = _IDENTITY_DECODER.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            return None
        return identity

    async def revoke(self, session_id: str) -> bool:
        """Delete a session everywhere; False when it did not exist."""
        if not self.valid_id(session_id):
            return False
        return await self.store.delete(self.prefix + session_id) > 0
