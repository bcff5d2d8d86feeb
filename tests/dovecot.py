"""A real, throwaway Dovecot for the tests (Debian `dovecot-imapd` + `dovecot-lmtpd`).

    server = Dovecot(tmp_path).start()
    try:
        server.append(b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
        ... connect to 127.0.0.1:server.port as server.user / server.password ...
    finally:
        server.close()

One instance per test: `dovecot -F -c <conf>` in a subprocess (foreground, so it dies with its
process), listening on free 127.0.0.1 ports: `port` (IMAP, STARTTLS offered), `tls_port` (IMAPS)
and `lmtp_port` (LMTP delivery to `user`). Authentication is a passwd-file with one plain
password; mail is a maildir under a temporary folder, with `INBOX`, `Processed` and `Failed`
created automatically. The TLS certificate is self-signed, made fresh (EC P-256) for
`localhost` and `127.0.0.1`; `ssl_context()` is a client context that trusts exactly it.

Running as root (as in CI containers), Dovecot refuses uid 0 for mail and login processes: the
mail belongs to `nobody`, login processes run as the packaged `dovenull`, and the instance's
folder lives under /tmp (short paths for the sockets, and reachable by those users). Running
as another user, every process runs as that user and nothing is chrooted.

`restart()` keeps the ports and the mail. `drop_connections()` kills every IMAP session (what a
server restart or a NAT timeout looks like to a client). `set_uidvalidity()` gives a mailbox a
new UIDVALIDITY and renumbers its messages, as a server migration or a rebuilt index does.
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import imaplib
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
MAILBOXES = ("INBOX", "Processed", "Failed")
START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificate(cert_path: Path, key_path: Path) -> None:
    """A self-signed certificate for localhost / 127.0.0.1 (EC P-256: fast to make)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


class Dovecot:
    """A Dovecot instance of its own; see the module docstring."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        user: str = "replies@gateway.example",
        password: str = 'correct horse "battery" staple',
    ) -> None:
        if not Path(DOVECOT).exists():
            raise RuntimeError(
                f"{DOVECOT} not found: install dovecot-imapd and dovecot-lmtpd "
                "(.ci/install-system-deps does it)"
            )
        self.user = user
        self.password = password
        self.etc = Path(tmp_path) / "dovecot"  # config, passwd, certificate, log
        self.etc.mkdir(parents=True, exist_ok=True)
        # Sockets need short paths, and as root the mail/login users need to reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="dovecot-", dir="/tmp"))
        self.root.chmod(0o755)
        self.base_dir = self.root / "run"
        self.home = self.root / "home"
        self.config_path = self.etc / "dovecot.conf"
        self.log_path = self.etc / "dovecot.log"
        self.cert_path = self.etc / "cert.pem"
        self.key_path = self.etc / "key.pem"
        self.port = _free_port()
        self.tls_port = _free_port()
        self.lmtp_port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._is_root = os.geteuid() == 0
        if self._is_root:
            self._mail_uid = pwd.getpwnam("nobody").pw_uid
            self._mail_gid = grp.getgrnam("nogroup").gr_gid
        else:
            self._mail_uid, self._mail_gid = os.getuid(), os.getgid()
        self._write_files()

    # ----------------------------------------------------------------------------------------
    # life cycle

    def start(self) -> Dovecot:
        """Start the server; returns when it greets IMAP clients (usually well under 1 s)."""
        if self._process is not None and self._process.poll() is None:
            return self
        self.base_dir.mkdir(exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: close() can end it at once
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited at start-up:\n{self.log()}")
            if self._greets(self.port):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not start in {START_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.01)

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the server (the mail stays) and wait until it has exited.

        Graceful (SIGTERM, the default) is a normal server shutdown: clients get `* BYE`;
        Dovecot's master takes about a second to finish. `graceful=False` kills the
        instance's process group at once, as a crash would.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            if graceful:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=START_TIMEOUT)
                except subprocess.TimeoutExpired:
                    graceful = False
            if not graceful:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Make sure no child (imap, lmtp, auth…) still holds a port.
        self._wait_port_free(self.port)

    def restart(self, *, graceful: bool = True) -> None:
        """Stop and start again: same ports, same mail; every client connection is cut."""
        self.stop(graceful=graceful)
        self.start()

    def close(self) -> None:
        """Stop at once and remove the instance's files."""
        self.stop(graceful=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ----------------------------------------------------------------------------------------
    # client side helpers (blocking; fine from a test or asyncio.to_thread)

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this server's certificate (hostname checked)."""
        context = ssl.create_default_context(cafile=str(self.cert_path))
        return context

    def client(self) -> imaplib.IMAP4:
        """A logged-in imaplib client (plain connection); the caller logs out."""
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        client.login(self.user, self.password)
        return client

    def append(self, raw: bytes, mailbox: str = "INBOX") -> int:
        """APPEND a message; returns its UID (from APPENDUID)."""
        client = self.client()
        try:
            typ, data = client.append(_quote(mailbox), "", None, raw)
            if typ != "OK":
                raise RuntimeError(f"APPEND to {mailbox} failed: {data!r}")
            match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            return int(match.group(1)) if match else 0
        finally:
            client.logout()

    def messages(self, mailbox: str = "INBOX") -> list[bytes]:
        """The raw messages in `mailbox`, in UID order (read without setting \\Seen)."""
        return [raw for _uid, raw in self.uid_messages(mailbox)]

    def uid_messages(self, mailbox: str = "INBOX") -> list[tuple[int, bytes]]:
        """(UID, raw message) for every message in `mailbox`, in UID order."""
        client = self.client()
        try:
            typ, data = client.select(_quote(mailbox), readonly=True)
            if typ != "OK":
                raise RuntimeError(f"SELECT {mailbox} failed: {data!r}")
            typ, data = client.uid("SEARCH", "ALL")
            uids = [int(u) for u in (data[0] or b"").split()]
            result: list[tuple[int, bytes]] = []
            for uid in uids:
                typ, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
                for item in data:
                    if isinstance(item, tuple):
                        result.append((uid, item[1]))
            return result
        finally:
            client.logout()

    def uidvalidity(self, mailbox: str = "INBOX") -> int:
        client = self.client()
        try:
            typ, data = client.status(_quote(mailbox), "(UIDVALIDITY)")
            match = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
            if typ != "OK" or match is None:
                raise RuntimeError(f"STATUS {mailbox} failed: {data!r}")
            return int(match.group(1))
        finally:
            client.logout()

    def drop_connections(self) -> None:
        """Cut every current IMAP session at once (the server stays up; new connections are
        accepted): `doveadm kick`, then SIGKILL for any of those sessions still alive."""
        sessions = set(self._imap_pids())
        subprocess.run(
            [DOVEADM, "-c", str(self.config_path), "kick", self.user],
            check=False,
            capture_output=True,
            timeout=10,
        )
        deadline = time.monotonic() + 2
        while sessions and time.monotonic() < deadline:
            sessions &= set(self._imap_pids())
            time.sleep(0.01)
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def set_uidvalidity(self, mailbox: str = "INBOX", uidvalidity: int | None = None) -> int:
        """Give `mailbox` a new UIDVALIDITY (default: the current one + 1) and renumber its
        messages from UID 1, as a rebuilt server index does. Restarts the server if it was
        running (as after a crash: clients are cut). Returns the new UIDVALIDITY."""
        was_running = self.running
        old = self.uidvalidity(mailbox) if was_running else None
        if uidvalidity is None:
            if old is None:
                raise ValueError("give uidvalidity when the server is stopped")
            uidvalidity = old + 1
        self.stop(graceful=False)
        folder = self._maildir(mailbox)
        for path in folder.iterdir():
            if path.name.startswith("dovecot.index") or path.name == "dovecot-uidlist":
                path.unlink()
        # A uidlist with no entries: Dovecot keeps this UIDVALIDITY and numbers every
        # message again from 1.
        uidlist = folder / "dovecot-uidlist"
        uidlist.write_text(f"3 V{uidvalidity} N1\n")
        os.chown(uidlist, self._mail_uid, self._mail_gid)
        if was_running:
            self.start()
        return uidvalidity

    # ----------------------------------------------------------------------------------------
    # internals

    def _maildir(self, mailbox: str) -> Path:
        base = self.home / self.user / "Maildir"
        return base if mailbox.upper() == "INBOX" else base / f".{mailbox.replace('/', '.')}"

    def _imap_pids(self) -> list[int]:
        """The pids of this instance's imap processes (children of our master)."""
        if self._process is None:
            return []
        master = self._process.pid
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == master and comm == "imap":
                pids.append(int(entry.name))
        return pids

    def _greets(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return s.recv(200).startswith(b"* OK")
        except OSError:
            return False

    def _wait_port_free(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.01)

    def _write_files(self) -> None:
        make_certificate(self.cert_path, self.key_path)
        passwd = self.root / "passwd"
        passwd.write_text(f"{self.user}:{{PLAIN}}{self.password}\n")
        passwd.chmod(0o644 if self._is_root else 0o600)
        self.home.mkdir()
        os.chown(self.home, self._mail_uid, self._mail_gid)
        (self.root / "state").mkdir()
        if self._is_root:
            internal_user, internal_group, login_user = "root", "root", "dovenull"
            first_valid_uid = 1
        else:
            internal_user = login_user = pwd.getpwuid(os.getuid()).pw_name
            internal_group = grp.getgrgid(os.getgid()).gr_name
            first_valid_uid = os.getuid()
        lines = [
            "# throwaway Dovecot for the sms311 tests",
            f"base_dir = {self.base_dir}",
            f"state_dir = {self.root / 'state'}",
            f"instance_name = sms311-test-{self.port}",
            "protocols = imap lmtp",
            "listen = 127.0.0.1",
            f"log_path = {self.log_path}",
            "ssl = yes",
            f"ssl_cert = <{self.cert_path}",
            f"ssl_key = <{self.key_path}",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "auth_failure_delay = 0",  # a wrong password answers in ~0.5 s, not 2 s
            f"default_internal_user = {internal_user}",
            f"default_internal_group = {internal_group}",
            f"default_login_user = {login_user}",
            f"first_valid_uid = {first_valid_uid}",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN username_format=%u {passwd}",
            "}",
            "userdb {",
            "  driver = static",
            f"  args = uid={self._mail_uid} gid={self._mail_gid} home={self.home}/%u",
            "}",
            "mail_location = maildir:~/Maildir",
            "namespace inbox {",
            "  inbox = yes",
            "  separator = /",
            *(f"  mailbox {name} {{\n    auto = create\n  }}" for name in MAILBOXES[1:]),
            "}",
            "service imap-login {",
            *([] if self._is_root else ["  chroot ="]),  # an unprivileged master can't chroot
            "  inet_listener imap {",
            "    address = 127.0.0.1",
            f"    port = {self.port}",
            "  }",
            "  inet_listener imaps {",
            "    address = 127.0.0.1",
            f"    port = {self.tls_port}",
            "    ssl = yes",
            "  }",
            "}",
            "service lmtp {",
            "  inet_listener lmtp {",
            "    address = 127.0.0.1",
            f"    port = {self.lmtp_port}",
            "  }",
            "}",
        ]
        if not self._is_root:  # nor chroot, nor change to root
            lines += ["service anvil {", "  chroot =", "}"]
            lines += ["service auth-worker {", f"  user = {internal_user}", "}"]
        config = "\n".join(lines) + "\n"
        self.config_path.write_text(config)


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'
