"""Each concept pinned to literal JSON written from PROTOCOL.md."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import pytest

from fusion.concept import (
    AnalyzerInfo,
    AuthInfo,
    Case,
    Concept,
    ConceptError,
    Constant,
    Event,
    Identities,
    Identity,
    Info,
    PendingDownloadKey,
    Priority,
    Status,
)

GUID = "8c5b1c1e-3b4f-4c1e-9d7a-0f1e2d3c4b5a"
NEXT_GUID = "0e7f8a9b-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
CREATED = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)

CASE_JSON = (
    b'{"guid":"8c5b1c1e-3b4f-4c1e-9d7a-0f1e2d3c4b5a","managed":false,'
    b'"created":"2026-11-28T04:00:00+00:00","updated":null,"closed":null,"tsid":null,'
    b'"name":"phishing wave","description":"mail campaign","acs":["cert","alice"],'
    b'"acs_ro":["soc"],"webhooks":["https://hooks.example.org/fusion"]}'
)


def json_of(concept: Concept) -> Any:
    return msgspec.json.decode(concept.to_json())


def test_case_decodes_protocol_example() -> None:
    case = Case.from_json(CASE_JSON)
    assert case.guid == UUID(GUID)
    assert case.created == CREATED
    assert case.acs == {"cert", "alice"}
    assert case.acs_ro == {"soc"}
    assert case.webhooks == ["https://hooks.example.org/fusion"]
    assert case.updated is None
    assert case.closed is None


def test_case_encodes_exact_shape_with_sorted_sets() -> None:
    case = Case.from_json(CASE_JSON)
    assert json_of(case) == {
        "guid": GUID,
        "managed": False,
        "created": "2026-11-28T04:00:00Z",
        "updated": None,
        "closed": None,
        "tsid": None,
        "name": "phishing wave",
        "description": "mail campaign",
        "acs": ["alice", "cert"],
        "acs_ro": ["soc"],
        "webhooks": ["https://hooks.example.org/fusion"],
    }
    assert case.to_dict() == json_of(case)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28T04:00:00+00:00",
        "2026-11-28T04:00:00Z",
        "2026-11-28T04:00:00.000Z",
        "2026-11-28T06:00:00+02:00",
    ],
)
def test_datetimes_accept_offsets_z_and_fractions(text: str) -> None:
    case = Case.from_dict({"created": text})
    assert case.created == CREATED


def test_case_create_fills_guid_and_created() -> None:
    before = datetime.now(UTC)
    case = Case.from_json(b'{"name": "new"}')
    assert case.guid.version == 4
    assert before <= case.created <= datetime.now(UTC)
    assert Case.from_json(b"{}").guid != case.guid


def test_unknown_keys_ignored() -> None:
    case = Case.from_json(b'{"name": "x", "future_field": {"nested": [1, 2]}}')
    assert case.name == "x"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"guid": "not-a-guid"}', "$.guid"),
        (b'{"created": "yesterday"}', "$.created"),
        (b'{"created": "2026-11-28T04:00:00"}', "$.created"),
        (b'{"acs": ["a", 3]}', "$.acs[1]"),
        (b'{"managed": "yes"}', "$.managed"),
        (b'{"webhooks": "https://x"}', "$.webhooks"),
        (b'{"name": null}', "$.name"),
    ],
)
def test_invalid_case_names_the_field(body: bytes, path: str) -> None:
    with pytest.raises(ConceptError) as excinfo:
        Case.from_json(body)
    assert path in str(excinfo.value)


def test_malformed_json_is_a_concept_error() -> None:
    with pytest.raises(ConceptError, match="invalid Case"):
        Case.from_json(b'{"name": ')
    with pytest.raises(ConceptError):
        Case.from_json(b"[]")


DEEP = b"[" * 100_000 + b"]" * 100_000  # past every CPython's C recursion limit (3.13: 10000)


def test_deeply_nested_json_is_a_concept_error() -> None:
    """Past msgspec's depth limit (a RecursionError) the documented error still comes out."""
    case = b'{"name": "x", "guid": "0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11"}'
    event = b'{"source": "s", "category": "c", "case": ' + case + b', "ext": {"a": ' + DEEP + b"}}"
    with pytest.raises(ConceptError, match="invalid Event"):
        Event.from_json(event)
    assert Event.from_json(event.replace(DEEP, b"[[1]]")).ext == {"a": [[1]]}


def test_missing_required_key_is_named() -> None:
    with pytest.raises(ConceptError, match="username"):
        Identity.from_json(b'{"groups": []}')


class TestCaseUpdateRules:
    def make(self) -> Case:
        return Case.from_json(CASE_JSON)

    def test_immutable_fields_never_change(self) -> None:
        case = self.make()
        case.update({"guid": NEXT_GUID, "managed": True, "created": "2020-01-01T00:00:00Z"})
        assert case.guid == UUID(GUID)
        assert case.managed is False
        assert case.created == CREATED

    def test_present_keys_replace_and_updated_becomes_now(self) -> None:
        case = self.make()
        before = datetime.now(UTC)
        case.update({"name": "renamed", "acs": [], "tsid": "TS-1"})
        assert case.name == "renamed"
        assert case.acs == set()
        assert case.tsid == "TS-1"
        assert case.description == "mail campaign"
        assert case.updated is not None
        assert case.updated >= before

    def test_closed_case_that_stays_closed_cannot_be_updated(self) -> None:
        case = self.make()
        case.update({"closed": "2026-11-28T05:00:00Z"})
        assert case.closed is not None
        with pytest.raises(ConceptError, match="closed"):
            case.update({"name": "too late"})
        with pytest.raises(ConceptError, match="closed"):
            case.update({"closed": "2026-11-29T05:00:00Z"})
        assert case.name == "phishing wave"

    def test_closed_case_reopens_with_null(self) -> None:
        case = self.make()
        case.update({"closed": "2026-11-28T05:00:00Z"})
        case.update({"closed": None, "name": "reopened"})
        assert case.closed is None
        assert case.name == "reopened"

    def test_invalid_update_changes_nothing(self) -> None:
        case = self.make()
        snapshot = case.to_dict()
        with pytest.raises(ConceptError, match=r"\$\.acs"):
            case.update({"name": "ok", "acs": "not-a-list"})
        assert case.to_dict() == snapshot

    def test_update_needs_an_object(self) -> None:
        with pytest.raises(ConceptError):
            self.make().update(["name"])  # type: ignore[arg-type]


class TimelineCase(Case, kw_only=True):
    priority: Priority = Priority.LOW
    evidences: list[str] = msgspec.field(default_factory=list)


def test_service_case_subclass_round_trips_extra_fields() -> None:
    case = TimelineCase(name="t", priority=Priority.HIGH, evidences=["disk.E01"])
    data = json_of(case)
    assert data["priority"] == "high"
    assert data["evidences"] == ["disk.E01"]
    back = TimelineCase.from_json(case.to_json())
    assert back == case
    assert TimelineCase.from_dict(case.to_dict()) == case
    # a plain Case peer ignores the extra keys
    assert Case.from_json(case.to_json()).name == "t"


def test_event_carries_service_case_subclass() -> None:
    case = TimelineCase(name="t", priority=Priority.MEDIUM)
    event = Event(source="timeline", category="update_case", case=case, ext={"k": 1})
    data = json_of(event)
    assert set(data) == {"source", "category", "case", "ext"}
    assert data["case"]["priority"] == "medium"
    back = Event.from_json(event.to_json(), case_type=TimelineCase)
    assert isinstance(back.case, TimelineCase)
    assert back.case.priority is Priority.MEDIUM
    assert back == event
    plain = Event.from_json(event.to_json())
    assert type(plain.case) is Case
    assert Event.from_dict(event.to_dict(), case_type=TimelineCase) == event


def test_event_protocol_example() -> None:
    raw = (
        b'{"source":"fusion","category":"subscribers","case":' + CASE_JSON + b","
        b'"ext":{"usernames":["alice","bob"]}}'
    )
    event = Event.from_json(raw)
    assert event.category == "subscribers"
    assert event.ext == {"usernames": ["alice", "bob"]}
    assert event.case.guid == UUID(GUID)
    assert Event.from_json(b'{"source":"s","category":"c","case":{}}').ext is None


def test_identity_shape_acs_and_immutability() -> None:
    identity = Identity.from_json(b'{"username": "alice", "groups": ["soc", "cert"]}')
    assert identity.acs == {"alice", "soc", "cert"}
    assert isinstance(identity.groups, frozenset)
    assert json_of(identity) == {"username": "alice", "groups": ["cert", "soc"]}
    assert Identity(username="bob").acs == {"bob"}
    # Shared between requests and handed to hooks: nobody may change it.
    with pytest.raises(AttributeError):
        identity.username = "mallory"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        identity.groups.add("admins")  # type: ignore[attr-defined]
    assert hash(identity) == hash(Identity(username="alice", groups=frozenset({"soc", "cert"})))


def test_identities_sorted_list() -> None:
    identities = Identities.from_list(
        [{"username": "zoe", "groups": []}, {"username": "adam", "groups": ["g"]}]
    )
    assert [i.username for i in identities.to_list()] == ["adam", "zoe"]


@pytest.mark.parametrize(
    ("concept_type", "raw", "expected"),
    [
        (Info, b'{"api":"timeline","version":"1.2.0"}', {"api": "timeline", "version": "1.2.0"}),
        (Constant, b'{"banner":null}', {"banner": None, "allow_empty_acs": True}),
        (
            Constant,
            b'{"banner":"TLP:AMBER","allow_empty_acs":false}',
            {"banner": "TLP:AMBER", "allow_empty_acs": False},
        ),
        (
            AuthInfo,
            b'{"type":"keycloak","parameters":{"host":"h","realm":"r","client":"c",'
            b'"redirect_uri":"u"}}',
            {
                "type": "keycloak",
                "parameters": {"host": "h", "realm": "r", "client": "c", "redirect_uri": "u"},
            },
        ),
        (
            PendingDownloadKey,
            b'{"guid":"' + GUID.encode() + b'","token":"q83vEjRWeJCrze8SNFZ4kA"}',
            {"guid": GUID, "token": "q83vEjRWeJCrze8SNFZ4kA"},
        ),
        (
            AnalyzerInfo,
            b'{"name":"yara","tags":["static","malware"],"version":"4.5"}',
            {"name": "yara", "tags": ["malware", "static"], "version": "4.5"},
        ),
    ],
)
def test_small_concepts_match_protocol(
    concept_type: type[Concept], raw: bytes, expected: dict[str, Any]
) -> None:
    concept = concept_type.from_json(raw)
    assert json_of(concept) == expected
    assert concept_type.from_dict(expected) == concept


def test_enums_values() -> None:
    assert [s.value for s in Status] == [
        "pending",
        "queued",
        "extracting",
        "processing",
        "success",
        "failure",
    ]
    assert [p.value for p in Priority] == ["low", "medium", "high"]
    with pytest.raises(ConceptError, match="priority"):
        TimelineCase.from_json(b'{"priority": "urgent"}')


def test_list_encoding_and_decoding() -> None:
    cases = [Case(name=str(i)) for i in range(3)]
    data = Case.to_json_many(cases)
    assert [c["name"] for c in msgspec.json.decode(data)] == ["0", "1", "2"]
    assert Case.from_json_many(data) == cases
    with pytest.raises(ConceptError, match=r"\$\[1\]"):
        Case.from_json_many(b'[{}, {"acs": 1}]')


class ServiceConstant(Constant, kw_only=True):
    analyzers: list[str] = msgspec.field(default_factory=list)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ".toml"])
def test_file_round_trip(tmp_path: Path, suffix: str) -> None:
    constant = ServiceConstant(banner="TLP:CLEAR", analyzers=["yara", "capa"])
    filepath = tmp_path / f"constant{suffix}"
    constant.to_filepath(filepath)
    assert ServiceConstant.from_filepath(filepath) == constant
    case = Case(name="file", closed=CREATED)
    case_path = tmp_path / f"case{suffix}"
    case.to_filepath(case_path)
    assert Case.from_filepath(case_path) == case


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConceptError, match=r"unsupported file type '\.ini'"):
        Constant.from_filepath(tmp_path / "constant.ini")
    with pytest.raises(ConceptError, match="cannot read"):
        Constant.from_filepath(tmp_path / "missing.yml")
    broken = tmp_path / "broken.yml"
    broken.write_text("banner: [unclosed\n")
    with pytest.raises(ConceptError, match="cannot parse"):
        Constant.from_filepath(broken)
    wrong = tmp_path / "wrong.yml"
    wrong.write_text("allow_empty_acs: maybe\n")
    with pytest.raises(ConceptError, match=r"\$\.allow_empty_acs"):
        Constant.from_filepath(wrong)
