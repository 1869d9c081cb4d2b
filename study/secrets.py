"""Passwords given in URLs: taken out at the door, handed to the clients, never written.

A URL with a password (`postgresql://flair:PW@db/optuna`, `http://user:PW@mlflow:5000`) is
split when the flags are read (`take`). From then on the study carries the URL without its
password everywhere: the plan, MLflow tags, the Optuna ledger, Tune's and the searcher's
pickles, the console, the report. The password reaches each client through the channel the
client reads by itself:

- PostgreSQL (Optuna's storage, an MLflow database store): a libpq password file
  (`PGPASSFILE`), mode 0600, in a private temporary folder removed when the process ends;
- an MLflow tracking server: `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`.

A later `--resume` gets its passwords the same way, from the URL given again or from the
environment (`OPTUNA_STORAGE`, `MLFLOW_TRACKING_URI`, the MLflow variables, `~/.pgpass`).
Text that may quote a URL (a driver's error) goes through `scrub` before it is shown.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from flairseg.errors import ConfigError

MASK = "***"
_TAKEN: set[str] = set()  # every password taken this process, for `scrub`
_CLEANED: set[str] = set()  # what `take` left of each URL it took a password out of
_PGPASS: Path | None = None


def _netloc(user: str | None, host: str | None, port: int | None, password: str | None) -> str:
    where = (host or "") + (f":{port}" if port else "")
    if user is None:
        return where
    return f"{user}{':' + password if password is not None else ''}@{where}"


def _split(url: str) -> tuple[SplitResult, bool]:
    """urlsplit, and whether `url` is an address without a scheme (`user:PW@host:port`,
    which urlsplit alone reads as scheme `user` and a path, its password unseen)."""
    parts = urlsplit(url)
    if "://" in url or "@" not in url or parts.netloc:
        return parts, False
    # split by hand: a password may hold `/`, `?` or `#`, which end a URL's netloc
    userinfo, _, where = url.rpartition("@")
    user, colon, password = userinfo.partition(":")
    quoted = quote(user, safe="") + (":" + quote(password, safe="") if colon else "")
    return urlsplit(f"//{quoted}@{where}"), True


def _unsplit(parts: SplitResult, bare: bool) -> str:
    text = urlunsplit(parts)
    return text.removeprefix("//") if bare else text


def redact(url: str) -> str:
    """`url` with its password shown as `***` (unchanged when it has none)."""
    try:
        parts, bare = _split(url)
        password = parts.password
        port = parts.port
    except ValueError:  # not a URL (a bad port ...): shown as given, less known secrets
        return scrub(url)
    if password is None:
        return scrub(url)
    netloc = _netloc(parts.username, parts.hostname, port, MASK)
    return scrub(_unsplit(parts._replace(netloc=netloc), bare))


def without_password(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without its password, the user name, the password), both decoded."""
    parts, bare = _split(url)
    if parts.password is None:
        return url, None, None
    netloc = _netloc(parts.username, parts.hostname, parts.port, None)
    return (
        _unsplit(parts._replace(netloc=netloc), bare),
        unquote(parts.username or ""),
        unquote(parts.password),
    )


def scrub(text: str) -> str:
    """`text` with every password taken this process replaced by `***`."""
    for secret in sorted(_TAKEN, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def first_line(err: BaseException) -> str:
    """An error said in one line of at most 200 characters (its type when it says nothing),
    with every password taken this process masked."""
    return scrub(str(err).strip().partition("\n")[0][:200]) or type(err).__name__


def take(url: str, flag: str) -> str:
    """`url` without its password; the password handed to the client that will connect.

    PostgreSQL URLs put it in the process's libpq password file, http(s) URLs of an MLflow
    server in MLflow's credential variables. A password in any other kind of URL (a Tune
    `--storage` URI, a Ray address) cannot be handed on safely and is refused: give those
    credentials through the environment the storage or Ray reads.
    """
    clean, user, password = without_password(url)
    if password is None:
        return url
    _TAKEN.update({password, _split(url)[0].password or password})
    scheme = _split(url)[0].scheme.split("+")[0]
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        database = parts.path.lstrip("/") or "*"
        _pgpass_add(parts.hostname or "localhost", parts.port or 5432, database, user, password)
    elif scheme in ("http", "https") and flag == "--mlflow-uri":
        os.environ["MLFLOW_TRACKING_USERNAME"] = user or ""
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        parts = urlsplit(clean)  # no user name left either: MLflow sends the pair itself
        clean = urlunsplit(parts._replace(netloc=_netloc(None, parts.hostname, parts.port, None)))
    else:
        raise ConfigError(
            f"{flag} {redact(url)}: a password in this URL would be written to the study's "
            "files; give it through the environment instead"
        )
    _CLEANED.add(clean)
    return clean


def take_whole(url: str) -> None:
    """A URL that is a secret as a whole (`--notify`'s webhook: Slack's carry the token in
    the path): from now on `scrub` masks it, with its password, without its login, and its
    path and query (when 8 characters or more), in any text that would quote them."""
    found = {url}
    try:
        parts = urlsplit(url)
        found.update(p for p in (parts.password, unquote(parts.password or "")) if p)
        found.add(urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])))
        tail = urlunsplit(parts._replace(scheme="", netloc=""))
        found.update([tail] if len(tail) >= 8 else [])
    except ValueError:  # not a URL: the whole text is masked
        pass
    _TAKEN.update(found)


def had_password(url: str) -> bool:
    """Whether `url` is what `take` left of a URL with a password: a command for the user
    to run names it by its variable (`"$OPTUNA_STORAGE"`), as `command_line` does."""
    return url in _CLEANED


def _pgpass_add(host: str, port: int, database: str, user: str | None, password: str) -> None:
    """Add a line to this process's libpq password file (made on first use, 0600)."""
    global _PGPASS
    if _PGPASS is None:
        folder = Path(tempfile.mkdtemp(prefix="flairseg-pgpass-"))  # 0700
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _PGPASS = folder / "pgpass"
        earlier = os.environ.get("PGPASSFILE") or str(Path.home() / ".pgpass")
        lines = Path(earlier).read_text() if Path(earlier).is_file() else ""
        fd = os.open(_PGPASS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(lines if lines.endswith("\n") or not lines else lines + "\n")
        os.environ["PGPASSFILE"] = str(_PGPASS)

    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    line = ":".join(esc(v) for v in (host, str(port), database, user or "*", password))
    with _PGPASS.open("r+") as f:
        existing = f.read()
        f.seek(0)
        f.write(line + "\n" + existing)  # first match wins: ours before any older line
        f.truncate()


# the variable a secret-bearing flag's value can come from instead (study.run reads both)
ENV_OF = {"--optuna-storage": "OPTUNA_STORAGE", "--mlflow-uri": "MLFLOW_TRACKING_URI"}
# flags whose whole value is a secret (study.notify): a command names the variable always
WHOLE = {"--notify": "FLAIRSEG_NOTIFY_URL"}


def command_line(argv: list[str], module: str = "study.run", python: str = "python") -> str:
    """`python -m MODULE ARGS` as it can be run again (`python`: how to call the interpreter,
    study.commands.python() for a line printed to type here): a URL given with a password is
    replaced by the variable it can come from (`--optuna-storage "$OPTUNA_STORAGE"`); any
    other password is shown as `***`; a `--notify` URL, whatever it holds, by its variable."""
    import shlex

    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, value = arg.partition("=")
        if (flag in ENV_OF or flag in WHOLE) and not eq and i + 1 < len(args):
            value, i = args[i + 1], i + 1
        if flag in WHOLE:
            out.append(f'{flag} "${WHOLE[flag]}"' if value else f"{flag} ''")
        elif (
            flag in ENV_OF
            and value
            and (without_password(value)[2] is not None or had_password(value))
        ):
            out.append(f'{flag} "${ENV_OF[flag]}"')
        elif flag in ENV_OF and value:
            out.append(f"{flag} {shlex.quote(redact(value))}")
        else:
            out.append(shlex.quote(redact(arg)))
        i += 1
    return f"{python} -m {module} " + " ".join(out)
