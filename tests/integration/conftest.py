"""Fixtures for integration tests: a real ternd on free loopback ports, with its own
configuration, spool and Maildirs in a temporary folder.

    def test_x(ternd):             # started with the contract configuration
        with ternd.smtp() as s: ...
        ternd.wait_messages("alice")

    def test_y(make_ternd):        # a custom instance
        t = make_ternd(extra="max_errors = 3", start=False); t.start()
"""
import os
import pathlib
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("TERN_BUILD", ROOT / "build"))
TERND = BUILD / "ternd"
TERNCTL = BUILD / "ternctl"
SENDMAIL = BUILD / "tern-sendmail"

PASSWORD = "secret"
# SHA-512-crypt of "secret" (any crypt(3) hash works; this one is fixed so tests are stable)
HASH = "$6$terntest$IHbodl3w4qofC9ddgI.0xZhD.PLqRYsGC48oIBM05xJjoTuQ.zVWRsk3S2/XhMPeCC3BhazT0W/9t0P2rtTMo/"

DEFAULT_USERS = f"alice:{HASH}\nbob:{HASH}\ncarol\ndave\npostmaster\n"
DEFAULT_ALIASES = "team: alice, bob\nall: team, carol\n"


_ports_handed_out = set()


def free_port():
    """A loopback TCP port free now, and never handed out before in this test run (the
    kernel may offer a port again as soon as the probe socket is closed: two listeners of
    one ternd on the same port would fail its start)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port
    raise RuntimeError("no fresh loopback port")


class Ternd:
    """One ternd process and its folder."""

    def __init__(self, base, extra="", domains="", listeners="", users=DEFAULT_USERS,
                 aliases=DEFAULT_ALIASES, smtp_port=None, sub_port=None):
        self.dir = pathlib.Path(base)
        self.auto_ports = smtp_port is None and sub_port is None
        self.smtp_port = smtp_port or free_port()
        self.sub_port = sub_port or free_port()
        self.conf = self.dir / "ternd.conf"
        self.spool = self.dir / "spool"
        self.logfile = self.dir / "ternd.log"
        self.proc = None
        self.extra = extra
        self.domains = domains
        self.listeners = listeners
        (self.dir / "users").write_text(users)
        (self.dir / "aliases").write_text(aliases)
        self.write_config()

    def config_text(self):
        # The contract configuration of issue 2, as written, plus what a test adds.
        return f"""hostname = mx.example.test
spool = spool
log = stderr
log_level = debug
{self.extra}

[listen mx]
address = 127.0.0.1:{self.smtp_port}
role = mx

[listen submission]
address = 127.0.0.1:{self.sub_port}
role = submission
{self.listeners}

[domain example.test]
mailboxes = mail/%d/%u
users = users
aliases = aliases
{self.domains}
"""

    def write_config(self):
        self.conf.write_text(self.config_text())

    # ---- process control ----

    def start(self, timeout=15, _tries=3):
        first = self.proc is None
        self.log_fh = open(self.logfile, "ab")
        logged = self.logfile.stat().st_size
        self.proc = subprocess.Popen([str(TERND), "-F", "-c", str(self.conf)],
                                     stdout=self.log_fh, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                own = self.log()[logged:]
                if ("Address already in use" in own and first and self.auto_ports
                        and _tries > 1):
                    # someone outside this test run took a port between free_port() and
                    # the bind: take new ones (nothing has used these yet)
                    self.smtp_port, self.sub_port = free_port(), free_port()
                    self.write_config()
                    self.proc = None
                    return self.start(timeout, _tries - 1)
                raise RuntimeError(f"ternd exited with {self.proc.returncode}:\n{self.log()}")
            if "event=start " in self.log() and self.port_open(self.smtp_port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"ternd did not start in {timeout}s:\n{self.log()}")

    def port_open(self, port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(2)
                s.recv(512)
                s.sendall(b"QUIT\r\n")
                # read until the server closes: then this probe no longer counts as a
                # session (tests of session limits start right after)
                while s.recv(512):
                    pass
            return True
        except OSError:
            return False

    def stop(self, timeout=30):
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("ternd did not stop on SIGTERM")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- observation ----

    def log(self):
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle, timeout=10, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.log().count(needle) >= count:
                return True
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged {count} time(s) in {timeout}s:\n"
                             f"{self.log()[-4000:]}")

    def maildir(self, user, domain="example.test"):
        return self.dir / "mail" / domain / user

    def messages(self, user, domain="example.test"):
        md = self.maildir(user, domain)
        out = []
        for sub in ("new", "cur"):
            d = md / sub
            if d.is_dir():
                out.extend(sorted(d.iterdir()))
        return out

    def wait_messages(self, user, count=1, domain="example.test", timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.messages(user, domain)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{user}@{domain}: {len(self.messages(user, domain))} messages, "
                             f"expected {count}\n{self.log()[-4000:]}")

    # ---- clients ----

    def smtp(self, port=None, **kw):
        return smtplib.SMTP("127.0.0.1", port or self.smtp_port, timeout=30, **kw)

    def ctl(self, *args, input=None, timeout=30):
        return subprocess.run([str(TERNCTL), "-c", str(self.conf), *args], input=input,
                              capture_output=True, text=True, timeout=timeout)

    def sendmail(self, *args, input=b"", timeout=30):
        return subprocess.run([str(SENDMAIL), "-C", str(self.conf), *args], input=input,
                              capture_output=True, timeout=timeout)


class RawClient:
    """A line-level SMTP client for exact wire exchanges."""

    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def reply(self):
        """Read one whole (possibly multi-line) reply; returns (code, text)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed; had {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode(errors="replace"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        return int(lines[-1][:3]), "\n".join(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def closed(self, timeout=5):
        """True if the server closed the connection (after any pending replies)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_base():
    base = tempfile.mkdtemp(prefix="tern-it-")
    # ternd drops to the "tern" user when started as root: let it read its configuration
    os.chmod(base, 0o755)
    return base


@pytest.fixture
def make_ternd(request):
    made = []

    def factory(start=True, **kw):
        t = Ternd(make_base(), **kw)
        made.append(t)
        if start:
            t.start()
        return t

    yield factory
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    for t in made:
        code = t.stop()
        if code not in (0, None, -9) and not failed:
            pytest.fail(f"ternd exited with {code} on SIGTERM:\n{t.log()[-4000:]}")
        if not failed and not os.environ.get("TERN_KEEP"):
            shutil.rmtree(t.dir, ignore_errors=True)
        else:
            print(f"kept {t.dir}")


@pytest.fixture
def ternd(make_ternd):
    return make_ternd()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
