"""The PostgreSQL role and database of the Prefect server, created (or dropped) by script.

    python -m deployments.production.pg create     # idempotent
    python -m deployments.production.pg drop       # database and role, for throw-away setups
    python -m deployments.production.pg url        # the SQLAlchemy URL, password masked

Settings come from the environment only (never a file in the repository, never a block: a
block lives in the very database it would unlock):

    HEADROOM_PG_HOST (127.0.0.1)  HEADROOM_PG_PORT (5432)  HEADROOM_PG_DATABASE (prefect)
    HEADROOM_PG_USER (prefect)    HEADROOM_PG_PASSWORD (empty: only for trust auth)
    HEADROOM_PG_ADMIN_DSN (postgresql://postgres@127.0.0.1:5432/postgres): a superuser or a
                                  role with CREATEROLE and CREATEDB, used only to create/drop

Identifiers are validated; values (the password) reach PostgreSQL as bind parameters and are
quoted by PostgreSQL's own ``format('%I', '%L')``, never by string building here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from urllib.parse import quote

log = logging.getLogger(__name__)

# Unquoted PostgreSQL identifiers: lower case, at most 63 bytes; nothing that needs quoting.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def check_identifier(value: str, name: str) -> str:
    """``value`` if it is a plain lower-case PostgreSQL identifier, else a ValueError naming it."""
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{name}={value!r} is not a plain PostgreSQL identifier "
            "(lower-case letters, digits and _, not starting with a digit, at most 63)"
        )
    return value


@dataclass(frozen=True)
class PgSettings:
    """Where the Prefect database lives and who owns it (password kept out of repr)."""

    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "prefect"
    user: str = "prefect"
    password: str = field(default="", repr=False)
    admin_dsn: str = field(default=DEFAULT_ADMIN_DSN, repr=False)

    def __post_init__(self) -> None:
        check_identifier(self.database, "HEADROOM_PG_DATABASE")
        check_identifier(self.user, "HEADROOM_PG_USER")
        if not 0 < self.port < 65536:
            raise ValueError(f"HEADROOM_PG_PORT={self.port} is not a TCP port")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> PgSettings:
        """The settings from HEADROOM_PG_* variables."""
        env = os.environ if environ is None else environ
        port = env.get("HEADROOM_PG_PORT", "5432")
        if not port.isdigit():
            raise ValueError(f"HEADROOM_PG_PORT={port!r} is not a number")
        return cls(
            host=env.get("HEADROOM_PG_HOST", "127.0.0.1"),
            port=int(port),
            database=env.get("HEADROOM_PG_DATABASE", "prefect"),
            user=env.get("HEADROOM_PG_USER", "prefect"),
            password=env.get("HEADROOM_PG_PASSWORD", ""),
            admin_dsn=env.get("HEADROOM_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN),
        )

    def connection_url(self, *, masked: bool = False) -> str:
        """The Prefect server's ``postgresql+asyncpg://`` URL (password masked on request)."""
        secret = ("***" if masked else quote(self.password, safe="")) if self.password else ""
        credentials = f"{self.user}:{secret}" if secret else self.user
        return f"postgresql+asyncpg://{credentials}@{self.host}:{self.port}/{self.database}"


async def _admin_connection(settings: PgSettings):
    import asyncpg

    return await asyncpg.connect(settings.admin_dsn, timeout=10)


async def _execute_formatted(connection, template: str, *values: str) -> None:
    """Let PostgreSQL quote identifiers (%I) and literals (%L) of a utility statement (which
    takes no bind parameters): the template and the values go to ``format`` as parameters."""
    placeholders = "".join(f", ${i}::text" for i in range(2, len(values) + 2))
    statement = await connection.fetchval(
        f"SELECT format($1::text{placeholders})", template, *values
    )
    await connection.execute(statement)


async def create(settings: PgSettings) -> dict[str, bool]:
    """Create (or update the password of) the role and create its database; idempotent."""
    connection = await _admin_connection(settings)
    try:
        role_exists = await connection.fetchval(
            "SELECT 1 FROM pg_roles WHERE rolname = $1", settings.user
        )
        verb = "ALTER" if role_exists else "CREATE"
        if settings.password:
            await _execute_formatted(
                connection, f"{verb} ROLE %I LOGIN PASSWORD %L", settings.user, settings.password
            )
        elif not role_exists:
            # No password: only for trust/peer auth (tests, a sealed single-user host).
            await _execute_formatted(connection, "CREATE ROLE %I LOGIN", settings.user)
        database_exists = await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", settings.database
        )
        if not database_exists:
            # CREATE DATABASE cannot run in a transaction; asyncpg runs it outside one.
            await _execute_formatted(
                connection, "CREATE DATABASE %I OWNER %I", settings.database, settings.user
            )
        return {"role_created": not role_exists, "database_created": not database_exists}
    finally:
        await connection.close()


async def drop(settings: PgSettings) -> None:
    """Drop the database (closing its connections) and then the role, if they exist."""
    connection = await _admin_connection(settings)
    try:
        await _execute_formatted(
            connection, "DROP DATABASE IF EXISTS %I WITH (FORCE)", settings.database
        )
        await _execute_formatted(connection, "DROP ROLE IF EXISTS %I", settings.user)
    finally:
        await connection.close()


def create_database(settings: PgSettings | None = None) -> dict[str, bool]:
    """Synchronous :func:`create`."""
    return asyncio.run(create(settings or PgSettings.from_env()))


def drop_database(settings: PgSettings | None = None) -> None:
    """Synchronous :func:`drop`."""
    asyncio.run(drop(settings or PgSettings.from_env()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["create", "drop", "url"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = PgSettings.from_env()
    if args.action == "create":
        done = create_database(settings)
        log.info(
            "role %s %s; database %s %s",
            settings.user,
            "created" if done["role_created"] else "exists",
            settings.database,
            "created" if done["database_created"] else "exists",
        )
    elif args.action == "drop":
        drop_database(settings)
        log.info("dropped database %s and role %s", settings.database, settings.user)
    else:
        sys.stdout.write(settings.connection_url(masked=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
