"""Real Dovecot (IMAP and LMTP) and Postfix (SMTP) instances for the bouncer tests.

Postfix accepts mail over SMTP for ``fleet.example.com`` (the accounts' own mailboxes) and
``remote.example.net`` (their recipients) and delivers both domains to Dovecot over LMTP.
Postfix accepts any recipient at SMTP time; when Dovecot's LMTP then refuses an unknown user,
Postfix returns a genuine RFC 3464 delivery status notification to the envelope sender, and
when that sender is a ``fleet.example.com`` mailbox the DSN lands in its INBOX, where the
bouncer reads it over IMAP. So the bounces the tests see are the ones a real MTA writes, not
hand-made ones.

Dovecot also speaks TLS, with a certificate from a CA made up when it starts (``ca_file``):
STARTTLS on its IMAP port, where plain logins stay allowed, and implicit TLS on ``imaps_port``.

Both servers run as root on free ports of 127.0.0.1, each from its own directory with its own
configuration, state, queue, mail and log: a system-wide Dovecot or Postfix is left alone.
That directory comes from ``tempfile``, not pytest's ``tmp_path``: the daemons work as
unprivileged users (``mail``, ``postfix``, ``dovecot``) who must be able to reach it, and pytest
keeps its temporary root private to its owner (mode 0700) and tightens it again whenever a
test run starts, so opening it up would not even hold while another run goes on.

Dovecot's users are one passwd-file per address (``users/<address>``): a user added while
Dovecot runs is known at once, where a single shared file is re-read at most once a second.
"""

import asyncio
import contextlib
import datetime
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import IO

from aioimaplib import IMAP4
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
FLEET_DOMAIN = "fleet.example.com"
REMOTE_DOMAIN = "remote.example.net"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# Where the daemons live when root's PATH lacks the sbin directories.
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_ADDRESS = re.compile(r"^[a-z0-9._+-]+@[a-z0-9.-]+$")
_INSTALL_HINT = (
    "the bouncer tests need Dovecot (Debian packages dovecot-imapd dovecot-lmtpd) and Postfix "
    "(package postfix); `make test` and .ci/run install them, or as root: "
    "source deploy/local/services.sh && ensure_dovecot && ensure_postfix"
)


class ServerError(RuntimeError):
    """A mail server is missing, did not start, or did not deliver in time; says why, with logs."""


@dataclass(frozen=True)
class Mailbox:
    """A Dovecot user: address and password, and the IMAP server that serves its mail."""

    address: str
    password: str
    host: str
    imap_port: int


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports of 127.0.0.1 that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def make_servers_dir() -> Path:
    """A new directory for the servers' files, reachable by the users the daemons run as."""
    root = Path(tempfile.mkdtemp(prefix="mailfleet-mail-servers-"))
    root.chmod(0o755)
    return root


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A new CA and a server certificate it signs, for 127.0.0.1 and ``localhost``.

    Writes ``ca.pem``, ``server.pem`` (certificate and CA chain) and ``server.key`` (readable by
    root only) into ``directory`` and returns their paths in that order. P-256 keys: made at
    once, where RSA ones would slow every start-up. Valid from a day ago for two days.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailfleet bouncer tests CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(names, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    ca_file.write_bytes(ca_pem)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    key_file.touch(mode=0o600)
    key_file.chmod(0o600)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


def _command(name: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    path = shutil.which(name, path=search)
    if path is None:
        raise ServerError(f"{name} not found: {_INSTALL_HINT}")
    if os.geteuid() != 0:
        raise ServerError(f"{name} must be started as root to run as its own users")
    return path


def _tail(path: Path, lines: int = 150) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path.name}: no such file)"
    return "\n".join(text.splitlines()[-lines:])


def _logs(*paths: Path) -> str:
    return "\n".join(f"--- {path}\n{_tail(path)}" for path in paths)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_listening(
    process: "subprocess.Popen[bytes]", ports: list[int], what: str, logs: Callable[[], str]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        listening = all(_port_open(port) for port in ports)
        # Polled after the ports answer too: someone else may hold a port it failed to bind.
        status = process.poll()
        if status is not None:
            raise ServerError(f"{what} exited with status {status} while starting\n{logs()}")
        if listening:
            return
        if time.monotonic() > deadline:
            raise ServerError(
                f"{what} is not listening on {ports} after {START_TIMEOUT} s\n{logs()}"
            )
        time.sleep(0.05)


def _end(process: "subprocess.Popen[bytes] | None", output: IO[bytes] | None) -> None:
    if process is not None:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if output is not None:
        output.close()


class Dovecot:
    """Dovecot serving IMAP and LMTP on 127.0.0.1, users from passwd-files, mail in Maildirs.

    Mail is stored as the ``mail`` system user under ``mail/<domain>/<local part>/Maildir``.
    IMAP offers STARTTLS on ``imap_port`` (plain logins are allowed too) and implicit TLS on
    ``imaps_port``, with a certificate for 127.0.0.1 and ``localhost`` issued by the CA in
    ``ca_file``, made up at each start.

    With ``oauth2_introspection_url``, IMAP also takes SASL XOAUTH2 and OAUTHBEARER: an
    ``oauth2`` passdb posts the bearer token to that RFC 7662 endpoint (tests/oauth_tokens.py)
    and lets the user in when it answers active, for that address (``email``). Passwords keep
    working through the passwd-file passdb; the user still needs its passwd-file (the userdb).
    """

    def __init__(self, root: Path, *, oauth2_introspection_url: str | None = None) -> None:
        self.root = root
        self.oauth2_introspection_url = oauth2_introspection_url
        self.oauth2_config_path = root / "dovecot-oauth2.conf.ext"
        self.host = HOST
        self.imap_port = 0
        self.imaps_port = 0
        self.lmtp_port = 0
        self.ca_file = root / "ca.pem"
        self.cert_file = root / "server.pem"
        self.key_file = root / "server.key"
        self.config_path = root / "dovecot.conf"
        self.users_dir = root / "users"
        self.mail_dir = root / "mail"
        self.log_path = root / "dovecot.log"
        self.output_path = root / "dovecot.out"
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    def start(self) -> None:
        """Writes certificates and configuration, starts ``dovecot -F``; returns once it listens."""
        dovecot = _command("dovecot")
        mail_user = pwd.getpwnam("mail")
        self.imap_port, self.imaps_port, self.lmtp_port = free_ports(3)
        for directory in (self.root, self.users_dir, self.root / "run", self.root / "state"):
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            directory.chmod(0o755)
        self.mail_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.mail_dir, mail_user.pw_uid, mail_user.pw_gid)
        self.ca_file, self.cert_file, self.key_file = write_certificates(self.root)
        self.config_path.write_text(self._config(mail_user.pw_uid, mail_user.pw_gid))
        if self.oauth2_introspection_url is not None:
            self.oauth2_config_path.write_text(self._oauth2_config(self.oauth2_introspection_url))
        self._output = self.output_path.open("ab")
        self._process = subprocess.Popen(
            [dovecot, "-F", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        ports = [self.imap_port, self.imaps_port, self.lmtp_port]
        _wait_listening(self._process, ports, "dovecot", self.log_text)

    def stop(self) -> None:
        """Stops Dovecot (SIGTERM to its master, which ends the other processes)."""
        _end(self._process, self._output)
        self._process = self._output = None

    def add_user(self, address: str, password: str) -> Mailbox:
        """Creates a user, known to IMAP and LMTP at once (a changed password within a second)."""
        address = address.lower()
        if not _ADDRESS.match(address) or not password or set(password) & set(":\r\n"):
            raise ValueError(f"unusable address or password for a passwd-file: {address!r}")
        # One file per user, replaced whole so Dovecot never reads half of it.
        target = self.users_dir / address
        partial = self.users_dir / f".{address}.tmp"
        partial.write_text(f"{address}:{{PLAIN}}{password}::::::\n")
        partial.chmod(0o644)
        partial.replace(target)
        return Mailbox(address, password, self.host, self.imap_port)

    def create_mailbox(self, prefix: str = "sender", domain: str = FLEET_DOMAIN) -> Mailbox:
        """A new user ``<prefix>-<random>@<domain>`` with a random password."""
        address = f"{prefix}-{secrets.token_hex(5)}@{domain}"
        return self.add_user(address, secrets.token_urlsafe(12))

    def maildir(self, address: str, mailbox: str = "INBOX") -> Path:
        """The Maildir of a user's mailbox (Maildir++: other mailboxes are ``.<name>``)."""
        local, domain = address.lower().split("@", 1)
        base = self.mail_dir / domain / local / "Maildir"
        return base if mailbox.upper() == "INBOX" else base / f".{mailbox}"

    def message_count(self, address: str, mailbox: str = "INBOX") -> int:
        """How many messages a user's mailbox holds, read from its Maildir (0 if none yet)."""
        maildir = self.maildir(address, mailbox)
        count = 0
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                count += sum(1 for entry in os.scandir(maildir / sub) if entry.is_file())
        return count

    def log_text(self) -> str:
        """The end of Dovecot's log and of what it wrote to stdout/stderr."""
        return _logs(self.log_path, self.output_path)

    def _oauth2_config(self, introspection_url: str) -> str:
        # No tokeninfo_url: every login is one introspection request, so a revoked token
        # fails at once. The answer must name the user logging in and say it is active.
        return f"""\
# The oauth2 passdb of the Dovecot for the bouncer tests, written by tests/bouncer/servers.py.
introspection_mode = post
introspection_url = {introspection_url}
username_attribute = email
active_attribute = active
active_value = true
timeout_msecs = 5000
"""

    def _oauth2_passdb(self) -> str:
        if self.oauth2_introspection_url is None:
            return ""
        return f"""
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.oauth2_config_path}
}}"""

    def _config(self, uid: int, gid: int) -> str:
        root = self.root
        mechanisms, failure_delay, penalty = "plain login", "2 secs", "0600"
        if self.oauth2_introspection_url is not None:
            # A refused token answers at once: the tests refuse many on purpose. Without its
            # socket, the auth process adds no growing penalty per failed login from 127.0.0.1.
            mechanisms, failure_delay, penalty = "plain login xoauth2 oauthbearer", "0", "0"
        return f"""\
# Dovecot for the bouncer tests, written by tests/bouncer/servers.py.
instance_name = mailfleet-test-{self.imap_port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_path}
hostname = imap.{FLEET_DOMAIN}
protocols = imap lmtp
listen = {HOST}
ssl = yes
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_failure_delay = {failure_delay}
auth_verbose = yes
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:~/Maildir

passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%Lu {self.users_dir}/%Lu
}}{self._oauth2_passdb()}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {self.users_dir}/%Lu
  default_fields = uid={uid} gid={gid} home={self.mail_dir}/%Ld/%Ln
}}

protocol imap {{
  mail_max_userip_connections = 100
}}

service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = {penalty}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {HOST}
    port = {self.lmtp_port}
  }}
}}
"""


class Postfix:
    """A Postfix instance taking SMTP on 127.0.0.1 and delivering to a Dovecot over LMTP.

    No authentication, no TLS, relaying for 127.0.0.0/8, no DNS. ``fleet.example.com`` and
    ``remote.example.net`` go to Dovecot; any other domain is bounced at once. ``settings``
    adds to or overrides the main.cf parameters below (e.g. ``{"delay_warning_time": "1s"}``).
    """

    def __init__(self, root: Path, lmtp_port: int, settings: Mapping[str, str] | None = None):
        self.root = root
        self.host = HOST
        self.smtp_port = 0
        self.lmtp_port = lmtp_port
        self.settings = dict(settings or {})
        self.config_dir = root / "etc"
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.log_path = root / "postfix.log"
        self.output_path = root / "postfix.out"
        self._postfix = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    def start(self) -> None:
        """Writes main.cf and master.cf, runs ``postfix start-fg``; returns once SMTP listens."""
        self._postfix = _command("postfix")
        (self.smtp_port,) = free_ports(1)
        for directory in (self.root, self.config_dir, self.queue_dir):
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            directory.chmod(0o755)
        # The master's lock and the daemons' caches: the mail owner's (postfix check says so).
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        (self.config_dir / "main.cf").write_text(self._main_cf())
        (self.config_dir / "master.cf").write_text(self._master_cf())
        # postfix(1) holds off for a few seconds while main.cf is brand new: back-date it.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))
        self._output = self.output_path.open("ab")
        # start-fg: the master stays a child of this process instead of detaching.
        self._process = subprocess.Popen(
            [self._postfix, "-c", str(self.config_dir), "start-fg"],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        _wait_listening(self._process, [self.smtp_port], "postfix", self.log_text)

    def stop(self) -> None:
        """Stops Postfix: SIGTERM to the master, which passes it on to its daemons."""
        process = self._process
        if process is not None and process.poll() is None:
            master = self._master_pid()
            if master is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(master, signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    # The master leads its own process group, daemons included.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(master, signal.SIGKILL)
        _end(process, self._output)
        self._process = self._output = None

    def flush(self) -> None:
        """Retries the deferred mail now (``postfix flush``)."""
        subprocess.run(
            [self._postfix, "-c", str(self.config_dir), "flush"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def log_text(self) -> str:
        """The end of Postfix's log (maillog_file) and of what its start-up wrote."""
        return _logs(self.log_path, self.output_path)

    def _master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def _main_cf(self) -> str:
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.root),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": f"mta.{FLEET_DOMAIN}",
            "mydomain": FLEET_DOMAIN,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            # Unknown users are accepted here and bounced after Dovecot's LMTP refuses them.
            "smtpd_reject_unlisted_recipient": "no",
            "virtual_mailbox_domains": f"{FLEET_DOMAIN} {REMOTE_DOMAIN}",
            "virtual_mailbox_maps": "",
            "virtual_transport": f"lmtp:inet:{HOST}:{self.lmtp_port}",
            "default_transport": f"error:5.1.2 only {FLEET_DOMAIN} and {REMOTE_DOMAIN} are served",
            "relay_domains": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 no local delivery",
            "alias_maps": "",
            "alias_database": "",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "biff": "no",
            "append_dot_mydomain": "no",
            "in_flow_delay": "0",
            # Retries and bounces within seconds, not the default minutes and days.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": "60s",
            "bounce_queue_lifetime": "60s",
            "delay_warning_time": "0",
        }
        params.update(self.settings)
        lines = ["# Postfix for the bouncer tests, written by tests/bouncer/servers.py."]
        lines += [f"{name} = {value}".rstrip() for name, value in params.items()]
        return "\n".join(lines) + "\n"

    def _master_cf(self) -> str:
        # Nothing chrooted; postlog writes maillog_file.
        return f"""\
# Postfix services for the bouncer tests, written by tests/bouncer/servers.py.
{HOST}:{self.smtp_port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
lmtp       unix  - - n -  - lmtp
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


async def wait_for_messages(
    dovecot: Dovecot,
    address: str,
    count: int = 1,
    *,
    mailbox: str = "INBOX",
    within: float = 15.0,
    postfix: Postfix | None = None,
) -> int:
    """Waits until a user's mailbox holds at least ``count`` messages; returns how many it holds.

    Polls the Maildir every 50 ms for up to ``within`` seconds, then raises ServerError with
    Dovecot's log, and Postfix's if given.
    """
    deadline = time.monotonic() + within
    while (held := dovecot.message_count(address, mailbox)) < count:
        if time.monotonic() > deadline:
            logs = dovecot.log_text() + ("\n" + postfix.log_text() if postfix else "")
            raise ServerError(
                f"{address} {mailbox}: {held} message(s) after {within} s, {count} awaited\n{logs}"
            )
        await asyncio.sleep(0.05)
    return held


async def fetch_messages(mailbox: Mailbox, folder: str = "INBOX") -> list[EmailMessage]:
    """Every message of a user's mailbox, read over IMAP (UID order, not marked as seen)."""
    client = IMAP4(mailbox.host, mailbox.imap_port)
    await client.wait_hello_from_server()
    try:
        for step in (client.login(mailbox.address, mailbox.password), client.select(folder)):
            response = await step
            if response.result != "OK":
                raise ServerError(f"IMAP {mailbox.address}: {response.result} {response.lines}")
        response = await client.uid("fetch", "1:*", "(BODY.PEEK[])")
        if response.result != "OK":
            raise ServerError(f"IMAP fetch {mailbox.address}: {response.lines}")
        # Each message's literal comes as a bytearray line; status lines are bytes.
        parser = BytesParser(policy=policy.default)
        return [
            parser.parsebytes(bytes(line)) for line in response.lines if isinstance(line, bytearray)
        ]
    finally:
        await client.logout()
