"""Tenants kept apart on the operator's shared upstream key (spec section 4b),
through the SDK on both backends: an object a client creates (a stored
response, a stored chat completion) is its own; another client naming it -
in a path or in a body - gets 404 and the upstream never sees the request."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.harness import Harness

MESSAGES = [{"role": "user", "content": "Hi"}]


async def two_tenants(proxy: Harness) -> tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]:
    return proxy.sdk(await proxy.new_client("acme")), proxy.sdk(await proxy.new_client("rival"))


async def refused_unseen(proxy: Harness, call: Any) -> openai.APIStatusError:
    """``call`` answers 404 ``not_found`` without reaching the upstream."""
    seen = len(proxy.upstream.received)
    with pytest.raises(openai.NotFoundError) as caught:
        await call
    assert caught.value.code == "not_found"
    assert len(proxy.upstream.received) == seen  # the upstream never saw it
    return caught.value


async def test_a_stored_response_is_its_creators_alone(proxy: Harness) -> None:
    acme, rival = await two_tenants(proxy)
    mine = await acme.responses.create(model="gpt-4o", input="Hi")
    assert (await acme.responses.retrieve(mine.id)).id == mine.id
    await acme.responses.input_items.list(mine.id)
    # The rival knows the id (it leaks in logs, screenshots, guesses): nothing.
    error = await refused_unseen(proxy, rival.responses.retrieve(mine.id))
    assert mine.id in error.message
    await refused_unseen(proxy, rival.responses.input_items.list(mine.id))
    await refused_unseen(proxy, rival.responses.delete(mine.id))
    await refused_unseen(
        proxy, rival.responses.create(model="gpt-4o", input="x", previous_response_id=mine.id)
    )
    # Its creator continues it; the retrievals were free.
    follow = await acme.responses.create(model="gpt-4o", input="And?", previous_response_id=mine.id)
    assert [e["request_id"] for e in await proxy.events("acme")] and len(await proxy.events("acme")) == 2
    assert await proxy.events("rival") == []
    await acme.responses.delete(follow.id)
    await refused_unseen(proxy, acme.responses.retrieve(follow.id))  # gone: not asked again


async def test_output_items_passed_back_are_their_creators_alone(proxy: Harness) -> None:
    acme, rival = await two_tenants(proxy)
    first = await acme.responses.create(model="gpt-4o", input="Hi")
    [item] = [o.model_dump(exclude_none=True) for o in first.output]
    # The usual way to carry a conversation on by hand: the output goes back as input.
    await acme.responses.create(model="gpt-4o", input=[item, {"role": "user", "content": "And?"}])
    await acme.responses.create(model="gpt-4o", input=[{"type": "item_reference", "id": item["id"]}])
    await refused_unseen(proxy, rival.responses.create(model="gpt-4o", input=[item]))
    await refused_unseen(
        proxy, rival.responses.create(model="gpt-4o", input=[{"type": "item_reference", "id": item["id"]}])
    )


async def test_a_streamed_response_is_owned_before_its_last_event(proxy: Harness) -> None:
    acme, rival = await two_tenants(proxy)
    stream = await acme.responses.create(model="gpt-4o", input="Hi", stream=True)
    created = [event.response.id async for event in stream if event.type == "response.completed"]
    assert (await acme.responses.retrieve(created[0])).id == created[0]
    await refused_unseen(proxy, rival.responses.retrieve(created[0]))


async def test_an_unstored_response_and_an_unknown_id_are_not_found(proxy: Harness) -> None:
    acme, _ = await two_tenants(proxy)
    unstored = await acme.responses.create(model="gpt-4o", input="Hi", store=False)
    await refused_unseen(proxy, acme.responses.retrieve(unstored.id))
    await refused_unseen(proxy, acme.responses.retrieve("resp_made_up"))
    await refused_unseen(
        proxy, acme.responses.create(model="gpt-4o", input="x", previous_response_id="resp_made_up")
    )


async def test_a_stored_chat_completion_is_its_creators_alone(proxy: Harness) -> None:
    acme, rival = await two_tenants(proxy)
    stored = await acme.chat.completions.create(model="gpt-4o", messages=MESSAGES, store=True)  # type: ignore[arg-type]
    assert (await acme.chat.completions.retrieve(stored.id)).id == stored.id
    await acme.chat.completions.messages.list(stored.id)
    await refused_unseen(proxy, rival.chat.completions.retrieve(stored.id))
    await refused_unseen(proxy, rival.chat.completions.update(stored.id, metadata={"k": "v"}))
    await refused_unseen(proxy, rival.chat.completions.delete(stored.id))
    unstored = await acme.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    await refused_unseen(proxy, acme.chat.completions.retrieve(unstored.id))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"conversation": "conv_not_made_here"}, "conversation"),
        ({"conversation": {"id": "conv_not_made_here"}}, "conversation"),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_file", "file_id": "file-operators-own"}]}
                ]
            },
            "input",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_of_someone"}]}, "input"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_someone"]}]}, "tools"),
        ({"tools": [{"type": "code_interpreter", "container": "cntr_someone"}]}, "tools"),
        (
            {"tools": [{"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["file-x"]}}]},
            "tools",
        ),
        ({"previous_response_id": 12}, "previous_response_id"),
        (
            {"prompt": {"id": "pmpt_1", "variables": {"doc": {"type": "input_file", "file_id": "file-x"}}}},
            "prompt",
        ),
        ({"tools": [{"type": "image_generation", "input_image_mask": {"file_id": "file-x"}}]}, "tools"),
        ({"input": [{"type": "reasoning", "id": "rs_someone", "summary": []}]}, "input"),
    ],
)
async def test_objects_taximeter_never_saw_are_not_found(
    proxy: Harness, fields: dict[str, Any], param: str
) -> None:
    acme, _ = await two_tenants(proxy)
    body = {"input": "Hi", **fields}
    error = await refused_unseen(proxy, acme.responses.create(model="gpt-4o", **body))
    assert isinstance(error.body, dict) and error.body["param"] == param
    assert await proxy.events("acme") == []  # refused before admission: nothing charged


async def test_a_file_in_a_chat_message_is_checked_too(proxy: Harness) -> None:
    acme, _ = await two_tenants(proxy)
    message = {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}
    await refused_unseen(proxy, acme.chat.completions.create(model="gpt-4o", messages=[message]))  # type: ignore[list-item]


async def test_an_earlier_audio_reply_is_named_only_by_its_client(proxy: Harness) -> None:
    acme, _ = await two_tenants(proxy)
    messages = [{"role": "assistant", "audio": {"id": "audio_someone"}}, {"role": "user", "content": "Hi"}]
    await refused_unseen(proxy, acme.chat.completions.create(model="gpt-4o", messages=messages))  # type: ignore[arg-type]


async def test_an_input_nested_past_any_real_one_is_refused(proxy: Harness) -> None:
    acme, _ = await two_tenants(proxy)
    nested: Any = {"file_id": "file-deep"}
    for _ in range(40):
        nested = {"content": [nested]}
    seen = len(proxy.upstream.received)
    with pytest.raises(openai.BadRequestError) as caught:
        await acme.responses.create(model="gpt-4o", input=[nested])
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "input"
    assert len(proxy.upstream.received) == seen


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/realtime/client_secrets"),  # a browser's own socket: nothing to meter it by
        ("POST", "/v1/realtime/calls"),
        ("POST", "/v1/containers"),
        ("GET", "/v1/chat/completions"),  # the list of every tenant's stored completions
    ],
)
async def test_what_cannot_be_kept_apart_or_metered_yet_is_not_served(
    proxy: Harness, method: str, path: str
) -> None:
    key = await proxy.new_client("acme")
    async with proxy.http.request(
        method, f"{proxy.url}{path}", json={}, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (404, "endpoint_not_metered")
    assert proxy.upstream.received == []


async def test_a_conversation_and_its_items_are_their_makers_alone(proxy: Harness) -> None:
    acme, rival = await two_tenants(proxy)
    hello = [{"type": "message", "role": "user", "content": "Hello"}]
    conversation = await acme.conversations.create(items=hello, metadata={"topic": "demo"})
    assert (await acme.conversations.retrieve(conversation.id)).metadata == {"topic": "demo"}
    await refused_unseen(proxy, rival.conversations.retrieve(conversation.id))
    await refused_unseen(proxy, rival.conversations.update(conversation.id, metadata={"x": "y"}))
    await refused_unseen(proxy, rival.conversations.delete(conversation.id))
    await refused_unseen(proxy, rival.conversations.items.list(conversation.id))
    await refused_unseen(proxy, rival.conversations.items.create(conversation.id, items=hello))
    await refused_unseen(
        proxy, rival.responses.create(model="gpt-4o", input="Hi", conversation=conversation.id)
    )
    added = await acme.conversations.items.create(conversation.id, items=hello)
    [item] = added.data
    reference = [{"type": "item_reference", "id": item.id}]
    await acme.responses.create(model="gpt-4o", input=reference)  # an item it added is its own
    await refused_unseen(proxy, rival.responses.create(model="gpt-4o", input=reference))
    # What an item names must be the caller's too.
    theirs = await rival.files.create(file=("notes.txt", b"secret"), purpose="user_data")
    named = [{"type": "message", "role": "user", "content": [{"type": "input_file", "file_id": theirs.id}]}]
    await refused_unseen(proxy, acme.conversations.items.create(conversation.id, items=named))
    await refused_unseen(proxy, acme.conversations.create(items=named))
    # Deleting an item leaves the conversation its maker's; deleting it forgets it.
    await acme.conversations.items.delete(item.id, conversation_id=conversation.id)
    assert (await acme.conversations.retrieve(conversation.id)).id == conversation.id
    await acme.conversations.delete(conversation.id)
    await refused_unseen(proxy, acme.conversations.retrieve(conversation.id))
    assert len(await proxy.events("acme")) == 1  # only the response costs: conversations are free
