"""A fake OpenAI-compatible upstream: a real aiohttp app with OpenAI's response
shapes (JSON, SSE, audio bytes), fixed usage figures the tests price by hand,
a record of what it received, and scripted failures."""

from __future__ import annotations

import asyncio
import base64
import email.policy
import io
import json
import re
import struct
import uuid
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from typing import Any

from aiohttp import web

# Usage the fake reports; tests compute expected costs from these and list prices.
CHAT = {"prompt": 1200, "completion": 300, "cached": 200, "reasoning": 50}
RESPONSES = {"input": 900, "output": 150, "cached": 100, "reasoning": 20}
EMBEDDING_TOKENS = 42
WHISPER_SECONDS = 95
VERBOSE_DURATION = "8.47"
TRANSCRIBE_TOKENS = {"audio": 700, "text": 20, "output": 100}
IMAGE_TOKENS = {"text": 30, "image": 0, "output": 4160}
STREAM_PIECES = ["Hel", "lo", " there", "!"]
TTS_WAV_SECONDS = 2.5
# Usage of each Realtime response: tokens in (of them audio, cached, cached audio) and out (of them audio).
REALTIME = {
    "input": 1300,
    "input_audio": 1000,
    "cached": 200,
    "cached_audio": 100,
    "output": 600,
    "output_audio": 500,
}
REALTIME_DELTAS = 5  # audio deltas each Realtime response streams before its response.done
UPSTREAM_KEY = "sk-upstream-SENTINEL-5f2c"
# Headers OpenAI sends that name the operator's account: a tenant must never see them.
ACCOUNT_HEADERS = {
    "openai-organization": "org-SENTINEL",
    "openai-project": "proj_SENTINEL",
    # The shared key's own limits: what every tenant together has left.
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999-SENTINEL",
    "x-ratelimit-reset-tokens": "6m0s-SENTINEL",
}


def wav_bytes(seconds: float, rate: int = 24_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(rate * seconds))
    return buffer.getvalue()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeUpstream:
    received: list[Received] = field(default_factory=list)
    fail_status: int | None = None  # answer every call with this error
    cut_after: int | None = None  # break off streams after this many events
    delay_s: float = 0.0
    gate: asyncio.Event | None = None  # streams wait on it after their first event
    hold: asyncio.Event | None = None  # every call, once received, waits on it before it is answered
    # A scripted reply in place of the usual one (hostile or odd upstreams).
    script: Callable[[web.Request, bytes], Awaitable[web.StreamResponse]] | None = None
    # What it stores, as the real one does: responses (unless store is false)
    # and chat completions with store true, by id; retrieved, listed and deleted.
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Uploaded files: the object, and the content's first FILE_KEPT_BYTES (a
    # big upload is read through and counted, not kept).
    files: dict[str, tuple[dict[str, Any], bytes]] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # the object, and its parts' bytes
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # Batch objects, run by run_batches
    running: dict[str, dict[str, Any]] = field(default_factory=dict)  # background responses, as they will end
    # Realtime: what each socket's client sent (parsed), and an event a
    # response waits on after its first audio delta (None: it does not wait).
    realtime_sent: list[dict[str, Any]] = field(default_factory=list)
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)  # the object, and its items
    # Vector stores: the object (its usage_bytes grows with each file added), and its files by id.
    vector_stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    realtime_hold: asyncio.Event | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition, init=False, repr=False)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/realtime", self._realtime)
        app.router.add_route("*", "/v1/{tail:.*}", self._handle)
        app.on_response_prepare.append(_account_headers)
        return app

    async def reached(self, count: int, timeout_s: float = 30.0) -> None:
        """Wait until ``count`` calls in all have reached this upstream."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.path, dict(request.headers), body))
        async with self._arrived:
            self._arrived.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if request.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}":
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        if self.fail_status is not None:
            return _error(self.fail_status, "The server had an error processing your request.", None)
        if self.script is not None:
            return await self.script(request, body)
        upload_path = _UPLOAD_PATH.fullmatch(request.path)
        if upload_path is not None:
            return await self._upload_step(request, body, upload_path.group(1), upload_path.group(2))
        file_path = _FILE_PATH.fullmatch(request.path)
        if file_path is not None:
            return self._file(request, file_path.group(1), file_path.group(2))
        conversation_path = _CONVERSATION_PATH.fullmatch(request.path)
        if conversation_path is not None:
            return self._conversation(request, body, conversation_path.group(1), conversation_path.group(2))
        store_path = _VECTOR_STORE_PATH.fullmatch(request.path)
        if store_path is not None:
            return self._vector_store(request, body, store_path.group(1), store_path.group(2))
        batch_path = _BATCH_PATH.fullmatch(request.path)
        if batch_path is not None:
            return self._batch(request, batch_path.group(1), batch_path.group(2))
        stored = _STORED_PATH.fullmatch(request.path)
        if stored is not None:
            return await self._stored_object(request, stored.group(1), stored.group(2), stored.group(3))
        handler = getattr(self, "_" + request.path.removeprefix("/v1/").replace("/", "_"), None)
        if handler is None:
            return _error(404, f"Unknown path {request.path}", "unknown_url")
        result: web.StreamResponse = await handler(request, body)
        return result

    # -- chat and completions ------------------------------------------------------

    async def _files(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method != "POST":
            return web.json_response({"object": "list", "data": [f for f, _ in self.files.values()]})
        form = await _read_upload(body, request.headers["Content-Type"])
        if form is None:
            return _error(400, "Invalid multipart body", None)
        purpose, filename, size, kept = form
        file_id = f"file-{uuid.uuid4().hex[:22]}"
        created = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": 1741600000,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = (created, kept)
        return web.json_response(created)

    async def _uploads(self, request: web.Request, body: bytes) -> web.StreamResponse:
        payload = json.loads(body)
        upload_id = f"upload_{uuid.uuid4().hex[:20]}"
        made = {
            "id": upload_id,
            "object": "upload",
            "bytes": payload["bytes"],
            "created_at": 1741600000,
            "filename": payload["filename"],
            "purpose": payload["purpose"],
            "status": "pending",
            "expires_at": 1741603600,
            "file": None,
        }
        self.uploads[upload_id] = {"object": made, "parts": {}}
        return web.json_response(made)

    async def _upload_step(
        self, request: web.Request, body: bytes, upload_id: str, step: str
    ) -> web.StreamResponse:
        upload = self.uploads.get(upload_id)
        if upload is None:
            return _error(404, f"No such Upload object: {upload_id}", None)
        made = upload["object"]
        if step == "parts":
            form = await _read_upload(body, request.headers["Content-Type"], "data")
            if form is None:
                return _error(400, "Invalid multipart body", None)
            part_id = f"part_{uuid.uuid4().hex[:20]}"
            upload["parts"][part_id] = form[3]
            return web.json_response({"id": part_id, "object": "upload.part", "upload_id": upload_id})
        if step == "cancel":
            made["status"] = "cancelled"
            return web.json_response(made)
        content = b"".join(upload["parts"][p] for p in json.loads(body)["part_ids"])
        file_id = f"file-{uuid.uuid4().hex[:22]}"
        file = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": 1741600000,
            "filename": made["filename"],
            "purpose": made["purpose"],
            "status": "processed",
        }
        self.files[file_id] = (file, content[:FILE_KEPT_BYTES])
        made.update(status="completed", file=file)
        return web.json_response(made)

    def _file(self, request: web.Request, file_id: str, tail: str | None) -> web.StreamResponse:
        found = self.files.get(file_id)
        if found is None:
            return _error(404, f"No such File object: {file_id}", None)
        if request.method == "DELETE":
            del self.files[file_id]
            return web.json_response({"id": file_id, "object": "file", "deleted": True})
        if tail == "content":
            return web.Response(body=found[1], content_type="application/octet-stream")
        return web.json_response(found[0])

    # -- conversations -------------------------------------------------------------------

    async def _conversations(self, request: web.Request, body: bytes) -> web.StreamResponse:
        payload = json.loads(body or b"{}")
        conversation_id = f"conv_{uuid.uuid4().hex[:24]}"
        made = {
            "id": conversation_id,
            "object": "conversation",
            "created_at": 1741600000,
            "metadata": payload.get("metadata") or {},
        }
        self.conversations[conversation_id] = {"object": made, "items": []}
        self._add_items(conversation_id, payload.get("items") or [])
        return web.json_response(made)

    def _add_items(self, conversation_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        added = [{**item, "id": f"msg_{uuid.uuid4().hex[:20]}", "status": "completed"} for item in items]
        self.conversations[conversation_id]["items"].extend(added)
        return added

    def _conversation(
        self, request: web.Request, body: bytes, conversation_id: str, tail: str | None
    ) -> web.StreamResponse:
        found = self.conversations.get(conversation_id)
        if found is None:
            return _error(404, f"Conversation with id '{conversation_id}' not found.", None)
        if tail is None and request.method == "DELETE":
            del self.conversations[conversation_id]
            return web.json_response(
                {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
            )
        if tail is None and request.method == "POST":
            found["object"]["metadata"] = json.loads(body).get("metadata") or {}
        if tail is None:
            return web.json_response(found["object"])
        items = found["items"]
        if request.method == "POST":
            items = self._add_items(conversation_id, json.loads(body).get("items") or [])
        return web.json_response(
            {
                "object": "list",
                "data": items,
                "has_more": False,
                "first_id": items[0]["id"] if items else None,
                "last_id": items[-1]["id"] if items else None,
            }
        )

    # -- vector stores ---------------------------------------------------------------------

    async def _vector_stores(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method != "POST":
            listed = [found["object"] for found in self.vector_stores.values()]
            return web.json_response({"object": "list", "data": listed, "has_more": False})
        payload = json.loads(body or b"{}")
        store_id = f"vs_{uuid.uuid4().hex[:24]}"
        made = {
            "id": store_id,
            "object": "vector_store",
            "created_at": 1741600000,
            "name": payload.get("name"),
            "usage_bytes": 0,
            "file_counts": {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0},
            "status": "completed",
            "expires_after": payload.get("expires_after"),
            "expires_at": None,
            "last_active_at": 1741600000,
            "metadata": payload.get("metadata") or {},
        }
        self.vector_stores[store_id] = {"object": made, "files": {}}
        for file_id in payload.get("file_ids") or []:
            self._add_to_store(store_id, file_id)
        return web.json_response(made)

    def _add_to_store(self, store_id: str, file_id: str) -> dict[str, Any]:
        found = self.vector_stores[store_id]
        size = self.files[file_id][0]["bytes"] if file_id in self.files else 0
        added = {
            "id": file_id,
            "object": "vector_store.file",
            "created_at": 1741600000,
            "usage_bytes": size,
            "vector_store_id": store_id,
            "status": "completed",
            "last_error": None,
        }
        found["files"][file_id] = added
        found["object"]["usage_bytes"] += size
        counts = found["object"]["file_counts"]
        counts["completed"] += 1
        counts["total"] += 1
        return added

    def _vector_store(
        self, request: web.Request, body: bytes, store_id: str, tail: str | None
    ) -> web.StreamResponse:
        found = self.vector_stores.get(store_id)
        if found is None:
            return _error(404, f"No vector store found with id '{store_id}'.", None)
        if tail is None and request.method == "DELETE":
            del self.vector_stores[store_id]
            return web.json_response({"id": store_id, "object": "vector_store.deleted", "deleted": True})
        if tail is None and request.method == "POST":
            found["object"]["metadata"] = json.loads(body).get("metadata") or {}
        if tail is None:
            return web.json_response(found["object"])
        if tail == "search":
            query = json.loads(body).get("query")
            page = {"object": "vector_store.search_results.page", "search_query": [query], "data": []}
            return web.json_response({**page, "has_more": False, "next_page": None})
        if tail.startswith("files/"):  # one file of the store: its attributes updated, or taken out
            added = found["files"].get(tail.removeprefix("files/"))
            if added is None:
                return _error(404, f"No file found with id '{tail.removeprefix('files/')}'.", None)
            if request.method == "DELETE":
                del found["files"][added["id"]]
                found["object"]["usage_bytes"] -= added["usage_bytes"]
                return web.json_response(
                    {"id": added["id"], "object": "vector_store.file.deleted", "deleted": True}
                )
            if request.method == "POST":
                added["attributes"] = json.loads(body).get("attributes")
            return web.json_response(added)
        if request.method == "POST":  # files: one added by its id
            file_id = json.loads(body)["file_id"]
            if file_id not in self.files:
                return _error(404, f"No file found with id '{file_id}'.", None)
            return web.json_response(self._add_to_store(store_id, file_id))
        listed = list(found["files"].values())
        return web.json_response({"object": "list", "data": listed, "has_more": False})

    # -- realtime ------------------------------------------------------------------------

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        self.received.append(Received(request.method, request.path, dict(request.headers), b""))
        if request.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}":
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        model = request.query.get("model", "gpt-realtime")
        await ws.send_json(
            {"type": "session.created", "event_id": "event_0", "session": {"id": "sess_1", "model": model}}
        )
        transcribing = False  # the user's audio is transcribed once the session asks for it
        async for msg in ws:
            if msg.type != web.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            self.realtime_sent.append(event)
            # A committed audio buffer is a turn the server answers by itself
            # (voice activity detection), as a response.create is asked for.
            asked = event.get("response") or {}
            if event.get("type") == "response.create" and asked.get("instructions") == "REJECT":
                # As when a response is already active: an error naming the event, no response.
                error = {
                    "type": "invalid_request_error",
                    "code": "conversation_already_has_active_response",
                    "message": "Conversation already has an active response in progress.",
                    "param": None,
                    "event_id": event.get("event_id"),
                }
                await ws.send_json({"type": "error", "event_id": "event_err", "error": error})
                continue
            if event.get("type") == "session.update":
                transcription = ((event["session"].get("audio") or {}).get("input") or {}).get(
                    "transcription"
                )
                transcribing = transcription is not None
            if event.get("type") == "input_audio_buffer.commit" and transcribing:
                await ws.send_json(
                    {
                        "type": "conversation.item.input_audio_transcription.completed",
                        "event_id": "event_tr",
                        "item_id": "item_user",
                        "content_index": 0,
                        "transcript": "Hello.",
                        "usage": {
                            "type": "tokens",
                            "input_tokens": TRANSCRIBE_TOKENS["audio"],
                            "input_token_details": {
                                "audio_tokens": TRANSCRIBE_TOKENS["audio"],
                                "text_tokens": 0,
                            },
                            "output_tokens": TRANSCRIBE_TOKENS["output"],
                            "total_tokens": TRANSCRIBE_TOKENS["audio"] + TRANSCRIBE_TOKENS["output"],
                        },
                    }
                )
            if event.get("type") in ("response.create", "input_audio_buffer.commit"):
                await self._realtime_response(ws)
        return ws

    async def _realtime_response(self, ws: web.WebSocketResponse) -> None:
        response_id = f"resp_{uuid.uuid4().hex[:20]}"
        started = {
            "id": response_id,
            "object": "realtime.response",
            "status": "in_progress",
            "output": [],
            "usage": None,
        }
        await ws.send_json(
            {"type": "response.created", "event_id": f"event_{response_id}_0", "response": started}
        )
        for i in range(REALTIME_DELTAS):
            delta = base64.b64encode(b"\x00\x01" * 2400).decode()  # 100 ms of pcm16 at 24 kHz
            await ws.send_json(
                {
                    "type": "response.output_audio.delta",
                    "event_id": f"event_{response_id}_{i + 1}",
                    "response_id": response_id,
                    "item_id": "item_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta,
                }
            )
            if i == 0 and self.realtime_hold is not None:
                await self.realtime_hold.wait()
        usage = {
            "total_tokens": REALTIME["input"] + REALTIME["output"],
            "input_tokens": REALTIME["input"],
            "output_tokens": REALTIME["output"],
            "input_token_details": {
                "text_tokens": REALTIME["input"] - REALTIME["input_audio"],
                "audio_tokens": REALTIME["input_audio"],
                "image_tokens": 0,
                "cached_tokens": REALTIME["cached"],
                "cached_tokens_details": {
                    "text_tokens": REALTIME["cached"] - REALTIME["cached_audio"],
                    "audio_tokens": REALTIME["cached_audio"],
                    "image_tokens": 0,
                },
            },
            "output_token_details": {
                "text_tokens": REALTIME["output"] - REALTIME["output_audio"],
                "audio_tokens": REALTIME["output_audio"],
            },
        }
        done = {**started, "status": "completed", "usage": usage}
        await ws.send_json(
            {"type": "response.done", "event_id": f"event_{response_id}_done", "response": done}
        )

    # -- batches ------------------------------------------------------------------------

    async def _batches(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method != "POST":
            return web.json_response(
                {"object": "list", "data": list(self.batches.values()), "has_more": False}
            )
        payload = json.loads(body)
        found = self.files.get(payload.get("input_file_id", ""))
        if found is None:
            return _error(400, f"Invalid input_file_id: {payload.get('input_file_id')}", None)
        lines = [line for line in found[1].splitlines() if line.strip()]
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": payload["endpoint"],
            "errors": None,
            "input_file_id": payload["input_file_id"],
            "completion_window": payload.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": 1741600000,
            "in_progress_at": None,
            "expires_at": 1741686400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": payload.get("metadata"),
        }
        return web.json_response(self.batches[batch_id])

    def _batch(self, request: web.Request, batch_id: str, tail: str | None) -> web.StreamResponse:
        batch = self.batches.get(batch_id)
        if batch is None:
            return _error(404, f"No batch found with id '{batch_id}'.", None)
        if tail == "cancel" and batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            batch.update(status="cancelling", cancelling_at=1741600100)
        return web.json_response(batch)

    def run_batches(self, completed: int | None = None, failing: frozenset[int] = frozenset()) -> None:
        """End every running batch as the real one would: the first
        ``completed`` lines (all when None) answered in an output file, the
        lines at ``failing`` positions in an error file. A batch being
        cancelled ends cancelled; any other, completed."""
        for batch in self.batches.values():
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                continue
            lines = [json.loads(x) for x in self.files[batch["input_file_id"]][1].splitlines() if x.strip()]
            done = lines if completed is None else lines[:completed]
            out, errors = [], []
            for i, line in enumerate(done):
                request_id = f"req_{uuid.uuid4().hex[:16]}"
                if i in failing:
                    body = {
                        "error": {
                            "message": "Invalid value for 'max_tokens'.",
                            "type": "invalid_request_error",
                        }
                    }
                    errors.append(
                        {
                            "id": f"batch_req_{i}",
                            "custom_id": line["custom_id"],
                            "error": None,
                            "response": {"status_code": 400, "request_id": request_id, "body": body},
                        }
                    )
                    continue
                out.append(
                    {
                        "id": f"batch_req_{i}",
                        "custom_id": line["custom_id"],
                        "error": None,
                        "response": {
                            "status_code": 200,
                            "request_id": request_id,
                            "body": _batch_line_body(line),
                        },
                    }
                )
            for name, rows in (("output_file_id", out), ("error_file_id", errors)):
                if rows:
                    content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
                    file_id = f"file-{uuid.uuid4().hex[:22]}"
                    made = {
                        "id": file_id,
                        "object": "file",
                        "bytes": len(content),
                        "created_at": 1741600000,
                        "filename": f"{batch['id']}_{name[:-8]}.jsonl",
                        "purpose": "batch_output",
                        "status": "processed",
                    }
                    self.files[file_id] = (made, content)
                    batch[name] = file_id
            status = "cancelled" if batch["status"] == "cancelling" else "completed"
            batch.update(status=status, completed_at=1741610000)
            batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(errors)}

    async def _stored_object(
        self, request: web.Request, collection: str, object_id: str, tail: str | None
    ) -> web.StreamResponse:
        found = self.stored.get(object_id)
        if found is None or not object_id.startswith("resp_" if collection == "responses" else "chatcmpl-"):
            return _error(404, f"No {collection[:-1]} found with id '{object_id}'.", None)
        if request.method == "DELETE":
            del self.stored[object_id]
            return web.json_response(
                {"id": object_id, "object": f"{found['object']}.deleted", "deleted": True}
            )
        if tail == "input_items" or tail == "messages":
            return web.json_response({"object": "list", "data": [], "has_more": False})
        if tail == "cancel":
            if object_id in self.running:  # a background response stops where it is
                del self.running[object_id]
                found.update(status="cancelled")
            return web.json_response({**found, "status": "cancelled"})
        if request.query.get("stream") == "true":  # a streamed retrieval: the events from the start
            events = [
                ("response.created", {"type": "response.created", "sequence_number": 0, "response": found}),
                (
                    "response.completed",
                    {"type": "response.completed", "sequence_number": 1, "response": found},
                ),
            ]
            return await self._sse(request, events, done=False)
        return web.json_response(found)

    def finish_background(self) -> None:
        """Every background response still running ends, completed."""
        for response_id, final in self.running.items():
            self.stored[response_id] = final
        self.running.clear()

    async def _chat_completions(self, request: web.Request, body: bytes) -> web.StreamResponse:
        payload = json.loads(body)
        if payload.get("stream"):
            include = (payload.get("stream_options") or {}).get("include_usage") is True
            return await self._stream_chat(request, payload["model"], include)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        completion = _completion(completion_id, payload["model"])
        if payload.get("store") is True:
            self.stored[completion_id] = completion
        return web.json_response(completion)

    async def _stream_chat(self, request: web.Request, model: str, include_usage: bool) -> web.StreamResponse:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": "chatcmpl-abc123",
                "object": "chat.completion.chunk",
                "created": 1741600000,
                "model": _dated(model),
                "system_fingerprint": "fp_0a1b2c",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                out["usage"] = None
            return out

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in STREAM_PIECES]
        events.append(chunk({}, "stop"))
        if include_usage:
            events.append(
                {
                    "id": "chatcmpl-abc123",
                    "object": "chat.completion.chunk",
                    "created": 1741600000,
                    "model": _dated(model),
                    "system_fingerprint": "fp_0a1b2c",
                    "choices": [],
                    "usage": _chat_usage(),
                }
            )
        return await self._sse(request, [(None, e) for e in events], done=True)

    async def _completions(self, request: web.Request, body: bytes) -> web.StreamResponse:
        payload = json.loads(body)
        return web.json_response(
            {
                "id": "cmpl-abc123",
                "object": "text_completion",
                "created": 1741600000,
                "model": payload["model"],
                "choices": [{"text": " there!", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
            }
        )

    # -- responses -----------------------------------------------------------------------

    async def _responses(self, request: web.Request, body: bytes) -> web.StreamResponse:
        payload = json.loads(body)
        previous = payload.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return _error(400, f"Previous response with id '{previous}' not found.", None)
        response = _response_object(payload["model"])
        if payload.get("background") is True:  # answered at once, queued: run by finish_background
            queued = {**response, "status": "queued", "usage": None, "output": [], "background": True}
            self.stored[response["id"]] = queued
            self.running[response["id"]] = {**response, "background": True}
            return web.json_response(queued)
        if payload.get("store") is not False:
            self.stored[response["id"]] = response
        if not payload.get("stream"):
            return web.json_response(response)
        in_progress = {**response, "status": "in_progress", "usage": None, "output": []}
        events: list[tuple[str | None, dict[str, Any]]] = [
            ("response.created", {"type": "response.created", "sequence_number": 0, "response": in_progress})
        ]
        for i, piece in enumerate(STREAM_PIECES, start=1):
            events.append(
                (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": i,
                        "item_id": "msg_abc",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": [],
                    },
                )
            )
        events.append(
            ("response.completed", {"type": "response.completed", "sequence_number": 9, "response": response})
        )
        return await self._sse(request, events, done=False)

    # -- embeddings, moderation, models --------------------------------------------------

    async def _embeddings(self, request: web.Request, body: bytes) -> web.StreamResponse:
        payload = json.loads(body)
        vector = [0.25, -0.5, 0.125]
        if payload.get("encoding_format") == "base64":
            embedding: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            embedding = vector
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
                "model": payload["model"],
                "usage": {"prompt_tokens": EMBEDDING_TOKENS, "total_tokens": EMBEDDING_TOKENS},
            }
        )

    async def _moderations(self, request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response(
            {
                "id": "modr-abc",
                "model": "omni-moderation-2024-09-26",
                "results": [
                    {
                        "flagged": False,
                        "categories": {"violence": False},
                        "category_scores": {"violence": 0.001},
                    }
                ],
            }
        )

    async def _models(self, request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"}],
            }
        )

    # -- audio ---------------------------------------------------------------------------

    async def _audio_speech(self, request: web.Request, body: bytes) -> web.StreamResponse:
        payload = json.loads(body)
        fmt = payload.get("response_format", "mp3")
        audio = wav_bytes(TTS_WAV_SECONDS) if fmt == "wav" else b"ID3\x04fake-mp3-frames" * 512
        response = web.StreamResponse(headers={"Content-Type": "audio/wav" if fmt == "wav" else "audio/mpeg"})
        await response.prepare(request)
        for start in range(0, len(audio), 4096):
            await response.write(audio[start : start + 4096])
        await response.write_eof()
        return response

    async def _audio_transcriptions(self, request: web.Request, body: bytes) -> web.StreamResponse:
        form = await _form(request, body)
        model, fmt = form.get("model", ""), form.get("response_format", "json")
        if fmt == "text":
            return web.Response(text="hello world\n", content_type="text/plain")
        if fmt == "verbose_json":
            return web.json_response(
                {
                    "task": "transcribe",
                    "language": "english",
                    "duration": float(VERBOSE_DURATION),
                    "text": "hello world",
                    "segments": [],
                }
            )
        if model.startswith("gpt-4o"):
            usage: dict[str, Any] = {
                "type": "tokens",
                "input_tokens": TRANSCRIBE_TOKENS["audio"] + TRANSCRIBE_TOKENS["text"],
                "input_token_details": {
                    "text_tokens": TRANSCRIBE_TOKENS["text"],
                    "audio_tokens": TRANSCRIBE_TOKENS["audio"],
                },
                "output_tokens": TRANSCRIBE_TOKENS["output"],
                "total_tokens": sum(TRANSCRIBE_TOKENS.values()),
            }
        else:
            usage = {"type": "duration", "seconds": WHISPER_SECONDS}
        return web.json_response({"text": "hello world", "usage": usage})

    async def _audio_translations(self, request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response({"text": "hello world"})

    # -- images --------------------------------------------------------------------------

    async def _images_generations(self, request: web.Request, body: bytes) -> web.StreamResponse:
        payload = json.loads(body)
        return web.json_response(_images(payload.get("model", "dall-e-2"), int(payload.get("n", 1))))

    async def _images_edits(self, request: web.Request, body: bytes) -> web.StreamResponse:
        form = await _form(request, body)
        return web.json_response(_images(form.get("model", "dall-e-2"), int(form.get("n", "1"))))

    # -- helpers ---------------------------------------------------------------------------

    async def _sse(
        self, request: web.Request, events: list[tuple[str | None, dict[str, Any]]], *, done: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        for i, (name, data) in enumerate(events):
            if self.cut_after is not None and i >= self.cut_after:
                assert request.transport is not None
                request.transport.close()  # the upstream breaks off mid-stream
                return response
            prefix = f"event: {name}\n" if name else ""
            await response.write(f"{prefix}data: {json.dumps(data)}\n\n".encode())
            if i == 0 and self.gate is not None:
                await self.gate.wait()
        if done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _account_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(ACCOUNT_HEADERS)  # on every reply, JSON, SSE and errors alike


def _dated(model: str) -> str:
    return {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini-2024-07-18"}.get(model, model)


def _chat_usage() -> dict[str, Any]:
    return {
        "prompt_tokens": CHAT["prompt"],
        "completion_tokens": CHAT["completion"],
        "total_tokens": CHAT["prompt"] + CHAT["completion"],
        "prompt_tokens_details": {"cached_tokens": CHAT["cached"], "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": CHAT["reasoning"],
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _batch_line_body(line: dict[str, Any]) -> dict[str, Any]:
    """The response a batch line gets: a chat completion or embeddings, as the real API answers them."""
    model = line["body"]["model"]
    if line["url"] == "/v1/embeddings":
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}],
            "model": model,
            "usage": {"prompt_tokens": EMBEDDING_TOKENS, "total_tokens": EMBEDDING_TOKENS},
        }
    return _completion(f"chatcmpl-{uuid.uuid4().hex[:24]}", model)


def _completion(completion_id: str, model: str) -> dict[str, Any]:
    """A chat completion as the real API answers one, with the fixed usage."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": 1741600000,
        "model": _dated(model),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _chat_usage(),
        "system_fingerprint": "fp_0a1b2c",
        "service_tier": "default",
    }


FILE_KEPT_BYTES = 1024 * 1024
_BATCH_PATH = re.compile(r"/v1/batches/([^/]+)(?:/(cancel))?")
_VECTOR_STORE_PATH = re.compile(r"/v1/vector_stores/([^/]+)(?:/(search|files(?:/[^/]+)?))?")
_CONVERSATION_PATH = re.compile(r"/v1/conversations/([^/]+)(?:/(items(?:/[^/]+)?))?")
_FILE_PATH = re.compile(r"/v1/files/([^/]+)(?:/(content))?")
_UPLOAD_PATH = re.compile(r"/v1/uploads/([^/]+)/(parts|complete|cancel)")


async def _read_upload(
    body: bytes, content_type: str, file_field: str = "file"
) -> tuple[str, str, int, bytes] | None:
    """purpose, filename, size and the first FILE_KEPT_BYTES of a file upload
    (read by the standard library's MIME parser, not the proxy's)."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return None
    fields: dict[str, str] = {}
    upload: tuple[str, bytes] | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        content = part.get_payload(decode=True)
        if not isinstance(content, bytes):
            return None
        if name == file_field:
            upload = (part.get_filename() or "", content)
        elif isinstance(name, str):
            fields[name] = content.decode()
    if upload is None:
        return None
    return fields.get("purpose", ""), upload[0], len(upload[1]), upload[1][:FILE_KEPT_BYTES]


_STORED_PATH = re.compile(r"/v1/(responses|chat/completions)/([^/]+)(?:/(input_items|cancel|messages))?")


def _response_object(model: str) -> dict[str, Any]:
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": 1741600000,
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_abc",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello there!", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": RESPONSES["input"],
            "input_tokens_details": {"cached_tokens": RESPONSES["cached"]},
            "output_tokens": RESPONSES["output"],
            "output_tokens_details": {"reasoning_tokens": RESPONSES["reasoning"]},
            "total_tokens": RESPONSES["input"] + RESPONSES["output"],
        },
    }


def _images(model: str, n: int) -> dict[str, Any]:
    if model.startswith("gpt-image"):
        return {
            "created": 1741600000,
            "data": [{"b64_json": base64.b64encode(b"\x89PNG fake").decode()} for _ in range(n)],
            "usage": {
                "total_tokens": sum(IMAGE_TOKENS.values()),
                "input_tokens": IMAGE_TOKENS["text"] + IMAGE_TOKENS["image"],
                "output_tokens": IMAGE_TOKENS["output"],
                "input_tokens_details": {
                    "text_tokens": IMAGE_TOKENS["text"],
                    "image_tokens": IMAGE_TOKENS["image"],
                },
            },
        }
    return {
        "created": 1741600000,
        "data": [{"url": "https://example.invalid/img.png", "revised_prompt": "a cat"} for _ in range(n)],
    }


async def _form(request: web.Request, body: bytes) -> dict[str, str]:
    from taximeter.proxy.gateway.forms import parse_form

    return parse_form(request.headers["Content-Type"], body).fields


def _error(status: int, message: str, code: str | None) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error" if status < 500 else "server_error",
                "param": None,
                "code": code,
            }
        },
        status=status,
    )
