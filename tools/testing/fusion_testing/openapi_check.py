"""Checks HTTP answers against a Fusion server's OpenAPI document (tests only).

:class:`OpenAPIChecker` matches a path to the document's path templates, and
asserts that the status and the content type are declared for the operation
and that a JSON body is valid (JSON Schema 2020-12, jsonschema) against the
operation's schema.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import msgspec
from jsonschema import Draft202012Validator

__all__ = ["OpenAPIChecker"]


class OpenAPIChecker:
    """Checks answers against ``document``; :attr:`seen` holds ``(METHOD, template, status)``."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.seen: set[tuple[str, str, int]] = set()
        self._templates = [
            (re.compile("^" + re.sub(r"{[^}]+}", "[^/]+", template) + "$"), template)
            for template in document["paths"]
        ]

    def template(self, path: str) -> str | None:
        """The document's path template matching ``path`` (the most literal one), or None."""
        found = [template for pattern, template in self._templates if pattern.match(path)]
        return min(found, key=lambda template: template.count("{")) if found else None

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        """AssertionError (or jsonschema's ValidationError) when the answer is not as documented."""
        template = self.template(path)
        assert template is not None, f"{path} matches no path of the document"
        operation = self.document["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not in the document"
        responses = operation["responses"]
        # A server-side failure (5xx) may be the "default" error envelope.
        key = "default" if str(status) not in responses and status >= 500 else str(status)
        assert key in responses, f"{method} {template} answered undeclared {status}"
        self.seen.add((method.upper(), template, status))
        content = responses[key].get("content", {})
        if method.upper() == "HEAD":
            return
        assert content_type in content, f"{method} {template} {status}: {content_type}"
        if content_type != "application/json":
            return
        schema = {**content[content_type]["schema"], "components": self.document["components"]}
        Draft202012Validator(schema).validate(msgspec.json.decode(body))

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
    ) -> tuple[int, Any]:
        """One request, checked: ``(status, decoded JSON body, or the bytes of another)``."""
        async with session.request(method, path, **kwargs) as response:
            body = await response.read()
            self.check(method, path, response.status, response.content_type, body)
            is_json = response.content_type == "application/json"
            return response.status, msgspec.json.decode(body) if is_json and body else body
