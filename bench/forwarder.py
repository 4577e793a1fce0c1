"""The floor: a bare aiohttp forwarder (no auth, no metering, no store).

python -m bench.forwarder PORT UPSTREAM_BASE_URL [--uvloop]

With ``--uvloop`` it runs on uvloop's event loop (as ``taximeter serve`` does)
instead of asyncio's own.
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

from bench.upstream import raise_fd_limit

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[session_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with app[session_key].post(
            upstream + request.path.removeprefix("/v1"), data=body, headers=headers
        ) as up:
            response = web.StreamResponse(
                status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            )
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session)
    app.router.add_route("POST", "/v1/{tail:.*}", forward)
    return app


def main(argv: list[str]) -> None:
    raise_fd_limit()
    loop = None
    if "--uvloop" in argv[2:]:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(
        make_app(argv[1].rstrip("/")),
        host="127.0.0.1",
        port=int(argv[0]),
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
