"""Files through taximeter (spec section 4b), with the SDK on both backends:
uploaded as they stream in (byte for byte upstream), owned by the uploader,
listed per client, free; a batch input file read once into what it asks."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from tests.support.clock import FakeClock
from tests.support.harness import Harness


def batch_lines(count: int, model: str = "gpt-4o-mini", max_tokens: int = 100) -> bytes:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": max_tokens,
            },
        }
        for i in range(count)
    ]
    return b"\n".join(orjson.dumps(line) for line in lines) + b"\n"


async def refused_unseen(proxy: Harness, call: Any) -> None:
    seen = len(proxy.upstream.received)
    with pytest.raises(openai.NotFoundError) as caught:
        await call
    assert caught.value.code == "not_found"
    assert len(proxy.upstream.received) == seen


async def test_a_file_is_relayed_whole_and_is_its_uploaders_alone(proxy: Harness) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    rival = proxy.sdk(await proxy.new_client("rival"))
    data = batch_lines(3)
    uploaded = await acme.files.create(file=("batch.jsonl", data), purpose="batch")
    kept_object, kept_bytes = proxy.upstream.files[uploaded.id]
    assert kept_bytes == data and kept_object["filename"] == "batch.jsonl"  # byte for byte
    assert (await acme.files.retrieve(uploaded.id)).bytes == len(data)
    assert (await acme.files.content(uploaded.id)).content == data
    await refused_unseen(proxy, rival.files.retrieve(uploaded.id))
    await refused_unseen(proxy, rival.files.content(uploaded.id))
    await refused_unseen(proxy, rival.files.delete(uploaded.id))
    await refused_unseen(
        proxy,
        rival.responses.create(
            model="gpt-4o",
            input=[{"role": "user", "content": [{"type": "input_file", "file_id": uploaded.id}]}],
        ),
    )
    assert await proxy.events() == []  # files are free
    await acme.files.delete(uploaded.id)
    await refused_unseen(proxy, acme.files.retrieve(uploaded.id))


async def test_each_client_lists_its_own_files(proxy: Harness, clock: FakeClock) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    rival = proxy.sdk(await proxy.new_client("rival"))
    mine = []
    for i in range(3):  # listed by when they were made
        mine.append(await acme.files.create(file=(f"f{i}.jsonl", batch_lines(1)), purpose="batch"))
        clock.advance(seconds=1)
    notes = await acme.files.create(file=("notes.txt", b"hello"), purpose="assistants")
    theirs = await rival.files.create(file=("x.jsonl", batch_lines(1)), purpose="batch")
    listed = [f.id async for f in acme.files.list()]
    assert set(listed) == {f.id for f in mine} | {notes.id} and theirs.id not in listed
    assert [f.id async for f in acme.files.list(purpose="assistants")] == [notes.id]
    first = await acme.files.list(limit=2, order="asc")
    assert [f.id for f in first.data] == [mine[0].id, mine[1].id] and first.has_more
    rest = await acme.files.list(limit=2, order="asc", after=mine[1].id)
    assert [f.id for f in rest.data] == [mine[2].id, notes.id] and not rest.has_more
    assert [f.id async for f in rival.files.list()] == [theirs.id]
    # A cursor that is another client's file shows nothing of it.
    assert (await rival.files.list(after=mine[0].id)).data == []


async def test_a_batch_input_file_is_read_once_into_what_it_asks(proxy: Harness) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    data = batch_lines(4, max_tokens=100) + batch_lines(2, model="gpt-4o", max_tokens=50) + b"not json\n"
    uploaded = await acme.files.create(file=("batch.jsonl", data), purpose="batch")
    [owned] = (await proxy.services.objects.owned_objects([uploaded.id])).values()
    assert owned.client_id == "acme" and owned.detail is not None
    read = owned.detail["batch_input"]
    assert (read["lines"], read["unreadable"], read["endpoints"]) == (7, 1, ["/v1/chat/completions"])
    assert {m: (v["lines"], v["output_tokens"]) for m, v in read["models"].items()} == {
        "gpt-4o-mini": (4, 400),
        "gpt-4o": (2, 100),
    }
    assert all(v["input_tokens"] > 0 for v in read["models"].values())
    notes = await acme.files.create(file=("notes.txt", b"hello"), purpose="assistants")
    [owned] = (await proxy.services.objects.owned_objects([notes.id])).values()
    assert owned.detail is not None and "batch_input" not in owned.detail


async def test_an_upload_too_large_or_not_a_form_is_refused(make_proxy: Any) -> None:
    proxy: Harness = await make_proxy(max_file_bytes=64 * 1024)
    acme = proxy.sdk(await proxy.new_client("acme"))
    with pytest.raises(openai.APIStatusError) as caught:
        await acme.files.create(file=("big.jsonl", batch_lines(2_000)), purpose="batch")
    assert caught.value.status_code == 413
    assert proxy.upstream.files == {} and [f async for f in acme.files.list()] == []
    key = proxy.sdk(await proxy.new_client("rival")).api_key
    async with proxy.http.post(
        f"{proxy.url}/v1/files",
        data=b"{}",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"
    boundary = "xyz"
    broken = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--{boundary}--\r\n'
    )
    async with proxy.http.post(
        f"{proxy.url}/v1/files",
        data=broken.encode(),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    ) as resp:
        assert resp.status == 400 and "'file'" in (await resp.json())["error"]["message"]
    assert proxy.upstream.files == {}


async def test_an_upload_in_parts_becomes_its_uploaders_file(proxy: Harness) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    rival = proxy.sdk(await proxy.new_client("rival"))
    data = batch_lines(5, max_tokens=30)
    upload = await acme.uploads.create(
        bytes=len(data), filename="big.jsonl", mime_type="text/jsonl", purpose="batch"
    )
    half = len(data) // 2 + 7  # a part ends mid-line: the file is read whole, in order
    first = await acme.uploads.parts.create(upload.id, data=data[:half])
    second = await acme.uploads.parts.create(upload.id, data=data[half:])
    await refused_unseen(proxy, rival.uploads.parts.create(upload.id, data=b"x"))
    await refused_unseen(proxy, rival.uploads.complete(upload.id, part_ids=[first.id]))
    await refused_unseen(proxy, rival.uploads.cancel(upload.id))
    done = await acme.uploads.complete(upload.id, part_ids=[first.id, second.id])
    assert done.file is not None and (await acme.files.content(done.file.id)).content == data
    await refused_unseen(proxy, rival.files.retrieve(done.file.id))
    [owned] = (await proxy.services.objects.owned_objects([done.file.id])).values()
    assert owned.client_id == "acme" and owned.detail is not None
    read = owned.detail["batch_input"]
    assert (read["lines"], read["unreadable"], read["models"]["gpt-4o-mini"]["output_tokens"]) == (5, 0, 150)
    assert [f.id async for f in acme.files.list()] == [done.file.id]
    assert await proxy.events() == []


async def test_a_part_past_max_file_bytes_is_refused_and_never_reaches_the_upstream(make_proxy: Any) -> None:
    proxy: Harness = await make_proxy(max_file_bytes=1024)
    acme = proxy.sdk(await proxy.new_client("acme"))
    upload = await acme.uploads.create(
        bytes=4096, filename="b.jsonl", mime_type="text/jsonl", purpose="batch"
    )
    with pytest.raises(openai.APIStatusError) as caught:
        await acme.uploads.parts.create(upload.id, data=b"x" * 2048)
    assert caught.value.status_code == 413
    assert proxy.upstream.uploads[upload.id]["parts"] == {}


async def test_an_upload_asked_for_with_too_large_a_body_is_413(make_proxy: Any) -> None:
    """The Uploads API's own JSON bodies answer 413 past max_body_bytes, as
    every body does (they were read with no answer for one too large)."""
    proxy: Harness = await make_proxy(max_body_bytes=1024)
    key = await proxy.new_client("acme")
    async with proxy.http.post(
        f"{proxy.url}/v1/uploads",
        data=b'{"filename": "' + b"x" * 4096 + b'"}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
    assert proxy.upstream.received == []
