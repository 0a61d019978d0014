"""The ``mailfleet`` command: migrate, users and API keys, secrets and keys, serve, demo.

The commands for API consumers (accounts, campaigns, enqueue, messages, events) are in
``mailfleet_api.client``; they talk to the API, not to the database.
"""

import asyncio
import getpass
from pathlib import Path
from typing import Annotated
from uuid import UUID

import asyncpg
import typer
from email_validator import EmailNotValidError, validate_email
from mailfleet_common import oauth
from mailfleet_common.crypto import SecretBox
from mailfleet_common.migrate import migrate as apply_migrations
from mailfleet_common.serving import serve
from mailfleet_common.settings import HttpSettings
from pydantic import TypeAdapter, ValidationError

from mailfleet_api import auth, queries, schemas
from mailfleet_api.client import accounts as account_commands
from mailfleet_api.client import campaigns as campaign_commands
from mailfleet_api.client import enqueue as enqueue_commands
from mailfleet_api.client import events as event_commands
from mailfleet_api.client import messages as message_commands
from mailfleet_api.demo import DemoOptions, run_demo
from mailfleet_api.keycheck import KeyCheck, check_secrets, explain
from mailfleet_api.queries import consents as consent_queries
from mailfleet_api.queries import webhooks as webhook_queries
from mailfleet_api.retention import RetentionReport, run_retention
from mailfleet_api.schemas import users as user_schemas
from mailfleet_api.settings import Settings

# No locals in tracebacks: they would show API keys and passwords.
app = typer.Typer(
    help="mailfleet: self-hosted email delivery.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(account_commands.app, name="accounts")
app.add_typer(campaign_commands.app, name="campaigns")
app.add_typer(message_commands.app, name="messages")
app.add_typer(event_commands.app, name="events")
app.command("enqueue")(enqueue_commands.enqueue_csv)

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
    if_missing: Annotated[
        bool,
        typer.Option(
            help="Succeed quietly if it exists; exit 3 if it has another password than given."
        ),
    ] = False,
) -> None:
    """Create a user (asks for the password unless given)."""
    if role not in auth.ROLE_RANK:
        raise _fail(f"unknown role {role!r}: use admin, operator or viewer")
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise _fail(f"invalid email: {exc}") from exc
    settings = _settings()

    async def create() -> str:
        conn = await asyncpg.connect(settings.postgres.dsn)
        try:
            login = await queries.fetch_login(conn, email)
            if login is not None:
                if not if_missing or (password is None and password_file is None):
                    return "exists"
                given = _read_password(password, password_file)
                return "exists" if auth.verify_password(login["password_hash"], given) else "other"
            secret = _new_password(password, password_file, email)
            created = await queries.insert_user(conn, email, auth.hash_password(secret), role)
            return "created" if created is not None else "exists"
        finally:
            await conn.close()

    outcome = asyncio.run(create())
    if outcome == "created":
        typer.echo(f"created {role} {email}")
    elif outcome == "other":
        given = f"--password-file {password_file}" if password_file else "--password ..."
        typer.secho(
            f"{email} exists already, and the password given ({given}) is not theirs: the "
            "database was set up from another clone, or the password was changed since. "
            f"To give {email} this password:\n  mailfleet set-password --email {email} {given}",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(code=3)
    elif if_missing:
        typer.echo(f"{email} exists already")
    else:
        raise _fail(f"a user with email {email} exists already")


def _new_password(password: str | None, password_file: Path | None, email: str) -> str:
    """The password given, if the password policy accepts it for this user."""
    secret = _read_password(password, password_file)
    problem = auth.password_problem(secret, email)
    if problem is not None:
        raise _fail(problem)
    return secret


@app.command("set-password")
def set_password(
    email: Annotated[str, typer.Option(help="The user's email (their login).")],
    password: Annotated[str | None, typer.Option(help="Visible to other local users.")] = None,
    password_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Read it from a file.")
    ] = None,
) -> None:
    """Give an existing user a new password (asks for it unless given)."""
    settings = _settings()

    async def update() -> bool:
        conn = await asyncpg.connect(settings.postgres.dsn)
        try:
            if await queries.fetch_user_by_email(conn, email) is None:
                return False
            secret = _new_password(password, password_file, email)
            return await queries.set_user_password(conn, email, auth.hash_password(secret))
        finally:
            await conn.close()

    if not asyncio.run(update()):
        raise _fail(f"no user with email {email}")
    typer.echo(f"password set for {email}")


@app.command("check-keys")
def check_keys(
    forget: Annotated[
        bool,
        typer.Option(
            "--forget",
            help="Delete the passwords no key decrypts and pause their accounts.",
        ),
    ] = False,
) -> None:
    """Check that MAILFLEET_CRYPTO__KEYS decrypts every stored secret.

    SMTP and IMAP passwords, webhook secrets, OAuth2 credentials and access tokens, and the
    PKCE verifiers of consents under way.

    Exits 2, saying what to do, when some cannot be decrypted (unless --forget).
    """
    settings = _settings()

    async def check() -> KeyCheck:
        conn = await asyncpg.connect(settings.postgres.dsn)
        try:
            async with conn.transaction():
                result = check_secrets(
                    settings.crypto,
                    await queries.fetch_account_secrets(conn),
                    await webhook_queries.fetch_endpoint_secrets(conn),
                    await queries.fetch_oauth_secrets(conn),
                    await consent_queries.fetch_verifiers(conn),
                )
                if forget:
                    for lost in result.locked_oauth:
                        await queries.forget_oauth_secrets(
                            conn, lost.account_id, lost.credentials, lost.forgotten_reason
                        )
                    await consent_queries.forget_verifiers(conn, result.locked_consents)
                    for endpoint in result.locked_endpoints:
                        await webhook_queries.forget_endpoint_secret(
                            conn, endpoint.endpoint_id, endpoint.forgotten_reason
                        )
                    for locked in result.locked:
                        await queries.forget_account_secrets(
                            conn,
                            locked.account_id,
                            locked.smtp,
                            locked.imap,
                            locked.forgotten_reason,
                        )
                return result
        finally:
            await conn.close()

    result = asyncio.run(check())
    if result.all_decrypted:
        typer.echo(
            f"MAILFLEET_CRYPTO__KEYS decrypts every stored password "
            f"({result.accounts_with_secrets} accounts have one), webhook secret "
            f"({result.endpoints_with_secrets} endpoints), OAuth2 credential "
            f"({result.oauth_accounts} accounts) and consent verifier "
            f"({result.pending_consents} under way)"
        )
    elif forget:
        for locked in result.locked:
            typer.echo(f"{locked.name} ({locked.account_id}): {locked.forgotten_reason}")
        for endpoint in result.locked_endpoints:
            typer.echo(f"webhook endpoint {endpoint.endpoint_id}: {endpoint.forgotten_reason}")
        for lost in result.locked_oauth:
            what = lost.forgotten_reason if lost.credentials else "its cached access token dropped"
            typer.echo(f"{lost.name} ({lost.account_id}): {what}")
        credentials = sum(lost.credentials for lost in result.locked_oauth)
        typer.echo(
            f"deleted the passwords of {len(result.locked)} accounts and paused them, the "
            f"secrets of {len(result.locked_endpoints)} webhook endpoints and disabled them, "
            f"the OAuth2 credentials of {credentials} accounts (paused for consent), "
            f"{len(result.locked_oauth) - credentials} cached access tokens and "
            f"{len(result.locked_consents)} consents under way"
        )
    else:
        typer.secho(f"error: {explain(result)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2)


@app.command("create-api-key")
def create_api_key(
    email: Annotated[str, typer.Option(help="The user the key acts for.")],
    name: Annotated[str, typer.Option(help="What the key is for.")],
    role: Annotated[str | None, typer.Option(help="Defaults to the user's role.")] = None,
    rate_limit: Annotated[
        str | None,
        typer.Option(help="The key's own rate, e.g. 600/minute; default: the server's."),
    ] = None,
) -> None:
    """Create an API key for a user and print it (it is shown this once)."""
    settings = _settings()
    if rate_limit is not None:
        try:
            TypeAdapter(user_schemas.KeyRate).validate_python(rate_limit)
        except ValidationError:
            raise _fail(
                f"--rate-limit {rate_limit!r}: one rate like 600/minute or 100/15 minutes,"
                " a window of a day at most"
            ) from None

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
            await queries.insert_api_key(
                conn, user.id, name, new.prefix, new.key_hash, key_role, rate_limit
            )
            return new.key
        finally:
            await conn.close()

    typer.echo(asyncio.run(create()))


@app.command("rotate-secrets")
def rotate_secrets() -> None:
    """Re-encrypt passwords, OAuth secrets, consent verifiers, webhook secrets: newest key."""
    settings = _settings()
    box = SecretBox.from_settings(settings.crypto)

    def rotated(token: bytes | None) -> bytes | None:
        return None if token is None else box.rotate(token)

    async def rotate() -> tuple[int, int, int, int]:
        conn = await asyncpg.connect(settings.postgres.dsn)
        try:
            async with conn.transaction():
                accounts = await queries.fetch_account_secrets(conn)
                for account in accounts:
                    await queries.set_account_secrets(
                        conn,
                        account.model_copy(
                            update={
                                "smtp_password_enc": rotated(account.smtp_password_enc),
                                "imap_password_enc": rotated(account.imap_password_enc),
                            }
                        ),
                    )
                endpoints = await webhook_queries.fetch_endpoint_secrets(conn)
                for row in endpoints:
                    await webhook_queries.set_endpoint_secret_enc(
                        conn, row["id"], box.rotate(bytes(row["secret_enc"]))
                    )
                secrets = sum(
                    token is not None
                    for account in accounts
                    for token in (account.smtp_password_enc, account.imap_password_enc)
                )
                oauth_accounts = await oauth.rotate_oauth_secrets(conn, box)
                verifiers = await consent_queries.fetch_verifiers(conn)
                await consent_queries.set_verifiers(
                    conn, [(state, box.rotate(verifier)) for state, verifier in verifiers]
                )
                return secrets, oauth_accounts, len(endpoints), len(verifiers)
        finally:
            await conn.close()

    accounts, oauth_accounts, endpoints, verifiers = asyncio.run(rotate())
    typer.echo(
        f"re-encrypted {accounts} account secrets, the OAuth credentials and tokens of "
        f"{oauth_accounts} accounts, {endpoints} webhook secrets and the verifiers of "
        f"{verifiers} consents under way with the newest key"
    )


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


@app.command()
def retention(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would go; change nothing.")
    ] = False,
) -> None:
    """Drop old events partitions and prune old rows in small batches (MAILFLEET_RETENTION__*).

    Safe to run at any time, again, or several at once; an interrupted run is finished by the
    next one.
    """
    settings = _settings()

    async def run() -> RetentionReport:
        conn = await asyncpg.connect(settings.postgres.dsn)
        try:
            return await run_retention(conn, settings.retention, dry_run=dry_run)
        finally:
            await conn.close()

    report = asyncio.run(run())
    verb = "would drop" if dry_run else "dropped"
    partitions = ", ".join(report.dropped_partitions) or "none"
    typer.echo(f"events before {report.events_before:%Y-%m-%d}: {verb} partitions {partitions}")
    if report.busy_partitions:
        typer.echo(f"left for the next run (locked): {', '.join(report.busy_partitions)}")
    for table in report.tables:
        if dry_run:
            typer.echo(f"{table.table}: would delete {table.rows} rows")
        else:
            typer.echo(
                f"{table.table}: deleted {table.rows} rows in {table.batches} batches "
                f"(longest {table.max_batch_s * 1000:.0f} ms)"
            )


uncertain = typer.Typer(
    help="Messages left uncertain (their sender died mid-delivery): list and resolve them.",
    no_args_is_help=True,
)
app.add_typer(uncertain, name="uncertain")

CampaignOption = Annotated[UUID | None, typer.Option(help="Only this campaign's messages.")]
AccountOption = Annotated[UUID | None, typer.Option(help="Only this account's messages.")]


@uncertain.command("list")
def list_uncertain(
    campaign_id: CampaignOption = None,
    account_id: AccountOption = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
) -> None:
    """Show uncertain messages, newest first: one JSON object a line."""
    filters = schemas.UncertainFilter(campaign_id=campaign_id, account_id=account_id)

    async def fetch() -> list[schemas.UncertainMessage]:
        conn = await asyncpg.connect(_settings().postgres.dsn)
        try:
            items, _ = await queries.list_uncertain(conn, filters, limit, None)
        finally:
            await conn.close()
        return items

    for item in asyncio.run(fetch()):
        typer.echo(item.model_dump_json())


@uncertain.command("resolve")
def resolve_uncertain(
    resolution: Annotated[
        str, typer.Option("--as", help="sent: it did arrive. resend: queue it again.")
    ],
    message_id: Annotated[
        list[int] | None, typer.Option("--id", help="A message's id (repeat for more).")
    ] = None,
    campaign_id: CampaignOption = None,
    account_id: AccountOption = None,
    every: Annotated[bool, typer.Option("--all", help="Every uncertain message.")] = False,
    accept_duplicate_risk: Annotated[
        bool, typer.Option(help="Required to resend: the first attempt may have arrived.")
    ] = False,
    note: Annotated[str | None, typer.Option(help="Why, for the record.")] = None,
) -> None:
    """Resolve uncertain messages by --id, by --campaign-id/--account-id, or --all."""
    if resolution not in ("sent", "resend"):
        raise _fail("--as takes sent or resend")
    chosen_by_filter = every or campaign_id is not None or account_id is not None
    if bool(message_id) == chosen_by_filter:
        raise _fail("choose the messages with --id, or with --campaign-id/--account-id/--all")
    if resolution == "resend" and not accept_duplicate_risk:
        raise _fail("resending may deliver a message twice: add --accept-duplicate-risk")
    filters = schemas.UncertainFilter(campaign_id=campaign_id, account_id=account_id)
    by = f"cli:{getpass.getuser()}"

    async def resolve() -> list[int]:
        conn = await asyncpg.connect(_settings().postgres.dsn)
        try:
            return await queries.resolve_uncertain(
                conn,
                "sent" if resolution == "sent" else "resend",
                message_id or None,
                filters,
                by,
                note,
            )
        finally:
            await conn.close()

    resolved = asyncio.run(resolve())
    typer.echo(f"resolved {len(resolved)} uncertain messages as {resolution} (by {by})")


def main() -> None:
    app()
