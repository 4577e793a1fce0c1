"""The ``taximeter`` command: run the proxy and manage clients, keys, budgets.

Management commands work on the configured store directly (and refresh the
Redis gate, when there is one), so they need no running proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from taximeter.pricing import budgets
from taximeter.pricing.catalog import CatalogError, load_catalog, problems, warnings
from taximeter.pricing.models import BudgetState
from taximeter.pricing.money import from_nanos, money_text
from taximeter.proxy.cli.apply import apply_file
from taximeter.proxy.cli.limits import add_limit_commands, limits_command
from taximeter.proxy.cli.money import (
    add_client_set,
    add_money_commands,
    client_set,
    credits_command,
    rates_command,
)
from taximeter.proxy.cli.portal import add_portal_command, link_base, portal_command
from taximeter.proxy.cli.startup import describe_store
from taximeter.proxy.errors import TaximeterError
from taximeter.proxy.gateway.upstreams import Upstreams
from taximeter.proxy.logs import configure_logging
from taximeter.proxy.operations import GROUPINGS, Operations
from taximeter.proxy.settings import ConfigError, Settings, load_settings
from taximeter.store.base import Gate, StoreUnavailable
from taximeter.store.changes import Changes, NoChanges, open_changes
from taximeter.store.factory import open_gate, open_store

__all__ = ["main"]

_COLORS = {"ok": "32", "warning": "33", "critical": "38;5;208", "exceeded": "31"}
_BAR = 24


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``taximeter usage acme | head``): not an error.
        # Later writes (at exit) go nowhere instead of raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config,
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            workers=getattr(args, "workers", None),
        )
    except ConfigError as exc:
        print(f"taximeter: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    if args.command == "serve":
        from taximeter.proxy.cli.serve import serve

        return serve(settings)
    if args.command != "pricing" and not _database_named(settings, args):
        return 2
    try:
        return asyncio.run(_manage(settings, args))
    except ConfigError as exc:
        print(f"taximeter: {exc}", file=sys.stderr)
        return 2
    except (TaximeterError, CatalogError) as exc:
        print(f"taximeter: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"taximeter: store unavailable: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taximeter", description="Metering and budget proxy for OpenAI APIs."
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (or TAXIMETER_CONFIG)")
    parser.add_argument(
        "--create",
        action="store_true",
        help="create the SQLite database if it is missing (migrate always does)",
    )
    parser.add_argument("--version", action="version", version=f"taximeter {package_version('taximeter')}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML settings file")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8787)")
    serve.add_argument("--workers", type=int, help="processes sharing the port (more than 1 needs Redis)")

    migrate = sub.add_parser("migrate", help="create or update the database schema")
    migrate.add_argument(
        "--rebuild-totals",
        action="store_true",
        help="sum the daily totals reports read again from the events (once after a rolling "
        "upgrade from a version without them)",
    )
    # In the order `taximeter --help` lists them.
    _add_client_commands(sub)
    _add_budget_commands(sub)
    add_limit_commands(sub)
    add_money_commands(sub)
    add_portal_command(sub)
    _add_usage_command(sub)
    apply = sub.add_parser("apply", help="create or update the clients and budgets an ops file declares")
    apply.add_argument("file", type=Path, help="the TOML ops file")
    apply.add_argument("--dry-run", action="store_true", help="print the changes, make none")
    _add_pricing_commands(sub)
    return parser


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    clients = sub.add_parser("clients", help="manage clients").add_subparsers(dest="action", required=True)
    add = clients.add_parser("add", help="add a client")
    add.add_argument("id", help="its id: lowercase letters, digits, - and _")
    add.add_argument("--name", help="a display name (default: the id)")
    clients.add_parser("list", help="list the clients")
    add_client_set(clients)

    keys = sub.add_parser("keys", help="manage virtual keys").add_subparsers(dest="action", required=True)
    keys.add_parser("create", help="issue a key (printed once)").add_argument("client", help="the client id")
    keys.add_parser("list", help="list a client's keys").add_argument("client", help="the client id")
    keys.add_parser("revoke", help="revoke a key").add_argument("prefix", help="the key's prefix, as listed")


_BUDGET_ACTIONS = {
    "show": "a client's budget",
    "reset": "start the budget's count again now",
    "pause": "refuse the client's calls until resumed",
    "resume": "lift a pause",
    "delete": "remove the budget (calls are still metered)",
}


def _add_budget_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bud = sub.add_parser("budgets", help="manage budgets").add_subparsers(dest="action", required=True)
    put = bud.add_parser("set", help="set a client's budget")
    put.add_argument("client", help="the client id")
    put.add_argument(
        "--mode", required=True, choices=["tokens", "cost", "brl", "both"], help="what it limits"
    )
    put.add_argument("--tokens", type=int, help="token limit per period")
    put.add_argument("--cost", help="cost limit per period, in the budget currency (e.g. 500)")
    put.add_argument("--period", default="monthly", choices=list(budgets.PERIODS), help="when it resets")
    put.add_argument("--timezone", help="where its day starts (default: the timezone setting)")
    put.add_argument("--no-pause", action="store_true", help="alert at the limit but never refuse calls")
    put.add_argument("--alerts", help="comma-separated fractions, e.g. 0.8,0.9,1.0")
    bud.add_parser("list", help="every budget, a bar per metric")
    for action, said in _BUDGET_ACTIONS.items():
        bud.add_parser(action, help=said).add_argument("client", help="the client id")


def _add_usage_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = sub.add_parser("usage", help="usage report of a client")
    usage.add_argument("client", help="the client id")
    usage.add_argument("--by", default="api_type", choices=list(GROUPINGS), help="how rows are grouped")
    usage.add_argument("--from", dest="start", help="first day or time (default: 30 days ago)")
    usage.add_argument("--to", dest="end", help="last day, included, or time (default: now)")


def _add_pricing_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pricing = sub.add_parser("pricing", help="inspect the price catalog").add_subparsers(
        dest="action", required=True
    )
    show = pricing.add_parser("show", help="what a model name resolves to, every rate, and its catalog")
    show.add_argument("model", help="a model name, as a client would send it")
    show.add_argument("--upstream", help="price it at this upstream's provider (default: the one serving it)")
    check = pricing.add_parser("check", help="validate the catalog (or FILE over the shipped one)")
    check.add_argument("file", nargs="?", type=Path, help="a pricing file to check over the others")


async def _manage(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "pricing":
        return _pricing(settings, args)
    store = await open_store(settings.database_url)
    gate = open_gate(
        settings.redis_url,
        prefix=settings.redis_prefix,
        refresh_s=settings.gate_refresh_s,
        redis_cluster=settings.redis_cluster,
    )
    changes: Changes = NoChanges()
    try:
        await store.migrate()
        if args.command == "migrate":
            print(f"schema up to date ({args.database})")
            if args.rebuild_totals:
                await store.rebuild_daily_totals()
                print("daily totals summed again from the events")
            return 0
        changes = await open_changes(settings.database_url)  # running proxies hear of what this changes
        ops = Operations(
            store,
            timezone=settings.timezone,
            currency=settings.currency,
            on_budget_change=_gate_refresher(gate),
            first_rate=settings.exchange_rate,
            announce=changes.announce,
            ledger_retention_months=settings.ledger_retention_months,
        )
        handler: Callable[[Operations, argparse.Namespace], Awaitable[int]] = _COMMANDS[args.command]
        args.link_base = link_base(settings)  # where a portal link points
        args.public_url_set = settings.public_url is not None
        return await handler(ops, args)
    finally:
        await changes.close()
        await gate.close()
        await store.close()


def _database_named(settings: Settings, args: argparse.Namespace) -> bool:
    """Say which database a command uses; False (after saying why) when it
    would create a SQLite file nobody asked for."""
    missing = _missing_sqlite_file(settings.database_url)
    if missing is not None and args.command != "migrate" and not args.create:
        print(
            f"taximeter: no database at {missing}: run this where the proxy runs, set "
            "TAXIMETER_DATABASE_URL, or create one with `taximeter migrate` (or --create)",
            file=sys.stderr,
        )
        return False
    args.database = describe_store(settings.database_url)
    print(f"taximeter: database {args.database}", file=sys.stderr)
    return True


def _missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names, when it does not exist yet."""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    return None if path.exists() else path.resolve()


def _gate_refresher(gate: Gate) -> Callable[[str, BudgetState | None, datetime], Awaitable[None]]:
    async def refresh(client_id: str, state: BudgetState | None, now: datetime) -> None:
        # Reaches running proxies through Redis; an in-process gate here is this
        # command's own (running proxies drop theirs when they hear of the change).
        await gate.load(client_id, state, now)

    return refresh


async def _clients(ops: Operations, args: argparse.Namespace) -> int:
    if args.action == "set":
        return await client_set(ops, args)
    if args.action == "add":
        client = await ops.create_client(args.id, args.name)
        print(f"client {client.id} ({client.name}) created")
    else:
        for client in await ops.clients():
            print(f"{client.id}\t{client.name}\t{client.created_at:%Y-%m-%d}")
    return 0


async def _keys(ops: Operations, args: argparse.Namespace) -> int:
    if args.action == "create":
        secret, key = await ops.create_key(args.client)
        print(secret)
        print(f"prefix {key.prefix}: store this key now, it is not shown again", file=sys.stderr)
    elif args.action == "list":
        await ops.client(args.client)
        for key in await ops.keys(args.client):
            print(f"{key.prefix}\t{'revoked' if key.revoked else 'active'}\t{key.created_at:%Y-%m-%d %H:%M}")
    else:
        key = await ops.revoke_key(args.prefix)
        print(f"key {key.prefix} revoked")
    return 0


async def _budgets(ops: Operations, args: argparse.Namespace) -> int:
    if args.action == "set":
        state = await ops.put_budget(args.client, _budget_body(args))
    elif args.action == "list":
        for state in await ops.budgets():
            print(_bars(state))
        return 0
    elif args.action == "show":
        print(json.dumps(await ops.status_json(await ops.budget(args.client)), indent=2))
        return 0
    elif args.action == "delete":
        await ops.delete_budget(args.client)
        print(f"budget of {args.client} deleted")
        return 0
    else:
        state = await ops.change_budget(args.client, args.action)
    print(_bars(state))
    return 0


def _budget_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"mode": args.mode, "period": args.period, "pause_at_limit": not args.no_pause}
    if args.tokens is not None:
        body["token_limit"] = args.tokens
    if args.cost is not None:
        body["cost_limit"] = args.cost
    if args.timezone:
        body["timezone"] = args.timezone
    if args.alerts:
        body["alert_thresholds"] = [a.strip() for a in args.alerts.split(",") if a.strip()]
    return body


def _bars(state: BudgetState) -> str:
    """One line per active metric, each a bar coloured by the budget's level."""
    color = _COLORS[budgets.level(state)] if _colored() else ""
    tokens_pct, cost_pct = budgets.percents(state)
    config = state.config
    lines = [
        f"{config.client_id}  {config.mode}/{config.period}  {budgets.level(state)}"
        + (f"  PAUSED ({state.pause_reason})" if state.paused else "")
    ]
    if tokens_pct is not None:
        lines.append(_bar("tokens", tokens_pct, f"{state.tokens_used:,} / {config.token_limit:,}", color))
    if cost_pct is not None and config.cost_limit is not None:
        used, limit = money_text(from_nanos(state.cost_used_nanos)), money_text(config.cost_limit)
        lines.append(_bar("cost", cost_pct, f"{used} / {limit} {config.currency}", color))
    return "\n".join(lines)


def _colored() -> bool:
    """Colour on a terminal, unless NO_COLOR is set (no-color.org); FORCE_COLOR forces it."""
    if os.environ.get("FORCE_COLOR"):
        return True
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _bar(label: str, percent: float, figures: str, color: str) -> str:
    filled = min(_BAR, round(_BAR * percent / 100))
    bar = "█" * filled + "░" * (_BAR - filled)
    if color:
        bar = f"\x1b[{color}m{bar}\x1b[0m"
    return f"  {label:<7}{bar} {percent:6.1f}%  {figures}"


async def _usage(ops: Operations, args: argparse.Namespace) -> int:
    await ops.client(args.client)
    _, _, rows = await ops.usage_report(args.client, args.start, args.end, args.by)
    print(f"{args.by:<24}{'requests':>10}{'input':>12}{'output':>12}{'cost_usd':>14}{'cost':>14}  currency")
    for r in rows:
        print(
            f"{r.key:<24}{r.requests:>10}{r.input_tokens:>12}{r.output_tokens:>12}"
            f"{money_text(r.cost_usd):>14}{money_text(r.cost):>14}  {r.currency}"
        )
    return 0


def _pricing(settings: Settings, args: argparse.Namespace) -> int:
    files = [*settings.pricing_files, *([args.file] if getattr(args, "file", None) else [])]
    catalog = load_catalog(*files, today=datetime.now(UTC).date())
    if args.action == "check":
        found = problems(catalog)
        for problem in found:
            print(f"taximeter: {problem}", file=sys.stderr)
        notes = warnings(catalog, datetime.now(UTC).date())
        for note in notes:
            print(f"taximeter: warning: {note}", file=sys.stderr)
        print(f"{len(catalog)} models checked, {len(found)} problems, {len(notes)} warnings")
        return 1 if found else 0
    router = Upstreams(settings.resolved_upstreams(), catalog.provider_for)
    chosen = router.named(args.upstream) if args.upstream else router.pick(args.model)
    if chosen is None:
        print(f"taximeter: no upstream named {args.upstream!r}", file=sys.stderr)
        return 1
    provider = chosen.provider
    price = catalog.resolve(args.model, provider)
    if price is None:
        print(f"taximeter: no {provider} price for model {args.model!r}", file=sys.stderr)
        return 1
    print(json.dumps(price.as_json(), indent=2))
    return 0


async def _apply(ops: Operations, args: argparse.Namespace) -> int:
    changes = await apply_file(ops, args.file, dry_run=args.dry_run)
    for change in changes:
        print(("would " if args.dry_run else "") + change)
    if not changes:
        print("no changes")
    return 0


_COMMANDS: dict[str, Callable[[Operations, argparse.Namespace], Awaitable[int]]] = {
    "apply": _apply,
    "clients": _clients,
    "keys": _keys,
    "budgets": _budgets,
    "usage": _usage,
    "limits": limits_command,
    "rates": rates_command,
    "credits": credits_command,
    "portal-link": portal_command,
}
