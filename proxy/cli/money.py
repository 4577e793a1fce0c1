"""CLI commands for money terms (spec section 6c): a client's currency,
markup and allowed models, exchange rates, and credits."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Any

from taximeter.pricing.money import money_text
from taximeter.proxy.operations import Operations

__all__ = ["add_client_set", "add_money_commands", "client_set", "credits_command", "rates_command"]

_DEFAULT = "default"  # a flag's value that returns a term to the server's default


def add_client_set(clients: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    change = clients.add_parser("set", help="change a client's name, currency, markup or allowed models")
    change.add_argument("id", help="the client id")
    change.add_argument("--name", help="a new display name")
    change.add_argument(
        "--currency", help=f"what it pays in (ISO 4217, e.g. BRL; '{_DEFAULT}': the server's)"
    )
    change.add_argument("--markup", help=f"multiplier over list price, e.g. 1.25 ('{_DEFAULT}': 1)")
    change.add_argument(
        "--models",
        help=f"comma-separated models or globs it may call, e.g. 'gpt-5*,gpt-4o' ('{_DEFAULT}': all)",
    )


def add_money_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rates = sub.add_parser("rates", help="exchange rates (units per USD)").add_subparsers(
        dest="action", required=True
    )
    listing = rates.add_parser("list", help="the rate in force of each currency, and their history")
    listing.add_argument("--currency", help="only this currency")
    put = rates.add_parser("set", help="put a rate in force for calls admitted from now on")
    put.add_argument("currency", help="ISO 4217 code, e.g. BRL")
    put.add_argument("rate", help="units of the currency per USD, e.g. 5.43")

    credits = sub.add_parser("credits", help="top up a budget").add_subparsers(dest="action", required=True)
    credits.add_parser("list", help="a client's credits, newest first").add_argument(
        "client", help="the client id"
    )
    give = credits.add_parser("add", help="raise this period's cost limit and lift a limit pause")
    give.add_argument("client", help="the client id")
    give.add_argument("amount", help="in the budget currency, e.g. 100")
    give.add_argument("--note", default="", help="why (kept with the credit)")


async def client_set(ops: Operations, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    if args.currency is not None:
        body["currency"] = None if args.currency == _DEFAULT else args.currency
    if args.markup is not None:
        body["markup"] = None if args.markup == _DEFAULT else args.markup
    if args.models is not None:
        globs = [glob.strip() for glob in args.models.split(",") if glob.strip()]
        body["models_allowed"] = None if args.models == _DEFAULT else globs
    client = await ops.update_client(args.id, body)
    terms = client.terms
    allowed = "all" if terms.models_allowed is None else ",".join(terms.models_allowed)
    currency = terms.currency or ops.currency
    print(
        f"client {client.id} ({client.name}): {currency}, markup {money_text(terms.markup)}, models {allowed}"
    )
    return 0


async def rates_command(ops: Operations, args: argparse.Namespace) -> int:
    if args.action == "set":
        rate = await ops.set_rate(args.currency, {"rate": args.rate})
        print(f"{rate.currency} {money_text(rate.rate)} per USD from {rate.since:%Y-%m-%d %H:%M:%S} UTC")
        return 0
    seen: set[str] = set()
    for rate in await ops.rates(args.currency):
        mark = "in force" if rate.currency not in seen else ""
        seen.add(rate.currency)
        print(f"{rate.currency}\t{money_text(rate.rate)}\t{rate.since:%Y-%m-%d %H:%M:%S}\t{mark}".rstrip())
    if ops.currency not in seen and ops.first_rate is not None:
        print(f"{ops.currency}\t{money_text(ops.first_rate)}\t(setting)\tin force")
    return 0


async def credits_command(ops: Operations, args: argparse.Namespace) -> int:
    if args.action == "add":
        credit, state = await ops.add_credit(args.client, {"amount": args.amount, "note": args.note})
        limit = state.config.cost_limit
        print(
            f"credited {money_text(credit.amount)} {state.config.currency} to {credit.client_id}: "
            f"cost limit {money_text(limit or Decimal(0))} + {money_text(credit.amount)} this period"
            + (f" ({state.pause_reason} pause)" if state.paused else "")
        )
        return 0
    for credit in await ops.credits(args.client):
        print(f"{credit.created_at:%Y-%m-%d %H:%M}\t{money_text(credit.amount)}\t{credit.note}")
    return 0
