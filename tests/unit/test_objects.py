"""Which stored objects a request names and a response creates (the pure part
of tenant isolation, proxy/gateway/objects.py)."""

from __future__ import annotations

from typing import Any

import pytest

from taximeter.proxy.errors import InvalidInput
from taximeter.proxy.gateway.objects import (
    MAX_REFERENCES,
    ObjectRoute,
    Reference,
    created,
    object_route,
    referenced,
)


def test_a_responses_request_names_its_context_files_and_tool_objects() -> None:
    fields: dict[str, Any] = {
        "previous_response_id": "resp_1",
        "conversation": {"id": "conv_2"},
        "input": [
            {"role": "user", "content": [{"type": "input_file", "file_id": "file-3"}]},
            {"type": "item_reference", "id": "msg_4"},
            {"type": "reasoning", "id": "rs_8", "summary": []},
            {"role": "user", "content": [{"type": "input_image", "file_id": "file-5", "detail": "auto"}]},
        ],
        "tools": [
            {"type": "file_search", "vector_store_ids": ["vs_6"]},
            {"type": "code_interpreter", "container": "cntr_7"},
            {"type": "image_generation", "input_image_mask": {"file_id": "file-9"}},
            {"type": "function", "name": "f", "parameters": {"properties": {"file_id": {"type": "string"}}}},
        ],
        "prompt": {"id": "pmpt_1", "variables": {"doc": {"type": "input_file", "file_id": "file-10"}}},
        "metadata": {"file_id": "mine, not a reference"},
    }
    found = {(r.kind, r.object_id, r.param) for r in referenced("responses", fields)}
    assert found == {
        ("response", "resp_1", "previous_response_id"),
        ("conversation", "conv_2", "conversation"),
        ("file", "file-3", "input"),
        ("item", "msg_4", "input"),
        ("item", "rs_8", "input"),
        ("file", "file-5", "input"),
        ("vector_store", "vs_6", "tools"),
        ("container", "cntr_7", "tools"),
        ("file", "file-9", "tools"),
        ("file", "file-10", "prompt"),
    }


def test_a_chat_request_names_files_and_earlier_audio_replies() -> None:
    messages = [
        {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
        {"role": "assistant", "audio": {"id": "audio_2"}},
    ]
    found = {(r.kind, r.object_id) for r in referenced("chat", {"messages": messages})}
    assert found == {("file", "file-1"), ("audio", "audio_2")}


def test_ids_that_cannot_be_ids_are_never_valid() -> None:
    for value in (12, "", "resp_1\n", "x" * 257, "../files", {"id": 3}):
        [found] = referenced("responses", {"previous_response_id": value})
        assert found == Reference("response", "", "previous_response_id", valid=False)


def test_requests_of_other_endpoints_and_plain_text_name_nothing() -> None:
    assert referenced("embeddings", {"input": [{"file_id": "file-1"}]}) == []
    assert referenced("chat", {"messages": [{"role": "user", "content": "file_id"}]}) == []


def test_too_many_or_too_deep_is_refused() -> None:
    many = {"input": [{"file_id": f"file-{i}"} for i in range(MAX_REFERENCES + 1)]}
    with pytest.raises(InvalidInput):
        referenced("responses", many)
    deep: Any = {"file_id": "file-1"}
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidInput):
        referenced("chat", {"messages": deep})


@pytest.mark.parametrize(
    ("family", "fields", "response", "expected"),
    [
        ("responses", {}, {"id": "resp_1", "object": "response"}, [("response", "resp_1")]),
        (
            "responses",
            {"store": True},
            {"id": "resp_1", "output": [{"type": "message", "id": "msg_1"}, {"type": "x"}, "y"]},
            [("response", "resp_1"), ("item", "msg_1")],
        ),
        ("responses", {"store": False}, {"id": "resp_1", "output": [{"id": "msg_1"}]}, []),
        ("chat", {"store": True}, {"id": "chatcmpl-1"}, [("chat_completion", "chatcmpl-1")]),
        ("chat", {}, {"id": "chatcmpl-1"}, []),
        ("chat", {"store": "true"}, {"id": "chatcmpl-1"}, []),
        (
            "chat",
            {},
            {"id": "chatcmpl-1", "choices": [{"message": {"audio": {"id": "audio_1"}}}]},
            [("audio", "audio_1")],
        ),
        ("embeddings", {}, {"id": "x"}, []),
        ("responses", {}, {"id": "resp 1"}, []),
        ("responses", {}, ["resp_1"], []),
    ],
)
def test_what_a_response_created(family: Any, fields: Any, response: Any, expected: Any) -> None:
    assert created(family, fields, response) == expected


def test_object_paths_by_method() -> None:
    assert object_route("GET", "/v1/responses/resp_1") == ObjectRoute("response", "resp_1", itself=True)
    assert object_route("DELETE", "/v1/responses/resp_1") == ObjectRoute("response", "resp_1", itself=True)
    assert object_route("POST", "/v1/responses/resp_1/cancel") == ObjectRoute("response", "resp_1")
    assert object_route("GET", "/v1/responses/resp_1/input_items") == ObjectRoute("response", "resp_1")
    assert object_route("POST", "/v1/chat/completions/c1") == ObjectRoute(
        "chat_completion", "c1", itself=True
    )
    assert object_route("GET", "/v1/chat/completions/c1/messages") == ObjectRoute("chat_completion", "c1")
    assert object_route("POST", "/v1/responses/resp_1") is None
    assert object_route("POST", "/v1/responses") is None
    assert object_route("GET", "/v1/chat/completions") is None  # the list: not served


def test_an_object_path_is_its_own_only_when_it_names_nothing_under_it() -> None:
    store = object_route("DELETE", "/v1/vector_stores/vs_1")
    assert store is not None and store.itself
    item = object_route("DELETE", "/v1/vector_stores/vs_1/files/vs_1")  # a file named as its store
    assert item is not None and (item.object_id, item.itself) == ("vs_1", False)
    assert not object_route("GET", "/v1/responses/resp_1/input_items").itself  # type: ignore[union-attr]
    assert object_route("GET", "/v1/responses/resp_1").itself  # type: ignore[union-attr]
