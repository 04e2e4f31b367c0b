"""The rule for a web link a report may follow: a known issue's ticket.

One home for it, at the bottom of the tree, because both sides of a boundary ask:
the catalogue loader refuses a ``ticket`` that breaks it (with file, line and key),
and the HTML report asks again before it makes the ticket a link, since the ticket
it renders comes from a results.json, which is untrusted once written.

A web link here is deliberately narrow: ``http``/``https`` with a host, no user
name or password (``https://trusted@evil.example`` reads as one site and opens
another), printable ASCII without spaces, quotes, angle brackets or backslashes
(browsers read ``https:\\\\evil`` as ``https://evil``), and bounded. An address
with other characters is written percent-encoded.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MAX_URL = 2000  # characters: far above a ticket's address, far below harm
WEB_SCHEMES = ("http", "https")
# Printable ASCII but space and " < > \ ^ ` { | } (RFC 3986 never leaves them bare).
_URL_CHARACTERS = re.compile(r"[!#-;=?-\[\]_a-z~]+")  # no IGNORECASE: it takes U+212A for k


def web_url_problem(value: object) -> str | None:
    """Why ``value`` is not a web link a report may follow, or None."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string (an http or https URL)"
    if len(value) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    if not _URL_CHARACTERS.fullmatch(value):
        return ("must be printable ASCII without spaces, quotes, angle brackets or "
                "backslashes (percent-encode the rest)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as err:
        return f"not a URL ({err})"
    if parts.scheme.lower() not in WEB_SCHEMES:
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host (https://host/...)"
    if "@" in parts.netloc:
        return "must not carry a user name or password"
    return None


def is_web_url(value: object) -> bool:
    """Whether ``value`` passes :func:`web_url_problem`."""
    return web_url_problem(value) is None
