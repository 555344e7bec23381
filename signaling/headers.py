"""Headers on every HTTP response: the page's Content-Security-Policy and its companions.

The page is plain modules and a stylesheet of its own, with no inline script or style, so
the policy can refuse everything else; the token a page may carry must not leave in a
``Referer``. Pure: the adapter passes the request's ``Host`` header.
"""

from __future__ import annotations

import re

#: What ``Server`` says: no library and no version to look vulnerabilities up by.
SERVER_NAME = "meshpeer"

#: Only the page's own modules, stylesheet and connections; images of its own, ``data:``
#: (the empty favicon) and ``blob:``; no plugins, no ``<base>``, never inside a frame.
_POLICY = (
    "default-src 'self'; connect-src {connect}; img-src 'self' data: blob:; "
    "media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

#: A ``Host`` that can stand in a source expression as it is: a name or IPv4 address and a
#: port. CSP has no syntax for IPv6 literals; anything else is never copied into a header.
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?")


def security_headers(host: str | None) -> dict[str, str]:
    """The headers for a response to a request for ``host`` (its ``Host`` header).

    The page connects to this server only: ``/config.json`` and its WebSocket on the same
    host. CSP 3's ``'self'`` covers ``ws:``/``wss:`` there, but not in every browser still in
    use (Safari before 15.4), so the socket's address is also named when ``Host`` allows.
    """
    connect = "'self'"
    if host and _HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return {
        "Server": SERVER_NAME,
        "Content-Security-Policy": _POLICY.format(connect=connect),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }
