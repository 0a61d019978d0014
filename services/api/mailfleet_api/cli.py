"""The ``mailfleet`` command: migrate, users and API keys, secret rotation, serve, demo."""

import asyncio
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from email_validator import EmailNotValidError, validate_email
from mailfleet_common.crypto import SecretBox
from mailfleet_common.migrate import migrate as apply_migrations
from mailfleet_common.serving import serve
from mailfleet_common.settings import HttpSettings

from mailfleet_api import auth, queries
from mailfleet_api.demo import DemoOptions, run_demo
from mailfleet_api.settings import Settings

app = typer.Typer(help="mailfleet: self-hosted email delivery.", no_args_is_help=True)

Role = Annotated[str, typer.Option(help="admin, operator or viewer.")]


def _settings() -> Settings:
    return Settings()


def _fail(message: str) -> typer.Exit:
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


@app.command()
def migrate() -> None:
    """Apply pending database migrations (MAILFLEET_POSTGRES__DSN)."""
    applied = asyncio.run(apply_migrations(_settings().postgres.dsn))
    typer.echo(f"applied migrations: {applied}" if applied else "database is up to date")


def _read_password(password: str | None, password_file: Path | None) -> str:
    if password is not None and password_file is not None:
        raise _fail("give --password or --password-file, not both")
    if password_file is not None:
        return password_file.read_text().strip()
    if password is not None:
        return password
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@app.command("create-user")
def create_user(
    email: Annotated[str, typer.Option(help="The user's email (their login).")],
    role: Role = "admin",
    password: Annotated[str | None, typer.Option(help="Visible to other local users.")] = None,
    password_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Read it from a file.")
    ] = None,
    if_missing: Annotated[bool, typer.Option(help="Succeed quietly if it exists.")] = False,
) -> None:
    """Create a user (asks for the password unless given)."""
    if role not in auth.ROLE_RANK:
        raise _fail(f"unknown role {role!r}: use admin, operator or viewer")
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise _fail(f"invalid email: {exc}") from exc
    settings = _settings()

    async def create() -> bool:
        conn = await asyncpg.connect(settings.postgres.dsn)
        try:
            if await queries.fetch_user_by_email(conn, email) is not None:
                return False
            secret = _read_password(password, password_file)
            problem = auth.password_problem(secret, email)
            if problem is not None:
                raise _fail(problem)
            return (
                await queries.insert_user(conn, email, auth.hash_password(secret), role) is not None
            )
        finally:
            await conn.close()

    if asyncio.run(create()):
        typer.echo(f"created {role} {email}")
    elif if_missing:
        typer.echo(f"{email} exists already")
    else:
        raise _fail(f"a user with email {email} exists already")


@app.command("create-api-key")
def create_api_key(
    email: Annotated[str, typer.Option(help="The user the key acts for.")],
    name: Annotated[str, typer.Option(help="What the key is for.")],
    role: Annotated[str | None, typer.Option(help="Defaults to the user's role.")] = None,
) -> None:
    """Create an API key for a user and print it (it is shown this once)."""
    settings = _settings()

    async def create() -> str:
        conn = await asyncpg.connect(settings.postgres.dsn)
        try:
            user = await queries.fetch_user_by_email(conn, email)
            if user is None:
                raise _fail(f"no user {email}")
            key_role = role or user.role
            if key_role not in auth.ROLE_RANK:
                raise _fail(f"unknown role {key_role!r}")
            if auth.ROLE_RANK[key_role] > auth.ROLE_RANK[user.role]:
                raise _fail(f"a key cannot carry more than the user's role ({user.role})")
            new = auth.generate_api_key()
            await queries.insert_api_key(conn, user.id, name, new.prefix, new.key_hash, key_role)
            return new.key
        finally:
            await conn.close()

    typer.echo(asyncio.run(create()))


@app.command("rotate-secrets")
def rotate_secrets() -> None:
    """Re-encrypt SMTP and IMAP passwords with the newest key of MAILFLEET_CRYPTO__KEYS."""
    settings = _settings()
    box = SecretBox.from_settings(settings.crypto)

    def rotated(token: bytes | None) -> bytes | None:
        return None if token is None else box.rotate(token)

    async def rotate() -> int:
        conn = await asyncpg.connect(settings.postgres.dsn)
        try:
            async with conn.transaction():
                rows = await queries.fetch_account_secrets(conn)
                for row in rows:
                    await queries.set_account_secrets(
                        conn,
                        row["id"],
                        rotated(row["smtp_password_enc"]),
                        rotated(row["imap_password_enc"]),
                    )
                return sum(
                    row[column] is not None
                    for row in rows
                    for column in ("smtp_password_enc", "imap_password_enc")
                )
        finally:
            await conn.close()

    typer.echo(f"re-encrypted {asyncio.run(rotate())} account secrets with the newest key")


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Default: MAILFLEET_HTTP__HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: MAILFLEET_HTTP__PORT.")] = None,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Serve the HTTP API with uvicorn (settings from MAILFLEET_* env vars)."""
    settings = _settings()
    http = HttpSettings(
        host=host or settings.http.host, port=settings.http.port if port is None else port
    )
    # app_from_env sets up JSON logging.
    serve(
        "mailfleet_api.main:app_from_env", http, factory=True, workers=workers, proxy_headers=False
    )


@app.command()
def demo(
    api_url: Annotated[str, typer.Option(help="Where the API answers.")] = "http://127.0.0.1:8000",
    email: Annotated[str, typer.Option(envvar="MAILFLEET_DEMO_EMAIL")] = "admin@example.com",
    password: Annotated[str | None, typer.Option(envvar="MAILFLEET_DEMO_PASSWORD")] = None,
    password_file: Annotated[Path, typer.Option()] = Path(".run/admin-password"),
    smtp_host: Annotated[str, typer.Option(help="The capture SMTP server.")] = "127.0.0.1",
    smtp_port: Annotated[int, typer.Option()] = 2525,
    smtp_tls: Annotated[str, typer.Option(help="implicit, starttls or none.")] = "none",
    accounts: Annotated[int, typer.Option(min=1, max=50)] = 5,
    recipients: Annotated[int, typer.Option(min=1, max=100_000)] = 1000,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for delivery.")] = 600.0,
) -> None:
    """Send a demo campaign through the running API to a local capture SMTP server."""
    if password is None and password_file.exists():
        password = password_file.read_text().strip()
    if password is None:
        raise _fail(
            f"give --password (or MAILFLEET_DEMO_PASSWORD, or a password in {password_file})"
        )
    options = DemoOptions(
        api_url=api_url, email=email, password=password, smtp_host=smtp_host,
        smtp_port=smtp_port, smtp_tls=smtp_tls, accounts=accounts, recipients=recipients,
        timeout=timeout,
    )  # fmt: skip
    if not run_demo(options):
        raise typer.Exit(code=1)


def main() -> None:
    app()
