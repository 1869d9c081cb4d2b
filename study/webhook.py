"""POST a JSON body to a URL that is a secret as a whole (a webhook's token is its path).

`post` waits a bounded time in all (the name's lookup included: the request runs in a
thread that is given up on), follows no redirect (the body and a login go to the URL given,
nowhere else), sends a `user:password@` of the URL as HTTP Basic auth, and returns why it
failed in words that hold no secret, never raising. `shown` is all a line may say of such a
URL: `scheme://host/…`. Standard library only (urllib.request). Used by study.notify.
"""

from __future__ import annotations

import base64
import socket
import threading
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from study import secrets


def shown(url: str) -> str:
    """`scheme://host/…`: all a line may show of the URL."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(a URL, not shown)"
    if not parts.scheme or not host or not host.isprintable() or " " in host:
        return "(a URL without scheme or host, not shown)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}/…"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an HTTP error: the body (and a login) go to the URL given, nowhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post(url: str, data: bytes, seconds: float) -> str | None:
    """POST `data` (JSON) to `url`, waiting at most `seconds` in all: None when it was taken
    (2xx), else why not, in words without secrets."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", "User-Agent": "flairseg-study"}
    if parts.username is not None:  # a login in the URL goes as HTTP Basic auth
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    answers: list[str | None] = []

    def send() -> None:
        try:
            with urllib.request.build_opener(_NoRedirect).open(request, timeout=seconds) as r:
                r.read(65536)
            answers.append(None)
        except urllib.error.HTTPError as err:
            answers.append(f"HTTP {err.code} {err.reason}")
        except Exception as err:  # refused, reset, unresolved, no answer: a reason, no traceback
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            timed_out = isinstance(reason, TimeoutError | socket.timeout)
            said = getattr(reason, "strerror", None) or secrets.first_line(reason)
            answers.append(f"no answer in {seconds:g} s" if timed_out else secrets.scrub(said))

    thread = threading.Thread(target=send, name="flairseg-notify", daemon=True)
    thread.start()
    thread.join(seconds)
    return answers[0] if answers else f"no answer in {seconds:g} s"
