"""The mailfleet CLI: users, API keys and secret rotation against the test database."""

import asyncio
from typing import Any

import pytest
from mailfleet_api.cli import app
from mailfleet_common.crypto import SecretBox, generate_key
from typer.testing import CliRunner, Result

from .conftest import Conn


@pytest.fixture
def env(database_dsn: str, crypto_keys: str, db: Conn) -> dict[str, Any]:
    return {"MAILFLEET_POSTGRES__DSN": database_dsn, "MAILFLEET_CRYPTO__KEYS": crypto_keys}


def test_create_user_is_idempotent_with_if_missing(env: dict[str, str], tmp_path: Any) -> None:
    runner = CliRunner()
    password_file = tmp_path / "pw"
    password_file.write_text("a-long-admin-password\n")
    args = [
        "create-user",
        "--email",
        "root@example.com",
        "--role",
        "admin",
        "--password-file",
        str(password_file),
    ]
    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    assert runner.invoke(app, args, env=env).exit_code == 1
    assert runner.invoke(app, [*args, "--if-missing"], env=env).exit_code == 0
    short = runner.invoke(
        app, ["create-user", "--email", "x@example.com", "--password", "short"], env=env
    )
    assert short.exit_code == 1


def test_create_user_prompts_for_the_password(env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        app,
        ["create-user", "--email", "ops@example.com", "--role", "operator"],
        input="a-long-operator-password\na-long-operator-password\n",
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "created operator ops@example.com" in result.output


def test_create_api_key_prints_a_key_once(env: dict[str, str]) -> None:
    runner = CliRunner()
    runner.invoke(
        app,
        [
            "create-user",
            "--email",
            "bot@example.com",
            "--role",
            "operator",
            "--password",
            "a-long-bot-password",
        ],
        env=env,
    )
    result = runner.invoke(
        app, ["create-api-key", "--email", "bot@example.com", "--name", "ci"], env=env
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("mf_")
    too_strong = runner.invoke(
        app,
        ["create-api-key", "--email", "bot@example.com", "--name", "x", "--role", "admin"],
        env=env,
    )
    assert too_strong.exit_code == 1


async def rotate_secrets(database_dsn: str, keys: str) -> Result:
    """Run ``mailfleet rotate-secrets`` with these keys, newest first."""
    # The command runs its own event loop, so not on this test's.
    return await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["rotate-secrets"],
        env={"MAILFLEET_POSTGRES__DSN": database_dsn, "MAILFLEET_CRYPTO__KEYS": keys},
    )


async def test_rotate_secrets_reencrypts_with_the_newest_key(
    database_dsn: str, crypto_keys: str, db: Conn
) -> None:
    old = SecretBox(crypto_keys.split(","))
    await db.execute(
        "INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit, "
        "smtp_password_enc) VALUES ('a', 'h', 25, 'none', 'a@example.com', 1, $1)",
        old.encrypt("pw"),
    )
    newest = generate_key()
    result = await rotate_secrets(database_dsn, f"{newest},{crypto_keys}")
    assert result.exit_code == 0, result.output
    assert "re-encrypted 1" in result.output
    token = bytes(await db.fetchval("SELECT smtp_password_enc FROM accounts"))
    assert SecretBox([newest]).decrypt(token) == "pw"


async def test_rotate_secrets_reencrypts_imap_passwords_too(
    database_dsn: str, crypto_keys: str, db: Conn
) -> None:
    old = SecretBox(crypto_keys.split(","))
    await db.execute(
        "INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit,"
        " smtp_password_enc, imap_host, imap_port, imap_tls, imap_username, imap_password_enc)"
        " VALUES ('both', 'h', 25, 'none', 'a@example.com', 1, $1, 'i', 993, 'implicit', 'u', $2),"
        " ('imap only', 'h', 25, 'none', 'b@example.com', 1, NULL, 'i', 993, 'implicit', 'u', $3)",
        old.encrypt("smtp-pw"),
        old.encrypt("imap-pw"),
        old.encrypt("imap-only-pw"),
    )
    newest = generate_key()
    result = await rotate_secrets(database_dsn, f"{newest},{crypto_keys}")

    assert result.exit_code == 0, result.output
    assert "re-encrypted 3" in result.output
    rows = await db.fetch(
        "SELECT name, smtp_password_enc, imap_password_enc FROM accounts ORDER BY name"
    )
    only_newest = SecretBox([newest])
    assert [
        (
            r["name"],
            r["smtp_password_enc"] and only_newest.decrypt(bytes(r["smtp_password_enc"])),
            only_newest.decrypt(bytes(r["imap_password_enc"])),
        )
        for r in rows
    ] == [("both", "smtp-pw", "imap-pw"), ("imap only", None, "imap-only-pw")]


def test_create_user_applies_the_password_policy(env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        app, ["create-user", "--email", "carol@example.com", "--password", "password1234"], env=env
    )
    assert result.exit_code == 1
    assert "too easy to guess" in result.output
