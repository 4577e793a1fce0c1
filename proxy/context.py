"""What handlers reach through the application: one typed key, one object."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from taximeter.proxy.metering import Meter
from taximeter.proxy.routing import UpstreamRouter
from taximeter.proxy.settings import Settings

__all__ = ["SERVICES", "Services"]


@dataclass
class Services:
    settings: Settings
    meter: Meter
    router: UpstreamRouter
    session: aiohttp.ClientSession


SERVICES = web.AppKey("services", Services)
