"""Real peers for the outbound delivery tests (test_outbound.py), all on loopback:

    Unbound      Debian's unbound serving test zones (local-data) on 127.0.0.1:PORT
    CapturePeer  an aiosmtpd server on 127.0.0.x:PORT (or [::1]) that records every
                 connection (raw bytes as received, EHLO count) and every message, with
                 optional PIPELINING, STARTTLS, AUTH and scripted RCPT replies
    GreetingPeer a socket server that answers every connection with a fixed greeting
                 (e.g. "421 busy") and closes
    make_cert    a self-signed certificate made with openssl(1)
"""
import os
import pathlib
import random
import socket
import ssl
import struct
import subprocess
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

UNBOUND = "/usr/sbin/unbound"


def free_port_on(hosts):
    """A TCP port free on every address of hosts (tried at random)."""
    for _ in range(200):
        port = random.randint(20000, 60000)
        ok = True
        for h in hosts:
            fam = socket.AF_INET6 if ":" in h else socket.AF_INET
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free port")


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- DNS ----

def dns_query_packet(name, qtype=1, qid=0x1234):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", qtype, 1)


class Unbound:
    """unbound in the foreground with the given local-data records; stop() ends it by PID."""

    def __init__(self, folder, records, zones=("example.",)):
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        # a free port can be taken between our probe and unbound's bind: try a few
        for attempt in range(3):
            try:
                self.start(records, zones)
                return
            except RuntimeError:
                if attempt == 2:
                    raise
                self.stop()

    def start(self, records, zones):
        self.port = free_udp_port()
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            f"  port: {self.port}",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.folder}"',
            '  pidfile: ""',
            "  use-syslog: no",
            f'  logfile: "{self.folder / "unbound.log"}"',
            "  verbosity: 1",
            "  do-ip6: no",
            "  access-control: 127.0.0.0/8 allow",
            '  module-config: "iterator"',
            "  num-threads: 1",
        ]
        for z in zones:
            name, kind = z if isinstance(z, tuple) else (z, "static")
            lines.append(f'  local-zone: "{name}" {kind}')
        for r in records:
            lines.append(f'  local-data: "{r}"')
        lines += ["remote-control:", "  control-enable: no", ""]
        self.conf = self.folder / "unbound.conf"
        self.conf.write_text("\n".join(lines))
        first = zones[0][0] if isinstance(zones[0], tuple) else zones[0]
        self.probe = "ready." + first.rstrip(".")
        check = subprocess.run(["/usr/sbin/unbound-checkconf", str(self.conf)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"unbound.conf: {check.stdout}{check.stderr}")
        self.proc = subprocess.Popen([UNBOUND, "-d", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("unbound exited: " + self.log())
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                try:
                    s.sendto(dns_query_packet(self.probe), ("127.0.0.1", self.port))
                    if s.recv(512):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("unbound did not answer: " + self.log())

    def log(self):
        try:
            return (self.folder / "unbound.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait()


# ---- SMTP peers ----

def make_cert(folder, cn="peer.test"):
    """A self-signed certificate for cn, readable by everyone (ternd reads a trust store
    given by SSL_CERT_FILE after dropping root): give it a folder that is not private."""
    folder = pathlib.Path(folder)
    cert, key = folder / f"{cn}.crt", folder / f"{cn}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    os.chmod(cert, 0o644)
    return cert, key


class _RecordingSMTP(SMTP):
    """aiosmtpd's server, keeping every byte each connection sent as it arrived."""

    def connection_made(self, transport):
        if getattr(self, "rec", None) is None:
            self.rec = {"chunks": [], "ehlo": 0, "tls": False, "peer": None,
                        "opened": time.monotonic(), "closed": None}
            self.event_handler.conns.append(self.rec)
        super().connection_made(transport)
        self.rec["peer"] = self.session.peer
        if self.session.ssl is not None:
            self.rec["tls"] = True

    def connection_lost(self, exc):
        self.rec["closed"] = time.monotonic()
        super().connection_lost(exc)

    def data_received(self, data):
        self.rec["chunks"].append(bytes(data))
        super().data_received(data)


class _Controller(Controller):
    def factory(self):
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)


class _Handler:
    def __init__(self, peer):
        self.peer = peer
        self.conns = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        server.rec["ehlo"] += 1
        session.host_name = hostname
        extra = list(self.peer.extra_ehlo)
        if self.peer.pipelining:
            extra.append("PIPELINING")
        return responses[:-1] + [f"250-{e}" for e in extra] + responses[-1:]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        script = self.peer.rcpt_script.get(address.lower())
        with self.peer.lock:
            self.peer.rcpt_log.append(address)
            if script:
                reply = script.pop(0)
                if reply is not None:
                    return reply
        if self.peer.rcpt_limit and len(envelope.rcpt_tos) >= self.peer.rcpt_limit:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        if self.peer.data_reply:
            return self.peer.data_reply
        msg = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "data": envelope.original_content or b"",
            "conn": self.conns.index(server.rec),
            "tls": session.ssl is not None,
            "auth": session.authenticated,
        }
        with self.peer.lock:
            self.peer.messages.append(msg)
        return "250 2.0.0 Ok: queued as PEER%d" % len(self.peer.messages)


class CapturePeer:
    """An aiosmtpd server on (host, port) recording what it receives.

    rcpt_script: {address: [reply or None, ...]}, one entry used per RCPT of that address
    (None: accept); afterwards the address is accepted.
    rcpt_limit: recipients per transaction; the RCPTs beyond get 452 4.5.3.
    """

    def __init__(self, host, port, name="peer.test", pipelining=True, tls=None, auth=None,
                 rcpt_script=None, extra_ehlo=(), smtputf8=False, data_reply=None,
                 rcpt_limit=0):
        self.host, self.port, self.name = host, port, name
        self.rcpt_limit = rcpt_limit
        self.pipelining = pipelining
        self.extra_ehlo = extra_ehlo
        self.rcpt_script = {k.lower(): list(v) for k, v in (rcpt_script or {}).items()}
        self.data_reply = data_reply
        self.messages, self.rcpt_log = [], []
        self.lock = threading.Lock()
        self.auth_seen = []
        self.handler = _Handler(self)
        kw = {"server_hostname": name, "enable_SMTPUTF8": smtputf8, "ready_timeout": 10}
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            kw["tls_context"] = ctx
        if auth:
            user, password = auth

            def authenticator(server, session, envelope, mechanism, data):
                ok = (isinstance(data, LoginPassword) and data.login == user.encode()
                      and data.password == password.encode())
                self.auth_seen.append((mechanism, ok, session.ssl is not None))
                return AuthResult(success=ok)

            kw["authenticator"] = authenticator
            kw["auth_require_tls"] = True
            kw["auth_required"] = True
        self.controller = _Controller(self.handler, hostname=host, port=port, **kw)
        self.controller.start()

    def sessions(self):
        """Connections that got as far as EHLO (the controller's own start-up probe does not)."""
        return [c for c in self.handler.conns if c["ehlo"] > 0]

    def wait_messages(self, count=1, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"{self.host}: {len(self.messages)} messages, expected {count}")

    def stop(self):
        self.controller.stop()


class GreetingPeer:
    """Answers each connection with one greeting line and closes it."""

    def __init__(self, host, port, greeting="421 4.3.2 Service not available, try later"):
        self.greeting = greeting
        self.connections = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            try:
                c.sendall((self.greeting + "\r\n").encode())
                c.settimeout(2)
                try:
                    c.recv(1024)  # a QUIT, maybe
                except OSError:
                    pass
            finally:
                c.close()

    def stop(self):
        self.running = False
        self.thread.join(5)
        self.sock.close()
