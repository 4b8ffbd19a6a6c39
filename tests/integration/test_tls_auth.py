"""TLS, AUTH and the relay policy (issue 6) against a real ternd, with real clients:
openssl s_client, swaks (--tls, --tls-on-connect, --auth), msmtp (as a mail program is set
up: verifying the certificate), smtplib starttls() + login()."""
import base64
import email
import socket
import ssl
import subprocess
import time

import pytest

from conftest import PASSWORD, RawClient, free_port


def make_cert(d, cn="mx.example.test"):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", f"/CN={cn}",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    (d / "key.pem").chmod(0o644)  # readable by the run user for reloads


@pytest.fixture
def tls_ternd(make_ternd):
    t = make_ternd(start=False)
    make_cert(t.dir)
    t.smtps_port = free_port()
    t.extra = "tls_cert = cert.pem\ntls_key = key.pem"
    t.listeners = f"\n[listen smtps]\naddress = 127.0.0.1:{t.smtps_port}\nrole = submissions\n"
    t.write_config()
    t.start()
    return t


def client_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_starttls_then_auth_with_smtplib(tls_ternd):
    t = tls_ternd
    with t.smtp(port=t.sub_port) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")  # never offered in plaintext
        s.starttls(context=client_ctx())
        s.ehlo("client.test")
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["bob@example.test"],
                   b"Subject: submitted\r\n\r\nover TLS\r\n")
    data = t.wait_messages("bob")[0].read_bytes()
    msg = email.message_from_bytes(data)
    rcv = msg["Received"]
    assert "with ESMTPSA" in rcv
    assert "TLSv1." in rcv and "cipher=" in rcv


def test_auth_login_and_bare_user_name(tls_ternd):
    t = tls_ternd
    with t.smtp(port=t.sub_port) as s:
        s.starttls(context=client_ctx())
        s.ehlo("client.test")
        s.user, s.password = "alice", PASSWORD  # bare name: unique among the domains
        code, _ = s.auth("LOGIN", s.auth_login)
        assert code == 235


def test_auth_refused_without_tls(tls_ternd):
    t = tls_ternd
    with RawClient(t.sub_port) as c:
        c.reply()
        c.cmd("EHLO client.test")
        creds = base64.b64encode(f"\0alice@example.test\0{PASSWORD}".encode()).decode()
        code, text = c.cmd(f"AUTH PLAIN {creds}")
        assert code == 538 and "5.7.11" in text
        code, text = c.cmd("MAIL FROM:<alice@example.test>")
        assert code == 530 and "5.7.0" in text


def test_wrong_password_and_lockout(tls_ternd):
    t = tls_ternd
    ctx = client_ctx()
    raw = socket.create_connection(("127.0.0.1", t.smtps_port), timeout=30)
    s = ctx.wrap_socket(raw)
    f = s.makefile("rb")

    def cmd(line):
        s.sendall(line.encode() + b"\r\n")
        return read()

    def read():
        lines = []
        while True:
            line = f.readline().decode()
            lines.append(line)
            if line[3:4] != "-":
                return int(line[:3]), "".join(lines)

    assert read()[0] == 220
    assert cmd("EHLO client.test")[0] == 250
    bad = base64.b64encode(b"\0alice@example.test\0wrong").decode()
    nouser = base64.b64encode(b"\0nobody@example.test\0wrong").decode()
    code1, text1 = cmd(f"AUTH PLAIN {bad}")
    code2, text2 = cmd(f"AUTH PLAIN {nouser}")
    assert code1 == code2 == 535
    # never a hint whether the user exists
    assert text1.replace("\r\n", "") == text2.replace("\r\n", "")
    assert "5.7.8" in text1
    code, text = cmd(f"AUTH PLAIN {bad}")
    assert code == 535
    code, text = read()
    assert code == 421
    s.close()


def test_auth_cancel_and_bad_base64(tls_ternd):
    t = tls_ternd
    with t.smtp(port=t.sub_port) as s:
        s.starttls(context=client_ctx())
        s.ehlo("client.test")
        assert s.docmd("AUTH PLAIN")[0] == 334
        assert s.docmd("*")[0] == 501
        assert s.docmd("AUTH PLAIN")[0] == 334
        assert s.docmd("%%%not base64%%%")[0] == 501
        assert s.docmd("AUTH BOGUS")[0] == 504


def test_swaks_tls_on_connect_and_auth(tls_ternd):
    t = tls_ternd
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{t.smtps_port}", "--tls-on-connect",
                        "--auth", "PLAIN", "--auth-user", "bob@example.test",
                        "--auth-password", PASSWORD, "--from", "bob@example.test",
                        "--to", "alice@example.test"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "235 2.7.0" in r.stdout
    t.wait_messages("alice")


@pytest.mark.parametrize("account", ["starttls", "implicit"])
def test_msmtp_submits_with_verified_tls_and_auth(tls_ternd, account):
    # msmtp, as in a user's ~/.msmtprc: it checks the certificate against the trust file and
    # the name mx.example.test, authenticates, and exits 0 only on the final 250
    t = tls_ternd
    rc = t.dir / "msmtprc"
    rc.write_text(f"""defaults
tls on
tls_trust_file {t.dir / "cert.pem"}
tls_host_override mx.example.test
auth on
user alice@example.test
password {PASSWORD}
from alice@example.test

account starttls
host 127.0.0.1
port {t.sub_port}
tls_starttls on
auth plain

account implicit
host 127.0.0.1
port {t.smtps_port}
tls_starttls off
auth login
""")
    rc.chmod(0o600)  # msmtp refuses a password file others can read
    msg = f"From: alice@example.test\nTo: bob@example.test\nSubject: msmtp {account}\n\nhi\n"
    r = subprocess.run(["msmtp", "-C", str(rc), "-a", account, "bob@example.test"],
                       input=msg, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    data = t.wait_messages("bob")[0].read_bytes()
    assert f"Subject: msmtp {account}".encode() in data
    assert b"with ESMTPSA" in data


def test_swaks_starttls_on_mx(tls_ternd):
    t = tls_ternd
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{t.smtp_port}", "--tls",
                        "--from", "someone@remote.test", "--to", "carol@example.test"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    data = t.wait_messages("carol")[0].read_bytes()
    assert b"with ESMTPS" in data


def test_openssl_s_client_starttls(tls_ternd):
    t = tls_ternd
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{t.smtp_port}",
                        "-starttls", "smtp", "-brief"], input="QUIT\r\n", capture_output=True,
                       text=True, timeout=30)
    out = r.stdout + r.stderr
    assert "Protocol version: TLSv1.3" in out or "Protocol version: TLSv1.2" in out, out
    # TLS 1.1 and older are refused
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{t.smtps_port}",
                        "-tls1_1", "-brief"], input="", capture_output=True, text=True,
                       timeout=30)
    assert "Protocol version" not in r.stdout + r.stderr


def test_starttls_injection_discarded(tls_ternd):
    """CVE-2011-0411: commands pipelined in plaintext after STARTTLS must not be run."""
    t = tls_ternd
    raw = socket.create_connection(("127.0.0.1", t.smtp_port), timeout=10)
    f = raw.makefile("rb")
    assert f.readline().startswith(b"220")
    raw.sendall(b"EHLO client.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@evil.test>\r\n")
    assert f.readline().startswith(b"220")
    s = client_ctx().wrap_socket(raw)
    s.sendall(b"NOOP\r\n")
    first = s.recv(4096)
    # the first reply over TLS answers our NOOP, not the injected RSET or MAIL
    assert first.startswith(b"250 2.0.0 Ok\r\n"), first
    assert b"2.1.0" not in first
    s.sendall(b"MAIL FROM:<a@b.test>\r\n")
    assert s.recv(4096).startswith(b"503")  # EHLO is needed again after STARTTLS
    s.close()


def test_truncated_handshake_does_not_block_others(tls_ternd):
    t = tls_ternd
    stuck = []
    for _ in range(5):
        c = socket.create_connection(("127.0.0.1", t.smtps_port), timeout=10)
        c.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello, cut short
        stuck.append(c)
    started = time.time()
    with t.smtp() as s:
        s.sendmail("x@remote.test", ["alice@example.test"], b"Subject: alive\r\n\r\nx\r\n")
    assert time.time() - started < 10
    t.wait_messages("alice")
    for c in stuck:
        c.close()


def test_sighup_reloads_certificate(tls_ternd):
    t = tls_ternd

    def served_cn():
        ctx = client_ctx()
        with socket.create_connection(("127.0.0.1", t.smtps_port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                der = s.getpeercert(binary_form=True)
        pem = ssl.DER_cert_to_PEM_cert(der)
        r = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem,
                           capture_output=True, text=True)
        return r.stdout

    assert "mx.example.test" in served_cn()
    # a session open across the reload keeps working
    keep = RawClient(t.smtp_port)
    keep.reply()
    make_cert(t.dir, cn="renewed.example.test")
    t.reload()
    t.wait_log("event=reload.done")
    assert "renewed.example.test" in served_cn()
    assert keep.cmd("NOOP")[0] == 250
    keep.close()


# ---- the relay policy ----

@pytest.mark.parametrize("rcpt,code", [
    ("someone@elsewhere.test", 554),            # not ours: relay denied
    ("user%elsewhere.test@example.test", 550),  # percent hack
    ("elsewhere.test!user@example.test", 550),  # bang path
    ("@example.test:user@elsewhere.test", 553),  # source route
    ('"user@elsewhere.test"@example.test', 550),  # quoted local part holding @
])
def test_open_relay_tricks_refused(ternd, rcpt, code):
    with RawClient(ternd.smtp_port) as c:
        c.reply()
        c.cmd("EHLO attacker.test")
        assert c.cmd("MAIL FROM:<spammer@elsewhere.test>")[0] == 250
        got, text = c.cmd(f"RCPT TO:<{rcpt}>")
        assert got == code, text
        assert "5.7.1" in text
        assert c.cmd("DATA")[0] == 503  # nothing accepted


def test_trusted_network_may_relay(make_ternd):
    t = make_ternd(extra="trusted_networks = 127.0.0.1/32")
    with RawClient(t.smtp_port) as c:
        c.reply()
        c.cmd("EHLO inside.test")
        c.cmd("MAIL FROM:<app@inside.test>")
        assert c.cmd("RCPT TO:<someone@elsewhere.test>")[0] == 250


def test_submission_sender_must_belong_to_user(tls_ternd):
    t = tls_ternd
    with t.smtp(port=t.sub_port) as s:
        s.starttls(context=client_ctx())
        s.ehlo("client.test")
        s.login("alice@example.test", PASSWORD)
        code, text = s.docmd("MAIL FROM:<bob@example.test>")
        assert code == 553 and b"5.7.1" in text
        assert s.docmd("MAIL FROM:<alice+lists@example.test>")[0] == 250
        s.docmd("RSET")
        assert s.docmd("MAIL FROM:<team@example.test>")[0] == 250  # an alias leading to alice
        s.docmd("RSET")
        # an authenticated user may send anywhere
        s.docmd("MAIL FROM:<alice@example.test>")
        assert s.docmd("RCPT TO:<friend@elsewhere.test>")[0] == 250
