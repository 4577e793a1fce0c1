"""Word of a change between processes on SQLite (store/changes.py): two
processes' views of one mapped word, read without any server."""

from __future__ import annotations

from pathlib import Path

from taximeter.store.changes import FileChanges


async def test_every_other_view_hears_an_announcement_once(tmp_path: Path) -> None:
    cli, server = await FileChanges.open(tmp_path / "t.db"), await FileChanges.open(tmp_path / "t.db")
    try:
        assert not server.news()
        await cli.announce()
        assert server.news() and not server.news()  # heard once
        # The server's own change does not hide one the CLI made just before.
        await cli.announce()
        await server.announce()
        assert server.news()
        assert cli.news()
    finally:
        await cli.close()
        await server.close()
