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


async def test_create_api_key_takes_the_key_s_own_rate(env: dict[str, str], db: Conn) -> None:
    runner = CliRunner()
    password = ["--password", "a-long-bot-password"]
    await asyncio.to_thread(
        runner.invoke, app, ["create-user", "--email", "rated@example.com", *password], env=env
    )
    args = ["create-api-key", "--email", "rated@example.com", "--name", "importer"]
    rated = await asyncio.to_thread(
        runner.invoke, app, [*args, "--rate-limit", "600/minute"], env=env
    )
    assert rated.exit_code == 0, rated.output
    rate = await db.fetchval("SELECT rate_limit FROM api_keys WHERE name = 'importer'")
    assert rate == "600/minute"
    for nonsense in ("1/0 minutes", "5/week", "1/minute;5/hour", "lots"):
        refused = await asyncio.to_thread(
            runner.invoke, app, [*args, "--rate-limit", nonsense], env=env
        )
        assert refused.exit_code == 1, nonsense
        assert "--rate-limit" in refused.output
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE name = 'importer'") == 1


async def mailfleet(database_dsn: str, keys: str, *args: str) -> Result:
    """Run ``mailfleet <args>`` with these crypto keys, newest first."""
    # The command runs its own event loop, so not on this test's.
    return await asyncio.to_thread(
        CliRunner().invoke,
        app,
        list(args),
        env={"MAILFLEET_POSTGRES__DSN": database_dsn, "MAILFLEET_CRYPTO__KEYS": keys},
    )


async def rotate_secrets(database_dsn: str, keys: str) -> Result:
    """Run ``mailfleet rotate-secrets`` with these keys, newest first."""
    return await mailfleet(database_dsn, keys, "rotate-secrets")


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


async def _accounts_with_passwords(db: Conn, keys: str) -> None:
    """'smtp' and 'imap' hold a password encrypted with `keys`; 'bare' holds none."""
    box = SecretBox(keys.split(","))
    await db.execute(
        "INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit,"
        " smtp_username, smtp_password_enc, imap_host, imap_port, imap_tls, imap_username,"
        " imap_password_enc)"
        " VALUES ('smtp', 'h', 25, 'none', 'a@example.com', 1, 'u', $1, NULL, NULL, NULL, NULL,"
        " NULL), ('imap', 'h', 25, 'none', 'b@example.com', 1, NULL, NULL, 'i', 993, 'implicit',"
        " 'u', $2), ('bare', 'h', 25, 'none', 'c@example.com', 1, NULL, NULL, NULL, NULL, NULL,"
        " NULL, NULL)",
        box.encrypt("smtp-pw"),
        box.encrypt("imap-pw"),
    )


async def test_check_keys_passes_when_a_configured_key_decrypts_every_password(
    database_dsn: str, crypto_keys: str, db: Conn
) -> None:
    await _accounts_with_passwords(db, crypto_keys)

    # The key they were stored with, as an older key after a new one, still decrypts.
    result = await mailfleet(database_dsn, f"{generate_key()},{crypto_keys}", "check-keys")

    assert result.exit_code == 0, result.output
    assert "every stored password (2 accounts have one)" in result.output


async def test_check_keys_with_another_key_names_the_accounts_and_what_to_do(
    database_dsn: str, crypto_keys: str, db: Conn
) -> None:
    await _accounts_with_passwords(db, crypto_keys)

    result = await mailfleet(database_dsn, generate_key(), "check-keys")

    assert result.exit_code == 2
    assert "passwords of 2 of 2 accounts cannot be decrypted (SMTP: 1, IMAP: 1)" in result.output
    assert "'smtp'" in result.output
    assert "'imap'" in result.output
    assert "'bare'" not in result.output
    assert "MAILFLEET_CRYPTO__KEYS has none of the keys" in result.output
    assert "check-keys --forget" in result.output
    statuses = await db.fetch("SELECT status FROM accounts")
    assert {r["status"] for r in statuses} == {"active"}


async def test_check_keys_without_any_key_says_so(
    database_dsn: str, crypto_keys: str, db: Conn
) -> None:
    await _accounts_with_passwords(db, crypto_keys)

    result = await mailfleet(database_dsn, "", "check-keys")

    assert result.exit_code == 2
    assert "MAILFLEET_CRYPTO__KEYS is unusable (no encryption key configured" in result.output


async def test_check_keys_forget_deletes_the_lost_passwords_and_pauses_their_accounts(
    database_dsn: str, crypto_keys: str, db: Conn
) -> None:
    await _accounts_with_passwords(db, crypto_keys)
    new_key = generate_key()
    box = SecretBox([new_key])
    await db.execute(
        "INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit,"
        " smtp_password_enc) VALUES ('new', 'h', 25, 'none', 'd@example.com', 1, $1)",
        box.encrypt("new-pw"),
    )

    result = await mailfleet(database_dsn, new_key, "check-keys", "--forget")

    assert result.exit_code == 0, result.output
    assert "deleted the passwords of 2 accounts" in result.output
    rows = await db.fetch(
        "SELECT name, status, status_reason, smtp_password_enc, imap_password_enc "
        "FROM accounts ORDER BY name"
    )
    assert [(r["name"], r["status"]) for r in rows] == [
        ("bare", "active"),
        ("imap", "paused"),
        ("new", "active"),
        ("smtp", "paused"),
    ]
    lost = [r for r in rows if r["status"] == "paused"]
    assert [r["status_reason"].split(" deleted")[0] for r in lost] == [
        "its IMAP setting (u@i)",
        "its SMTP password",
    ]
    assert all("give it again" in r["status_reason"] for r in lost)
    assert all(r["smtp_password_enc"] is None and r["imap_password_enc"] is None for r in lost)
    assert await db.fetchval("SELECT imap_host FROM accounts WHERE name = 'imap'") is None
    assert box.decrypt(bytes(rows[2]["smtp_password_enc"])) == "new-pw"
    again = await mailfleet(database_dsn, new_key, "check-keys")
    assert again.exit_code == 0, again.output


async def test_an_existing_user_with_another_password_is_reported_and_can_be_reset(
    database_dsn: str, crypto_keys: str, db: Conn, tmp_path: Any
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("the-first-admin-password\n")
    second.write_text("another-admin-password\n")
    create = ["create-user", "--email", "root@example.com", "--if-missing", "--password-file"]
    assert (await mailfleet(database_dsn, crypto_keys, *create, str(first))).exit_code == 0

    other = await mailfleet(database_dsn, crypto_keys, *create, str(second))

    assert other.exit_code == 3
    assert "is not theirs" in other.output
    assert f"mailfleet set-password --email root@example.com --password-file {second}" in (
        other.output.replace("\n  ", " ")
    )
    reset = await mailfleet(
        database_dsn,
        crypto_keys,
        "set-password",
        "--email",
        "root@example.com",
        "--password-file",
        str(second),
    )
    assert reset.exit_code == 0, reset.output
    assert (await mailfleet(database_dsn, crypto_keys, *create, str(second))).exit_code == 0
    assert (await mailfleet(database_dsn, crypto_keys, *create, str(first))).exit_code == 3


async def test_set_password_needs_an_existing_user_and_a_long_password(
    database_dsn: str, crypto_keys: str, db: Conn
) -> None:
    unknown = await mailfleet(
        database_dsn,
        crypto_keys,
        "set-password",
        "--email",
        "x@example.com",
        "--password",
        "p" * 12,
    )
    assert unknown.exit_code == 1
    assert "no user" in unknown.output
    await mailfleet(
        database_dsn, crypto_keys, "create-user", "--email", "y@example.com", "--password", "p" * 12
    )
    short = await mailfleet(
        database_dsn, crypto_keys, "set-password", "--email", "y@example.com", "--password", "short"
    )
    assert short.exit_code == 1


def test_create_user_applies_the_password_policy(env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        app, ["create-user", "--email", "carol@example.com", "--password", "password1234"], env=env
    )
    assert result.exit_code == 1
    assert "too easy to guess" in result.output
