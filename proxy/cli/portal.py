"""``taximeter portal-link CLIENT [--expires 24h] [--revoke]``: a signed,
expiring link to a client's read-only portal, or every link revoked."""

from __future__ import annotations

import argparse
import re
import sys

from taximeter.pricing.times import rfc3339
from taximeter.proxy.operations import Operations
from taximeter.proxy.settings import Settings

__all__ = ["add_portal_command", "link_base", "portal_command", "seconds_of"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")


def seconds_of(text: str) -> int:
    """A duration as typed ("90s", "30m", "24h", "7d"; bare digits are seconds)."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 24h, 7d or 3600")
    return int(found.group(1)) * _UNITS[found.group(2) or "s"]


def link_base(settings: Settings) -> str:
    """Where links point: ``public_url``, else the address the proxy listens on."""
    return settings.public_url or f"http://{settings.host}:{settings.port}"


def add_portal_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    link = sub.add_parser(
        "portal-link",
        help="a signed, expiring link to a client's read-only portal",
        description=(
            "Print a link to CLIENT's portal: its budget, limits, usage and latest calls, read only. "
            "Links point at public_url (TAXIMETER_PUBLIC_URL), else at host:port."
        ),
    )
    link.add_argument("client", help="the client id")
    link.add_argument(
        "--expires",
        type=seconds_of,
        default=24 * 3600,
        metavar="DURATION",
        help="how long the link works: 30m, 24h (default), 7d, or seconds",
    )
    link.add_argument(
        "--revoke", action="store_true", help="revoke every link of the client made so far instead"
    )


async def portal_command(ops: Operations, args: argparse.Namespace) -> int:
    if args.revoke:
        await ops.revoke_portal_links(args.client)
        print(f"revoked every portal link of {args.client}")
        return 0
    url, expires_at = await ops.portal_link(args.client, {"expires_in_s": args.expires}, args.link_base)
    if not args.public_url_set:
        print(
            "taximeter: public_url is not set, so the link points at this server's own address; "
            "set TAXIMETER_PUBLIC_URL to the one clients reach it at",
            file=sys.stderr,
        )
    print(url)
    print(f"expires {rfc3339(expires_at)}", flush=True)
    return 0
