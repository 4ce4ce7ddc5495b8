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

_CHANNEL = "events:watchers:"
# Snapshots kept per case: far more than replicas, since each replica only
# appends when its set of usernames changes or its lease is refreshed.
_SNAPSHOTS = 512


class _Snapshot(msgspec.Struct, array_like=True):
    replica: str
    usernames: list[str]
    expires: float


_DECODER = msgspec.json.Decoder(_Snapshot)
_ENCODER = msgspec.json.Encoder()


class CaseWatchers:
    """The usernames watching each case.

    Each replica counts its own streams per case and username, and appends a
    snapshot of its usernames to the case's bounded history in the shared
    store only when that set changes (first stream of a user, last one gone):
    a thousand streams of one user cost one write. The latest snapshot of each
    replica counts until its expiry, which :meth:`refresh` pushes forward, so
    the usernames of a replica that died vanish on their own. Appends are
    atomic in the store, so no lock is needed between replicas.
    """

    def __init__(self, store: SharedStore, *, lease: float = 90.0, max_usernames: int = 10_000):
        self.store = store
        self.lease = lease
        self.max_usernames = max_usernames
        self.replica = uuid4().hex
        self._local: dict[UUID, Counter[str]] = {}
        # One append at a time per case, so snapshots land in the order they were taken.
        self._writing: dict[UUID, asyncio.Lock] = {}

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
        """Append this replica's current usernames for the case to the shared store."""
        local = self._writing.setdefault(case_guid, asyncio.Lock())
        try:
            async with local:
                usernames = sorted(self._local.get(case_guid, ()))[: self.max_usernames]
                snapshot = _Snapshot(self.replica, usernames, time.time() + self.lease)
                await self.store.publish(
                    _CHANNEL + str(case_guid),
                    _ENCODER.encode(snapshot),
                    history=_SNAPSHOTS,
                    history_ttl=self.lease,
                )
        finally:
            # A race here only means two snapshots of the same state.
            if not local.locked() and case_guid not in self._local:
                self._writing.pop(case_guid, None)

    async def usernames(self, case_guid: UUID) -> list[str]:
        """Every username watching the case on any live replica, sorted."""
        names = set(self._local.get(case_guid, ()))
        latest: dict[str, _Snapshot] = {}
        with contextlib.suppress(StoreUnavailableError):
            for message in await self.store.history(_CHANNEL + str(case_guid)):
                try:
                    snapshot = _DECODER.decode(message.data)
                except (msgspec.DecodeError, RecursionError):
                    continue
                latest[snapshot.replica] = snapshot  # oldest first: the last one wins
        now = time.time()
        for replica, snapshot in latest.items():
            if replica != self.replica and snapshot.expires > now:
                names.update(snapshot.usernames)
        return sorted(names)[: self.max_usernames]

    async def refresh(self) -> None:
        """Push this replica's leases forward (call at least every ``lease / 3`` seconds)."""
        for case_guid in list(self._local):
            try:
                await self.publish(case_guid)
            except StoreUnavailableError as exc:
                _LOGGER.warning("cannot refresh the watchers of case %s: %s", case_guid, exc)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            await self.refresh()
