"""Who is watching each case, across every replica of a service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from uuid import UUID, uuid4

import msgspec

from fusion.helper.store import SharedStore, StoreUnavailableError

__all__ = ["CaseWatchers"]

_LOGGER = logging.getLogger(__name__)

_KEY = "fusion:events:watchers:"
_LOCK = "fusion:events:watchers-lock:"


class _ReplicaEntry(msgspec.Struct, array_like=True):
    usernames: list[str]
    expires: float


_ENTRIES = msgspec.json.Decoder(dict[str, _ReplicaEntry])
_ENCODER = msgspec.json.Encoder()


class CaseWatchers:
    """The usernames watching each case.

    Each replica counts its own streams per case and username, and writes the
    set of its usernames to one shared-store key per case only when that set
    changes (first stream of a user, last one gone): a thousand streams of one
    user cost one write. Entries carry an expiry that :meth:`refresh` pushes
    forward, so the usernames of a replica that died vanish on their own.
    """

    def __init__(self, store: SharedStore, *, lease: float = 90.0, max_usernames: int = 10_000):
        self.store = store
        self.lease = lease
        self.max_usernames = max_usernames
        self.replica = uuid4().hex
        self._local: dict[UUID, Counter[str]] = {}

    def local_usernames(self, case_guid: UUID) -> set[str]:
        return set(self._local.get(case_guid, ()))

    def add(self, case_guid: UUID, username: str) -> bool:
        """Count one more stream; True when ``username`` is new on this replica for the case."""
        counter = self._local.setdefault(case_guid, Counter())
        counter[username] += 1
        return counter[username] == 1

    def remove(self, case_guid: UUID, username: str) -> bool:
        """Count one stream less; True when it was the user's last one on this replica."""
        counter = self._local.get(case_guid)
        if counter is None or counter[username] <= 0:
            return False
        counter[username] -= 1
        if counter[username] > 0:
            return False
        del counter[username]
        if not counter:
            del self._local[case_guid]
        return True

    async def publish(self, case_guid: UUID) -> None:
        """Write this replica's current usernames for the case to the shared store."""
        key = _KEY + str(case_guid)
        async with self.store.lock(_LOCK + str(case_guid), timeout=10, blocking_timeout=10):
            entries = await self._entries(key)
            usernames = sorted(self._local.get(case_guid, ()))[: self.max_usernames]
            if usernames:
                entries[self.replica] = _ReplicaEntry(usernames, time.time() + self.lease)
            else:
                entries.pop(self.replica, None)
            if entries:
                await self.store.set(key, _ENCODER.encode(entries), ttl=self.lease)
            else:
                await self.store.delete(key)

    async def _entries(self, key: str) -> dict[str, _ReplicaEntry]:
        raw = await self.store.get(key)
        if raw is None:
            return {}
        try:
            entries = _ENTRIES.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            _LOGGER.warning("ignoring a malformed watcher list in %s", key)
            return {}
        now = time.time()
        return {replica: entry for replica, entry in entries.items() if entry.expires > now}

    async def usernames(self, case_guid: UUID) -> list[str]:
        """Every username watching the case on any live replica, sorted."""
        names = set(self._local.get(case_guid, ()))
        with contextlib.suppress(StoreUnavailableError):
            for entry in (await self._entries(_KEY + str(case_guid))).values():
                names.update(entry.usernames)
        return sorted(names)[: self.max_usernames]

    async def refresh(self) -> None:
        """Push this replica's leases forward (call at least every ``lease / 3`` seconds)."""
        for case_guid in list(self._local):
            try:
                await self.publish(case_guid)
            except (StoreUnavailableError, TimeoutError) as exc:
                _LOGGER.warning("cannot refresh the watchers of case %s: %s", case_guid, exc)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            await self.refresh()
