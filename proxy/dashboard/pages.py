"""The dashboard's templates and static files, loaded once, and rendered
into responses that no cache keeps and no other site can frame."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from taximeter.proxy.dashboard.formatting import Formatter

__all__ = ["SECURITY_HEADERS", "Pages", "load_pages", "portal_headers"]

_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}

# Pages carry a budget's figures and, once, a new key: nothing keeps them,
# frames them, or runs a script or style that did not come from here.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def portal_headers(frame_ancestors: tuple[str, ...]) -> dict[str, str]:
    """The tenant portal's headers: the dashboard's, except that the
    operator's listed origins may frame it (settings checked each is an origin)."""
    if not frame_ancestors:
        return SECURITY_HEADERS
    headers = {k: v for k, v in SECURITY_HEADERS.items() if k != "X-Frame-Options"}  # it cannot list origins
    headers["Content-Security-Policy"] = SECURITY_HEADERS["Content-Security-Policy"].replace(
        "frame-ancestors 'none'", "frame-ancestors " + " ".join(frame_ancestors)
    )
    return headers


@dataclass(frozen=True)
class Pages:
    env: jinja2.Environment
    static: dict[str, tuple[bytes, str]]  # file name -> (body, content type)

    def render(
        self,
        template: str,
        fmt: Formatter,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        here: str = "",
        **context: Any,
    ) -> web.Response:
        """``template`` in ``fmt``'s language and number format; ``here`` is
        the page's address, where its language switch leads (default: the
        current address)."""
        html = self.env.get_template(template).render(
            fmt=fmt, gettext=fmt.gettext, ngettext=fmt.ngettext, here=here, **context
        )
        return web.Response(
            text=html, status=status, content_type="text/html", headers=headers or SECURITY_HEADERS
        )

    def static_file(self, name: str) -> web.Response:
        found = self.static.get(name)
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
        return web.Response(body=body, content_type=content_type, headers=headers)


def load_pages() -> Pages:
    """Read every template and static file of the package. It reads files:
    call it off the event loop, once at start-up."""
    root = resources.files("taximeter.proxy.dashboard")
    templates = {
        item.name: item.read_text(encoding="utf-8")
        for item in root.joinpath("templates").iterdir()
        if item.name.endswith(".html")
    }
    static = {}
    for item in root.joinpath("static").iterdir():
        suffix = item.name[item.name.rfind(".") :]
        if suffix in _STATIC_TYPES:
            static[item.name] = (item.read_bytes(), _STATIC_TYPES[suffix])
    env = jinja2.Environment(
        loader=jinja2.DictLoader(templates),
        extensions=["jinja2.ext.i18n"],  # {% trans %} and _(): each render passes its language's gettext
        autoescape=True,  # every value is escaped unless marked safe (the SVG charts)
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the test, not the page
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.policies["ext.i18n.trimmed"] = True  # a message's line breaks and indents are not part of it
    return Pages(env, static)
