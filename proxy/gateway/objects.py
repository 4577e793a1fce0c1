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


def referenced(family: Family, fields: dict[str, Any], most: int = MAX_REFERENCES) -> list[Reference]:
    """Every object id a request body names, of a kind taximeter records.
    Raises InvalidInput when it names more than ``most``."""
    found = list(_references(family, fields))
    if len(found) > most:
        raise InvalidInput(f"a request may name at most {most} stored objects", param="input", status=400)
    return found


def _references(family: Family, fields: dict[str, Any]) -> Iterator[Reference]:
    if family not in ("responses", "chat", "completions"):
        return
    if family == "responses":
        if fields.get("previous_response_id") is not None:
            yield _reference("response", fields["previous_response_id"], "previous_response_id")
        conversation = fields.get("conversation")
        if conversation is not None:
            value = conversation.get("id") if isinstance(conversation, dict) else conversation
            yield _reference("conversation", value, "conversation")
        items = fields.get("input")
        for item in items if isinstance(items, list) else []:
            # An input item with an id (a message, a reasoning item, a tool call
            # of a stored response) may be looked up by it: the id is a reference.
            if isinstance(item, dict) and item.get("id") is not None:
                yield _reference("item", item["id"], "input")
        yield from _in_tools(fields.get("tools"))
    messages = fields.get("messages")
    for message in messages if isinstance(messages, list) else []:
        audio = message.get("audio") if isinstance(message, dict) else None
        if isinstance(audio, dict) and audio.get("id") is not None:  # an earlier audio reply, by id
            yield _reference("audio", audio["id"], "messages")
    for name, value in fields.items():
        if name not in _NOT_REFERENCES:  # a field of its own (a vector store's file_ids) or within
            yield from _ids_in({name: value}, 0, name)


# Fields (at any depth) that hold data, not references: a client's own
# metadata and attributes (of a vector store's files), JSON schemas of tools
# and structured outputs.
_NOT_REFERENCES = frozenset({"metadata", "attributes", "parameters", "schema", "json_schema"})
_ID_KEYS = {"file_id": "file"}
_ID_LIST_KEYS = {"file_ids": "file", "vector_store_ids": "vector_store"}


def _ids_in(value: Any, depth: int, param: str) -> Iterator[Reference]:
    """File and vector store ids anywhere in a field, item references too
    (nested deeper than any real request is refused: never left unread)."""
    if depth > _MAX_DEPTH:
        raise InvalidInput(f"'{param}' is nested too deeply", param=param, status=400)
    if isinstance(value, list):
        for item in value:
            yield from _ids_in(item, depth + 1, param)
        return
    if not isinstance(value, dict):
        return
    if value.get("type") == "item_reference":  # an item of a stored response, by its id
        yield _reference("item", value.get("id"), param)
    for key, inner in value.items():
        if key in _NOT_REFERENCES:
            continue
        if key in _ID_KEYS and isinstance(inner, str):
            yield _reference(_ID_KEYS[key], inner, param)
        elif key in _ID_LIST_KEYS and inner is not None:
            for one in inner if isinstance(inner, list) else [inner]:
                yield _reference(_ID_LIST_KEYS[key], one, param)
        elif isinstance(inner, list | dict):
            yield from _ids_in(inner, depth + 1, param)


def _in_tools(tools: Any) -> Iterator[Reference]:
    """A code_interpreter tool's container, named by its id."""
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and tool.get("type") == "code_interpreter":
            container = tool.get("container")
            if container is not None and not isinstance(container, dict):  # a dict: a new one
                yield _reference("container", container, "tools")


def created(family: Family, fields: dict[str, Any], response: Any) -> list[tuple[str, str]]:
    """The objects a successful response created upstream, as ``(kind, id)``
    pairs: a stored response and its output items (Responses API, unless
    ``store`` is false); a stored chat completion (``store: true``) and the
    audio replies a chat completion may be continued from."""
    if not isinstance(response, dict):
        return []
    object_id = response.get("id")
    if not isinstance(object_id, str) or not valid_id(object_id):
        return []
    made: list[tuple[str, str]] = []
    if family == "responses" and fields.get("store") is not False:
        made.append(("response", object_id))
        output = response.get("output")
        for item in output if isinstance(output, list) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str) and valid_id(item["id"]):
                made.append(("item", item["id"]))
    if family == "chat":
        if fields.get("store") is True:
            made.append(("chat_completion", object_id))
        choices = response.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            message = choice.get("message") if isinstance(choice, dict) else None
            audio = message.get("audio") if isinstance(message, dict) else None
            if isinstance(audio, dict) and isinstance(audio.get("id"), str) and valid_id(audio["id"]):
                made.append(("audio", audio["id"]))
    return made


@dataclass(frozen=True, slots=True)
class ObjectRoute:
    """A path of one object: only its owner's calls go upstream, unmetered.
    ``itself``: the path is the object's own, not one of an item of it."""

    kind: str
    object_id: str
    itself: bool = False


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
    (frozenset({"GET"}), re.compile(r"/v1/batches/([^/]+)"), "batch"),
    (frozenset({"GET", "POST", "DELETE"}), re.compile(r"/v1/conversations/([^/]+)"), "conversation"),
    (frozenset({"GET", "POST"}), re.compile(r"/v1/conversations/([^/]+)/items"), "conversation"),
    (frozenset({"GET", "DELETE"}), re.compile(r"/v1/conversations/([^/]+)/items/([^/]+)"), "conversation"),
    (frozenset({"POST"}), re.compile(r"/v1/batches/([^/]+)/cancel"), "batch"),
    (frozenset({"GET", "POST", "DELETE"}), re.compile(r"/v1/vector_stores/([^/]+)"), "vector_store"),
    (frozenset({"POST"}), re.compile(r"/v1/vector_stores/([^/]+)/search"), "vector_store"),
    (
        frozenset({"GET", "POST"}),
        re.compile(r"/v1/vector_stores/([^/]+)/(?:files|file_batches)"),
        "vector_store",
    ),
    (
        frozenset({"GET", "POST", "DELETE"}),
        re.compile(r"/v1/vector_stores/([^/]+)/files/([^/]+)"),
        "vector_store",
    ),
    (frozenset({"GET"}), re.compile(r"/v1/vector_stores/([^/]+)/files/([^/]+)/content"), "vector_store"),
    (frozenset({"GET"}), re.compile(r"/v1/vector_stores/([^/]+)/file_batches/([^/]+)"), "vector_store"),
    (
        frozenset({"GET", "POST"}),
        re.compile(r"/v1/vector_stores/([^/]+)/file_batches/([^/]+)/(?:files|cancel)"),
        "vector_store",
    ),
)


def object_route(method: str, path: str) -> ObjectRoute | None:
    """The object a (canonical) path is about, when it is one of an object's own paths."""
    for methods, pattern, kind in _ROUTES:
        match = pattern.fullmatch(path)
        if match is not None and method in methods:
            itself = match.re.groups == 1 and match.re.pattern.endswith("/([^/]+)")
            return ObjectRoute(kind, match.group(1), itself)
    return None
