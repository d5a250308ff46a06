"""PostgreSQL connections for the llm layer's shared state (request slots, request cache): one
autocommit psycopg2 connection from a URL that may hold a password, which no message shows.

psycopg2 comes with `pip install 'dd-assets[postgres]'` (dagster-postgres needs it too); it is
imported only when a PostgreSQL backend is chosen."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from dd_assets.errors import LLMError


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (`postgresql+psycopg2://`, as Dagster's instance has it) as libpq's."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith("postgresql+"):
        return "postgresql://" + rest
    return url


def safe_url(url: str) -> str:
    """Where the database is, for messages: no user, no password, no parameters."""
    if "://" not in url:
        return "(connection string)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(text: str, url: str) -> str:
    """`text` without the URL's password (libpq may quote a bad connection string back)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(secret, "***")  # type: ignore[arg-type]
    return text.replace(url, safe_url(url))


def connect(url: str, purpose: str, error: type[LLMError]) -> Any:
    """An autocommit connection, or `error` naming the server (never the password)."""
    url = libpq_url(url)
    try:
        import psycopg2
    except ImportError as exc:
        raise error(
            f"{purpose} in PostgreSQL needs psycopg2: pip install 'dd-assets[postgres]'"
        ) from exc
    try:
        conn = psycopg2.connect(url, connect_timeout=10)
    except psycopg2.Error as exc:
        raise error(
            f"cannot connect to PostgreSQL at {safe_url(url)} for {purpose}:"
            f" {scrub(str(exc).strip(), url)}"
        ) from None
    conn.autocommit = True
    return conn
