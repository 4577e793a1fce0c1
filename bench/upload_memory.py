"""Memory of a big file upload: ``python -m bench.upload_memory [--mb 200]``.

Starts ``taximeter serve`` (embedded, in a temporary directory, on a free
port of 127.0.0.1) in front of a small upstream of its own that reads each
upload through and counts it, writes a Batch API input file of the given
size to disk, and uploads it through the proxy with ``purpose=batch``,
streamed from disk. It samples the proxy's resident memory every 50 ms and
reports it before, at its peak and after, the growth, the time taken and
what the proxy read of the file (lines, models). Everything it started is
stopped by pid; the directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.run import rss_mb, wait_ready

_TAXIMETER = str(Path(sys.executable).with_name("taximeter"))
_KEY = "sk-bench-upstream"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_batch_file(path: Path, megabytes: int) -> int:
    """A JSONL batch input of about ``megabytes`` MB; its line count."""
    lines = 0
    target = megabytes * 1024 * 1024
    text = "Summarise the quarterly report for the board in three sentences. " * 4
    with path.open("wb") as out:
        while out.tell() < target:
            block = []
            for _ in range(1_000):
                body = {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": 200,
                }
                block.append(
                    orjson.dumps(
                        {
                            "custom_id": f"r{lines}",
                            "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": body,
                        }
                    )
                )
                lines += 1
            out.write(b"\n".join(block) + b"\n")
    return lines


async def _upstream_app() -> web.Application:
    async def files(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_chunked(1024 * 1024):  # read through, not kept
            size += len(chunk)
        return web.json_response({"id": "file-bench", "object": "file", "bytes": size, "purpose": "batch"})

    app = web.Application(client_max_size=0)
    app.router.add_post("/v1/files", files)
    return app


async def _cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        _TAXIMETER, *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode != 0:
        raise RuntimeError(f"taximeter {' '.join(args)}: {err.decode()}")
    return out.decode()


async def measure(megabytes: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="taximeter-upload-"))
    runner = web.AppRunner(await _upstream_app())
    await runner.setup()
    upstream_port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXIMETER_")}
    env |= {
        "TAXIMETER_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "TAXIMETER_UPSTREAM_API_KEY": _KEY,
        "TAXIMETER_ADMIN_TOKEN": "bench-admin",
    }
    server: asyncio.subprocess.Process | None = None
    try:
        path = workdir / "batch.jsonl"
        lines = await asyncio.to_thread(_write_batch_file, path, megabytes)
        await _cli(env, workdir, "migrate")
        await _cli(env, workdir, "clients", "add", "acme")
        key = (await _cli(env, workdir, "keys", "create", "acme")).strip()
        server = await asyncio.create_subprocess_exec(
            _TAXIMETER,
            "serve",
            "--port",
            str(port),
            cwd=workdir,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        await wait_ready(f"{base}/readyz")
        async with aiohttp.ClientSession() as http:
            before = rss_mb(server.pid)
            peak = before
            done = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_mb(server.pid))
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            started = time.perf_counter()
            with path.open("rb") as handle:
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", handle, filename="batch.jsonl", content_type="application/jsonl")
                async with http.post(
                    f"{base}/v1/files", data=form, headers={"Authorization": f"Bearer {key}"}
                ) as resp:
                    reply = await resp.json()
                    status = resp.status
            elapsed = time.perf_counter() - started
            done.set()
            await sampler
            after = rss_mb(server.pid)
            async with http.get(f"{base}/v1/files", headers={"Authorization": f"Bearer {key}"}) as resp:
                listed = await resp.json()
        if status != 200:
            raise RuntimeError(f"the upload answered {status}: {reply}")
        return {
            "file_mb": path.stat().st_size / 2**20,
            "lines": lines,
            "upstream_got_mb": reply["bytes"] / 2**20,
            "rss_before_mb": before,
            "rss_peak_mb": peak,
            "rss_after_mb": after,
            "rss_growth_mb": peak - before,
            "seconds": elapsed,
            "mb_per_s": path.stat().st_size / 2**20 / elapsed,
            "listed": len(listed["data"]),
        }
    finally:
        if server is not None and server.returncode is None:
            server.send_signal(signal.SIGTERM)  # only the process started here
            try:
                await asyncio.wait_for(server.wait(), 30)
            except TimeoutError:
                server.kill()
        await runner.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upload_memory", description=__doc__)
    parser.add_argument("--mb", type=int, default=200, help="size of the batch input file")
    args = parser.parse_args()
    for name, value in asyncio.run(measure(args.mb)).items():
        print(f"{name}: {value:,.1f}" if isinstance(value, float) else f"{name}: {value:,}")


if __name__ == "__main__":
    main()
