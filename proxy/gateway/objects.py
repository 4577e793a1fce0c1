"""Objects the upstream keeps for a client, as requests name them (pure).

Every client shares the operator's upstream key, so the upstream answers for
any object id it is given: a stored response named in ``previous_response_id``
continues another tenant's conversation, a ``file_id`` reads another tenant's
file. taximeter records who created each object (spec section 4b) and checks
every id a request names against that record before anything goes upstream.
This module only reads requests and responses: which ids a request names
(:func:`referenced`), which object a response created (:func:`created`), and
which paths are an object's own (:func:`object_route`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from taximeter.pricing.usage import Family
from taximeter.proxy.errors import InvalidInput

__all__ = ["MAX_REFERENCES", "ObjectRoute", "Reference", "created", "object_route", "referenced", "valid_id"]

MAX_REFERENCES = 128  # ids one request may name; more is refused (400)
_MAX_DEPTH = 32  # deeper inputs are refused: real ones nest four or five levels
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,256}")  # what an upstream object id looks like


@dataclass(frozen=True, slots=True)
class Reference:
    """An object a request names: its kind and id (``valid`` False when the
    id cannot be one: never looked up, never found)."""

    kind: str
    object_id: str
    param: str  # the request field that names it
    valid: bool = True


def valid_id(value: Any) -> bool:
    """Whether ``value`` can be an upstream object's id."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _reference(kind: str, value: Any, param: str) -> Reference:
    valid = valid_id(value)
    return Reference(kind, value if valid else "", param, valid)


def referenced(family: Family, fields: dict[str, Any]) -> list[Reference]:
    """Every object id a request body names, of a kind taximeter records.
    Raises InvalidInput when it names more than :data:`MAX_REFERENCES`."""
    found = list(_references(family, fields))
    if len(found) > MAX_REFERENCES:
        raise InvalidInput(
            f"a request may name at most {MAX_REFERENCES} stored objects", param="input", status=400
        )
    return found


def _references(family: Family, fields: dict[str, Any]) -> Iterator[Reference]:
    if family == "responses":
        if fields.get("previous_response_id") is not None:
            yield _reference("response", fields["previous_response_id"], "previous_response_id")
        conversation = fields.get("conversation")
        if conversation is not None:
            value = conversation.get("id") if isinstance(conversation, dict) else conversation
            yield _reference("conversation", value, "conversation")
        yield from _in_items(fields.get("input"), 0, "input")
        yield from _in_tools(fields.get("tools"))
    elif family in ("chat", "completions"):
        yield from _in_items(fields.get("messages"), 0, "messages")


def _in_items(value: Any, depth: int, param: str) -> Iterator[Reference]:
    """File ids (``file_id``) and item references anywhere in an input
    (nested deeper than any real input is refused: never left unread)."""
    if depth > _MAX_DEPTH:
        raise InvalidInput(f"'{param}' is nested too deeply", param=param, status=400)
    if isinstance(value, list):
        for item in value:
            yield from _in_items(item, depth + 1, param)
    elif isinstance(value, dict):
        if value.get("type") == "item_reference":  # an item of a stored response, by its id
            yield _reference("item", value.get("id"), param)
        for key, inner in value.items():
            if key == "file_id" and inner is not None:
                yield _reference("file", inner, param)
            elif isinstance(inner, list | dict):
                yield from _in_items(inner, depth + 1, param)


def _in_tools(tools: Any) -> Iterator[Reference]:
    """Vector stores of file_search, containers and files of code_interpreter."""
    if not isinstance(tools, list):
        return
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "file_search":
            stores = tool.get("vector_store_ids")
            for store in stores if isinstance(stores, list) else [stores]:
                yield _reference("vector_store", store, "tools")
        elif tool.get("type") == "code_interpreter":
            container = tool.get("container")
            if isinstance(container, dict):  # {"type": "auto", "file_ids": [...]}: a new container
                files = container.get("file_ids")
                for file_id in files if isinstance(files, list) else []:
                    yield _reference("file", file_id, "tools")
            elif container is not None:
                yield _reference("container", container, "tools")


def created(family: Family, fields: dict[str, Any], response: Any) -> tuple[str, str] | None:
    """The object a successful response created upstream, as ``(kind, id)``:
    a stored response (Responses API, unless ``store`` is false) or a stored
    chat completion (``store: true``); None otherwise."""
    if not isinstance(response, dict):
        return None
    object_id = response.get("id")
    if not isinstance(object_id, str) or not valid_id(object_id):
        return None
    if family == "responses" and fields.get("store") is not False:
        return "response", object_id
    if family == "chat" and fields.get("store") is True:
        return "chat_completion", object_id
    return None


@dataclass(frozen=True, slots=True)
class ObjectRoute:
    """A path of one object: only its owner's calls go upstream, unmetered."""

    kind: str
    object_id: str


# (methods, pattern of the canonical path, kind of the object its {id} names)
_ROUTES = (
    (frozenset({"GET", "DELETE"}), re.compile(r"/v1/responses/([^/]+)"), "response"),
    (frozenset({"GET"}), re.compile(r"/v1/responses/([^/]+)/input_items"), "response"),
    (frozenset({"POST"}), re.compile(r"/v1/responses/([^/]+)/cancel"), "response"),
    (frozenset({"GET", "POST", "DELETE"}), re.compile(r"/v1/chat/completions/([^/]+)"), "chat_completion"),
    (frozenset({"GET"}), re.compile(r"/v1/chat/completions/([^/]+)/messages"), "chat_completion"),
    (frozenset({"GET", "DELETE"}), re.compile(r"/v1/files/([^/]+)"), "file"),
    (frozenset({"GET"}), re.compile(r"/v1/files/([^/]+)/content"), "file"),
    (frozenset({"POST"}), re.compile(r"/v1/uploads/([^/]+)/(?:parts|complete|cancel)"), "upload"),
)


def object_route(method: str, path: str) -> ObjectRoute | None:
    """The object a (canonical) path is about, when it is one of an object's own paths."""
    for methods, pattern, kind in _ROUTES:
        match = pattern.fullmatch(path)
        if match is not None and method in methods:
            return ObjectRoute(kind, match.group(1))
    return None
