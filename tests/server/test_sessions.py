"""SessionManager: every load reads the shared store; decoding is skipped only for
bytes already decoded for that very session id."""

from __future__ import annotations

from fusion.concept import Identity
from fusion.helper.store import SharedStore
from fusion.server.auth.config import SessionConfig
from fusion.server.auth.session import SessionManager


async def test_load_follows_the_store(store: SharedStore) -> None:
    sessions = SessionManager(store, SessionConfig())
    replica = SessionManager(store, SessionConfig())  # another process on the same store
    alice = Identity(username="alice", groups=frozenset({"dfir"}))
    session_id = await sessions.create(alice)
    first = await sessions.load(session_id)
    assert first == alice
    # The stored identity changes (groups refreshed at a new login elsewhere).
    await store.set(
        sessions.prefix + session_id,
        Identity(username="alice", groups=frozenset({"dfir", "cert"})).to_json(),
        ttl=60,
    )
    changed = await sessions.load(session_id)
    assert changed is not None
    assert changed.groups == {"dfir", "cert"}
    # Revoked by the other replica: gone here at once.
    assert await replica.revoke(session_id)
    assert await sessions.load(session_id) is None
    # Unknown, malformed and undecodable sessions are no one.
    assert await sessions.load("x" * 43) is None
    assert await sessions.load("not a session id") is None
    other = await sessions.create(alice)
    await store.set(sessions.prefix + other, b"[" * 5000, ttl=60)
    assert await sessions.load(other) is None


async def test_two_sessions_of_one_user_stay_apart(store: SharedStore) -> None:
    sessions = SessionManager(store, SessionConfig())
    alice = Identity(username="alice", groups=frozenset({"dfir"}))
    first, second = await sessions.create(alice), await sessions.create(alice)
    one, two = await sessions.load(first), await sessions.load(second)
    assert one == two == alice
    await sessions.revoke(first)
    assert await sessions.load(first) is None
    assert await sessions.load(second) == alice
