"""``taximeter limits set CLIENT FILE | show CLIENT [--end-user U]``: a
client's limits beside its budget (spec section 6b), declared in TOML as
``[[limits]]`` tables with the fields ``PUT /admin/clients/{id}/limits`` takes."""

from __future__ import annotations

import argparse
import asyncio
import tomllib
from pathlib import Path
from typing import Any

from taximeter.proxy.errors import InvalidInput
from taximeter.proxy.operations import Operations

__all__ = ["add_limit_commands", "limits_command"]


def add_limit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    limits = sub.add_parser("limits", help="limits beside a client's budget").add_subparsers(
        dest="action", required=True
    )
    put = limits.add_parser("set", help="replace a client's limits with those a TOML file declares")
    put.add_argument("client", help="the client id")
    put.add_argument("file", type=Path, help="a TOML file of [[limits]] tables (none: no limits)")
    show = limits.add_parser("show", help="each limit with its use in the current window")
    show.add_argument("client", help="the client id")
    show.add_argument("--end-user", help="for the limits per end user: this end user's counters")


def _read(path: Path) -> Any:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc
    return {"limits": data.get("limits", [])}


async def limits_command(ops: Operations, args: argparse.Namespace) -> int:
    if args.action == "set":
        shown = await ops.set_limits(args.client, await asyncio.to_thread(_read, args.file))
        print(f"{len(shown)} limit(s) set for {args.client}")
    else:
        shown = await ops.limits(args.client, args.end_user)
    for limit in shown:
        scope = "" if limit["per"] == "client" else " per end user"
        models = "" if limit["models"] is None else " on " + ",".join(limit["models"])
        resets = limit["resets_at"] or "never"
        use = f"{limit['metric']} {limit['used']}/{limit['limit']} ({limit['window']}{scope}{models})"
        print(f"{limit['name']}\t{use}\treserved {limit['reserved']}\tresets {resets}")
    return 0
