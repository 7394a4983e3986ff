"""A private Dovecot IMAP server for one test: its config, user, mail, logs and processes under one directory."""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import imaplib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

DOVECOT = Path("/usr/sbin/dovecot")
DOVEADM = Path("/usr/bin/doveadm")
NOT_INSTALLED = "dovecot is not installed: run .ci/run or apt-get install dovecot-core dovecot-imapd"

START_TIMEOUT = 20.0  # seconds for the master to accept IMAP connections
STOP_TIMEOUT = 10.0
IMAP_TIMEOUT = 10.0  # per socket operation of the helper's own imaplib sessions
PROBE_TIMEOUT = 0.5  # for a greeting while starting; a silent squatter on the port must not stall us
PORT_ATTEMPTS = 5  # a port released for Dovecot may be taken by someone else before Dovecot binds it
SUN_PATH_MAX = 107  # bytes of a unix socket path, without the NUL
NOTHING_FOUND = 68  # doveadm's exit status when, say, there was nobody to kick
LONGEST_SOCKET = "/replication-notify-fifo"  # the longest name Dovecot 2.3 puts in base_dir

# Dovecot 2.3.19's own post-login capabilities minus IDLE: `imap_capability` replaces the list whole.
CAPABILITIES_WITHOUT_IDLE = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS "
    "THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS "
    "LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH "
    "LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ "
    "NOTIFY"
)


class DovecotError(RuntimeError):
    """Dovecot did not start, or a command against it failed; the message ends with its log's tail."""


@dataclasses.dataclass(frozen=True)
class Accounts:
    """Whom Dovecot's processes and mail files belong to.

    As root, mail belongs to `nobody` (Dovecot refuses root for mail); the test's directory is private
    (pytest makes it 0700), so the mail processes chroot into the mail directory before dropping
    privileges and auth runs as root to read the passwd file. As anyone else, everything runs as the
    caller, unchrooted.
    """

    mail_uid: int
    mail_gid: int
    internal_user: str
    internal_group: str
    login_user: str
    privileged: bool

    @classmethod
    def for_current_user(cls) -> Accounts:
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            return cls(nobody.pw_uid, nobody.pw_gid, "dovecot", "dovecot", "dovenull", privileged=True)
        me = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        return cls(os.geteuid(), os.getegid(), me, group, me, privileged=False)


class Dovecot:
    """A private Dovecot IMAP server under `root`, for one test.

    One user (`user`, `password`) with a Maildir; `deliver()` drops mail in as an MDA would, the other
    helpers talk IMAP with the standard library's imaplib, as a second client would. The port stays
    the same across stop() and start(), so a client can reconnect to a restarted server.
    """

    host = "127.0.0.1"
    user = "kartabl"

    def __init__(self, root: Path, *, tls: bool = False, idle_notify: bool = True) -> None:
        if not DOVECOT.exists():
            raise DovecotError(NOT_INSTALLED)
        self.root = Path(root)
        self.tls = tls
        self.idle_notify = idle_notify
        self.password = secrets.token_urlsafe(12)
        self.port = 0
        self.accounts = Accounts.for_current_user()
        self.config_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self.mail_root = self.root / "mail"
        self.home = self.mail_root / self.user
        self._output_path = self.root / "dovecot.out"  # what the master prints before its log is up
        self.greeting = f"Kartabl test IMAP {secrets.token_hex(6)} ready"  # tells this server from a squatter
        self.base_dir = self._choose_base_dir()
        self._process: subprocess.Popen[bytes] | None = None
        self._prepared = False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Dovecot {self.host}:{self.port} {state} root={self.root}>"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the master; return once it greets an IMAP client on `port`."""
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._prepare()
        fixed_port = self.port != 0
        for _ in range(PORT_ATTEMPTS):
            port = self.port or _free_port(self.host)
            self._write_config(port)
            marks = self._log_marks()
            process = self._spawn()
            try:
                self._wait_until_ready(process, port, marks)
            except _PortTaken:
                _kill(process)
                continue
            except BaseException:
                _kill(process)
                raise
            self.port, self._process = port, process
            return
        taken = f"port {self.port} (kept across restarts)" if fixed_port else f"{PORT_ATTEMPTS} free ports"
        raise DovecotError(f"dovecot could not bind {taken}: address already in use\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the master and everything it started; clients get a BYE. A no-op when not running."""
        process, self._process = self._process, None
        if process is None:
            return
        # To every process but the log: the master alone only SIGQUITs its imap processes, which keep
        # their clients a second or more; SIGTERM makes each send its client a BYE and exit at once.
        for pid, name in _group_members(process.pid).items():
            if name != "dovecot/log":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        # Once its children are gone the master sleeps a fixed second for its log process: not worth waiting.
        while process.poll() is None and time.monotonic() < deadline:
            members = _group_members(process.pid)
            if {name for pid, name in members.items() if pid != process.pid} <= {"dovecot/log"}:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.01)
        _kill_group(process.pid)
        process.wait()

    def kill(self) -> None:
        """SIGKILL the master and every process it started, as a crash or power cut would.

        The whole group, because Dovecot's imap processes outlive a killed master and keep serving their
        clients. Connected clients see their connections drop without a BYE.
        """
        process, self._process = self._process, None
        if process is None:
            raise RuntimeError(f"{self!r} is not running")
        _kill(process)

    def close(self) -> None:
        """Stop, and remove the short socket directory if one had to be made outside `root`."""
        self.stop()
        if not self.base_dir.is_relative_to(self.root):
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def drop_connections(self) -> None:
        """Disconnect every logged-in IMAP client with a BYE (`doveadm kick`); the server keeps running."""
        self._doveadm("kick", self.user, allow={NOTHING_FOUND})

    def log_tail(self, lines: int = 40) -> str:
        """The end of Dovecot's log and of what the master printed, for error messages."""
        parts = []
        for path in (self._output_path, self.log_path):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}:\n" + "\n".join(text))
        return "\n".join(parts) or f"(no log in {self.root})"

    # --- mail ---------------------------------------------------------------------------------------

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        """Put a message into `folder` as a local MDA does: write it in tmp/, then rename it into new/."""
        maildir = self._maildir(folder)
        if not (maildir / "new").is_dir():
            raise DovecotError(f"no folder {folder!r} in {self.home}: call create_folder() first")
        now = time.time()
        name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}R{secrets.token_hex(4)}.kartabl-test"
        tmp = maildir / "tmp" / name
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(raw)
        self._own(tmp)
        os.rename(tmp, maildir / "new" / name)

    def append(self, raw: bytes, folder: str = "INBOX") -> int:
        """APPEND `raw` to `folder` over IMAP; returns the UID the server gave it."""
        with self.session() as imap:
            typ, data = imap.append(folder, None, None, raw)
            _expect_ok(typ, data, f"APPEND to {folder}")
        found = re.search(rb"\[APPENDUID \d+ (\d+)\]", data[0] or b"")
        if found is None:
            raise DovecotError(f"APPEND to {folder} answered without APPENDUID: {data!r}")
        return int(found.group(1))

    def messages(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags of every message in `folder`. \\Recent is left out: it depends on who looked first."""
        with self.session() as imap:
            _examine(imap, folder)
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS)")
            _expect_ok(typ, data, f"UID FETCH in {folder}")
        flags = {}
        for line in data:
            if line is None:
                continue
            head = line[0] if isinstance(line, tuple) else line
            uid, found = re.search(rb"UID (\d+)", head), re.search(rb"FLAGS \(([^)]*)\)", head)
            if uid is None or found is None:
                raise DovecotError(f"unexpected FETCH line {head!r}")
            flags[int(uid.group(1))] = set(found.group(1).decode().split()) - {"\\Recent"}
        return flags

    def fetch_all(self, folder: str = "INBOX") -> list[bytes]:
        """The full text of every message in `folder`, in UID order, without setting \\Seen."""
        with self.session() as imap:
            _examine(imap, folder)
            typ, data = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            _expect_ok(typ, data, f"UID FETCH in {folder}")
        bodies = []
        for part in data:
            if isinstance(part, tuple):
                uid = re.search(rb"UID (\d+)", part[0])
                if uid is None:
                    raise DovecotError(f"unexpected FETCH line {part[0]!r}")
                bodies.append((int(uid.group(1)), part[1]))
        return [body for _, body in sorted(bodies)]

    def create_folder(self, name: str) -> None:
        """Create folder `name` (plain ASCII, `.` separates levels); a folder that exists is left alone."""
        with self.session() as imap:
            typ, data = imap.create(name)
        if typ != "OK" and b"ALREADYEXISTS" not in (data[0] or b""):
            raise DovecotError(f"CREATE {name}: {typ} {data!r}")

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.session() as imap:
            typ, data = imap.status(folder, "(UIDVALIDITY)")
            _expect_ok(typ, data, f"STATUS {folder}")
        found = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
        if found is None:
            raise DovecotError(f"STATUS {folder} answered {data!r}")
        return int(found.group(1))

    def reset_uidvalidity(self, folder: str = "INBOX", *, first_uid: int = 1) -> None:
        """Give `folder` a new UIDVALIDITY and renumber its messages from `first_uid`, as a rebuilt server does.

        Dovecot is stopped (clients get a BYE), the folder's UID list and indexes are removed, a UID list
        naming only the new UIDVALIDITY and next UID is written, and Dovecot is started again on the same
        port. Messages, their flags (kept in the file names) and their order stay. With the default
        `first_uid=1` the new UIDs repeat the old ones, so a client that ignores UIDVALIDITY and keeps
        its highest UID seen would skip later mail; a larger `first_uid` makes the renumbering visible.
        """
        if first_uid < 1:
            raise ValueError(f"UIDs start at 1, not {first_uid}")
        maildir = self._maildir(folder)
        if not (maildir / "cur").is_dir():
            raise DovecotError(f"no folder {folder!r} in {self.home}")
        was_running = self.running
        self.stop()
        old = _uidlist_validity(maildir / "dovecot-uidlist")
        doomed = [*maildir.glob("dovecot.index*"), *self.home.glob("dovecot.list.index*")]
        for path in doomed:
            path.unlink()
        uidlist = maildir / "dovecot-uidlist"
        uidlist.write_text(f"3 V{max(int(time.time()), old + 1)} N{first_uid}\n")
        self._own(uidlist)
        if was_running:
            self.start()

    @contextlib.contextmanager
    def session(self) -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib client, logged out afterwards."""
        if self.tls:
            imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                self.host, self.port, ssl_context=self.client_ssl_context(), timeout=IMAP_TIMEOUT)
        else:
            imap = imaplib.IMAP4(self.host, self.port, timeout=IMAP_TIMEOUT)
        try:
            imap.login(self.user, self.password)
            yield imap
        except BaseException:
            imap.shutdown()
            raise
        imap.logout()

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this instance's own CA (and so verifies 127.0.0.1)."""
        if not self.tls:
            raise RuntimeError("this Dovecot was started without tls=True")
        return ssl.create_default_context(cafile=self.root / "tls" / "ca.pem")

    # --- internals ----------------------------------------------------------------------------------

    def _choose_base_dir(self) -> Path:
        base_dir = self.root / "run"
        if len(os.fsencode(base_dir)) + len(LONGEST_SOCKET) <= SUN_PATH_MAX:
            return base_dir
        # Unix socket paths are short; a deep temporary directory would not fit Dovecot's sockets.
        return Path(tempfile.mkdtemp(prefix="kartabl-dovecot-"))

    def _prepare(self) -> None:
        if self._prepared:
            return
        for path in (self.root / "state", self.base_dir, self.mail_root):
            path.mkdir(parents=True, exist_ok=True)
        self.mail_root.chmod(0o755)  # the chroot's "/" for mail processes when privileged
        (self.root / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n")
        (self.root / "passwd").chmod(0o600)
        for sub in ("cur", "new", "tmp"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        for path in (self.home, self.home / "cur", self.home / "new", self.home / "tmp"):
            path.chmod(0o700)
            self._own(path)
        if self.tls:
            _make_certificates(self.root / "tls")
        self._prepared = True

    def _own(self, path: Path) -> None:
        if self.accounts.privileged:
            os.chown(path, self.accounts.mail_uid, self.accounts.mail_gid)

    def _maildir(self, folder: str) -> Path:
        if folder.upper() == "INBOX":
            return self.home
        if not folder.isascii() or "/" in folder:
            raise ValueError(f"folder names here are plain ASCII without '/': {folder!r}")
        return self.home / f".{folder}"  # Maildir++: one directory per folder, "." between levels

    def _write_config(self, port: int) -> None:
        self.config_path.write_text(render_config(self, port))

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self._output_path, "ab") as output:
            # A session of its own makes the master's pid the group id of everything it starts.
            return subprocess.Popen([DOVECOT, "-F", "-c", self.config_path], stdin=subprocess.DEVNULL,
                                    stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def _log_marks(self) -> dict[Path, int]:
        return {path: path.stat().st_size if path.exists() else 0 for path in (self._output_path, self.log_path)}

    def _logged_since(self, marks: dict[Path, int]) -> str:
        text = []
        for path, size in marks.items():
            if path.exists():
                with path.open("rb") as file:
                    file.seek(size)
                    text.append(file.read().decode(errors="replace"))
        return "".join(text)

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int, marks: dict[Path, int]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pause = 0.005
        while time.monotonic() < deadline:
            if process.poll() is not None:
                if "Address already in use" in self._logged_since(marks):
                    raise _PortTaken
                raise DovecotError(f"dovecot exited with status {process.returncode} before accepting "
                                   f"connections on port {port}\n{self.log_tail()}")
            if self._greets(port):
                return
            with contextlib.suppress(subprocess.TimeoutExpired):  # waits on the master, not the clock
                process.wait(pause)
            pause = min(pause * 2, 0.1)
        raise DovecotError(f"dovecot did not accept connections on port {port} within {START_TIMEOUT}s\n"
                           f"{self.log_tail()}")

    def _greets(self, port: int) -> bool:
        """Whether this instance (not some other server on the port) sends its greeting."""
        try:
            with socket.create_connection((self.host, port), timeout=PROBE_TIMEOUT) as sock:
                if self.tls:
                    with self.client_ssl_context().wrap_socket(sock, server_hostname=self.host) as tls:
                        return self.greeting.encode() in tls.recv(4096)
                return self.greeting.encode() in sock.recv(4096)
        except OSError:  # refused, reset, timed out, or a TLS handshake with some other server
            return False

    def _doveadm(self, *args: str, allow: Collection[int] = ()) -> str:
        result = subprocess.run([DOVEADM, "-c", self.config_path, *args], capture_output=True, text=True,
                                timeout=STOP_TIMEOUT, check=False)
        if result.returncode != 0 and result.returncode not in allow:
            raise DovecotError(f"doveadm {' '.join(args)} exited with {result.returncode}: "
                               f"{result.stderr.strip()}\n{self.log_tail()}")
        return result.stdout


class _PortTaken(Exception):
    """Dovecot found its port taken between our release of it and its bind."""


def render_config(dovecot: Dovecot, port: int) -> str:
    """The whole dovecot.conf of one instance: nothing is read from /etc/dovecot."""
    accounts = dovecot.accounts
    root = dovecot.root
    if accounts.privileged:
        # "/./" in a home asks for a chroot at that point, which valid_chroot_dirs must allow.
        home, chroots = f"{dovecot.mail_root}/./%u", f"valid_chroot_dirs = {dovecot.mail_root}\n"
        services = "service auth {\n  user = root\n}\n"  # to read the passwd file in the private root
    else:
        home, chroots = f"{dovecot.mail_root}/%u", ""
        services = "".join(f"service {name} {{\n  chroot =\n}}\n" for name in ("imap-login", "anvil", "ipc"))
    plain_port, tls_port = (0, port) if dovecot.tls else (port, 0)
    if dovecot.tls:
        tls = f"ssl = required\nssl_cert = <{root}/tls/server.pem\nssl_key = <{root}/tls/server.key\n"
    else:
        tls = "ssl = no\n"
    capability = "" if dovecot.idle_notify else f"imap_capability = {CAPABILITIES_WITHOUT_IDLE}\n"
    return f"""\
# Written by tests/servers/dovecot.py for one test; nothing here comes from /etc/dovecot.
base_dir = {dovecot.base_dir}
state_dir = {root}/state
log_path = {dovecot.log_path}
listen = {dovecot.host}
protocols = imap
login_greeting = {dovecot.greeting}
{tls}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={accounts.mail_uid} gid={accounts.mail_gid} home={home}
}}
mail_location = maildir:~
mail_fsync = never
first_valid_uid = {accounts.mail_uid}
first_valid_gid = {accounts.mail_gid}
default_internal_user = {accounts.internal_user}
default_internal_group = {accounts.internal_group}
default_login_user = {accounts.login_user}
{chroots}
# New mail reaches IDLE clients through inotify at once; this is only the fallback check.
mailbox_idle_check_interval = 1 secs
{capability}
protocol imap {{
  mail_max_userip_connections = 100
}}
service anvil {{
  # No socket, no per-IP penalty: tests try wrong passwords from 127.0.0.1 on purpose, and each would
  # double the wait for the next failure (2 s, 4 s, ...). A failure is still answered after ~0.5 s.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {plain_port}
  }}
  inet_listener imaps {{
    port = {tls_port}
  }}
}}
{services}"""


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _expect_ok(typ: str, data: list, what: str) -> None:
    if typ != "OK":
        raise DovecotError(f"{what}: {typ} {data!r}")


def _examine(imap: imaplib.IMAP4, folder: str) -> None:
    typ, data = imap.select(folder, readonly=True)
    _expect_ok(typ, data, f"EXAMINE {folder}")


def _uidlist_validity(path: Path) -> int:
    """The UIDVALIDITY a Maildir's dovecot-uidlist header records (0 if Dovecot never listed it)."""
    try:
        header = path.read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return 0
    found = re.search(r" V(\d+)", header)
    return int(found.group(1)) if found else 0


def _group_members(pgid: int) -> dict[int, str]:
    """Live (not zombie) processes in process group `pgid` and their names, from /proc."""
    members = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            name = Path(entry.path, "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        state, _ppid, group = stat[stat.rindex(")") + 2:].split()[:3]
        if state != "Z" and int(group) == pgid:
            members[int(entry.name)] = name.decode(errors="replace")
    return members


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a master and its whole group, then reap the master (only then may its pid be reused)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    _kill_group(process.pid)
    process.wait()


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a master's process group and wait until it is gone."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while members := _group_members(pgid):
        if time.monotonic() > deadline:
            raise DovecotError(f"dovecot processes {members} survived SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.01)


def _make_certificates(directory: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DovecotError("the openssl command is needed to make certificates for tls=True")
    directory.mkdir(exist_ok=True)
    d = directory
    (d / "server.ext").write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    new_key = ["-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    steps = [
        ["req", "-x509", *new_key, "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "2",
         "-subj", "/CN=Kartabl test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-new", *new_key, "-keyout", d / "server.key", "-out", d / "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
         "-set_serial", str(secrets.randbits(63)), "-days", "2", "-extfile", d / "server.ext",
         "-out", d / "server.pem"],
    ]
    for step in steps:
        result = subprocess.run([openssl, *step], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DovecotError(f"openssl {step[0]} failed: {result.stderr.strip()}")
