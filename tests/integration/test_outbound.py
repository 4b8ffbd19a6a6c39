"""Outbound delivery (issue 5), end to end on loopback: ternd routes mail for domains that
are not its own through a real unbound serving test zones, to real aiosmtpd peers on
127.0.0.x (and ::1), and reports outcomes (bounces land in the local sender's Maildir).

Address plan (A/AAAA records in the zone below; peers listen on a per-test port, which is
ternd's mx_port):
    127.0.0.2  mx1.fallback.example  (nothing listens: refused)
    127.0.0.3  mx2.fallback.example
    127.0.0.4  plain.example         (no MX: the A record is used)
    127.0.0.5  mx.d1.example         127.0.0.6  mx.d2.example
    127.0.0.7  mx.tls.example        (STARTTLS)
    127.0.0.8  smarthost.example     (STARTTLS + AUTH)
    127.0.0.9  mx-a.pref.example (10)  127.0.0.10  mx-b.pref.example (20)
    127.0.0.11 busy.greet.example (421 greeting)  127.0.0.12 ok.greet.example
    127.0.0.13 mx.peer.example
    127.0.0.14 mx.bin.example     (a second ternd, which offers DSN)
    ::1        v6.example (AAAA only)
    nullmx.example has "MX 0 ." (RFC 7505); nosuch.example does not exist; the server
    refuses every query under broken.example (a DNS failure: defer).
"""
import email
import os
import pathlib
import re
import shutil
import socket
import tempfile
import time
import warnings

import pytest

from outbound_peers import CapturePeer, GreetingPeer, Unbound, free_port_on, make_cert

RECORDS = [
    "fallback.example. IN MX 10 mx1.fallback.example.",
    "fallback.example. IN MX 20 mx2.fallback.example.",
    "mx1.fallback.example. IN A 127.0.0.2",
    "mx2.fallback.example. IN A 127.0.0.3",
    "plain.example. IN A 127.0.0.4",
    "d1.example. IN MX 10 mx.d1.example.",
    "mx.d1.example. IN A 127.0.0.5",
    "d2.example. IN MX 10 mx.d2.example.",
    "mx.d2.example. IN A 127.0.0.6",
    "tls.example. IN MX 10 mx.tls.example.",
    "mx.tls.example. IN A 127.0.0.7",
    "smarthost.example. IN A 127.0.0.8",
    "pref.example. IN MX 20 mx-b.pref.example.",
    "pref.example. IN MX 10 mx-a.pref.example.",
    "mx-a.pref.example. IN A 127.0.0.9",
    "mx-b.pref.example. IN A 127.0.0.10",
    "greet.example. IN MX 10 busy.greet.example.",
    "greet.example. IN MX 20 ok.greet.example.",
    "busy.greet.example. IN A 127.0.0.11",
    "ok.greet.example. IN A 127.0.0.12",
    "peer.example. IN MX 10 mx.peer.example.",
    "mx.peer.example. IN A 127.0.0.13",
    "nullmx.example. IN MX 0 .",
    "v6.example. IN AAAA ::1",
    "bin.example. IN MX 10 mx.bin.example.",
    "mx.bin.example. IN A 127.0.0.14",
    "xn--bcher-kva.example. IN MX 10 mx.peer.example.",  # bücher.example
]

ALL_HOSTS = ["127.0.0.%d" % i for i in range(2, 15)]


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    u = Unbound(tmp_path_factory.mktemp("unbound"), RECORDS,
                zones=("example.", ("broken.example.", "always_refuse")))
    yield u
    u.stop()


@pytest.fixture
def port():
    hosts = ALL_HOSTS + (["::1"] if have_ipv6_loopback() else [])
    return free_port_on(hosts)


@pytest.fixture
def certdir():
    """A folder ternd can read after dropping root (pytest's tmp_path is private)."""
    d = tempfile.mkdtemp(prefix="tern-outbound-certs-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def peers():
    made = []

    def factory(cls, *a, **kw):
        p = cls(*a, **kw)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.stop()


@pytest.fixture
def outbound(make_ternd, dns, port):
    """A ternd that relays for 127.0.0.1 and resolves through the test unbound."""

    def factory(extra="", domains="", **kw):
        conf = (f"trusted_networks = 127.0.0.1/32\ndns = {dns.address}\nmx_port = {port}\n"
                f"{extra}")
        return make_ternd(extra=conf, domains=domains, **kw)

    return factory


def send(ternd, to, subject="test", sender="alice@example.test", body="Hello.\r\n",
         mail_options=(), rcpt_options=(), headers=""):
    if isinstance(to, str):
        to = [to]
    to_header = ", ".join(to) if len(to) <= 5 else "undisclosed-recipients:;"
    msg = (f"From: {sender}\r\nTo: {to_header}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '.')}.{time.time()}@example.test>\r\n{headers}"
           f"\r\n{body}")
    with ternd.smtp() as s:
        s.ehlo("client.example.test")
        refused = s.sendmail(sender, to, msg.encode(), mail_options=list(mail_options),
                             rcpt_options=list(rcpt_options))
        assert refused == {}


def deliver_lines(ternd, rcpt=None):
    out = []
    for line in ternd.log().splitlines():
        if "event=deliver.remote " in line and (rcpt is None or f"rcpt={rcpt} " in line):
            out.append(line)
    return out


def wait_deliver_line(ternd, rcpt, needle, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in deliver_lines(ternd, rcpt):
            if needle in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no deliver.remote line for {rcpt} with {needle!r}:\n"
                         + ternd.log()[-4000:])


def dsn_report(ternd, user="alice", count=1, timeout=20):
    """The newest report in user's Maildir, as (parsed message, raw text); it must hold a
    delivery-status part."""
    files = ternd.wait_messages(user, count=count, timeout=timeout)
    raw = files[-1].read_bytes()
    msg = email.message_from_bytes(raw)
    kinds = [part.get_content_type() for part in msg.walk()]
    assert ("message/delivery-status" in kinds
            or "message/global-delivery-status" in kinds), raw.decode(errors="replace")
    return msg, raw.decode(errors="replace")


# ---- routing ----

def test_mx_preference_then_fallback_when_first_host_is_down(outbound, peers, port):
    best = peers(CapturePeer, "127.0.0.9", port, name="mx-a.pref.example")
    worse = peers(CapturePeer, "127.0.0.10", port, name="mx-b.pref.example")
    second = peers(CapturePeer, "127.0.0.3", port, name="mx2.fallback.example")
    t = outbound()
    send(t, "someone@pref.example", subject="pref")
    got = best.wait_messages(1)
    assert got[0]["rcpt_tos"] == ["someone@pref.example"]
    assert got[0]["mail_from"] == "alice@example.test"
    assert worse.messages == [] and worse.sessions() == []
    line = wait_deliver_line(t, "someone@pref.example", "result=sent")
    assert "relay=mx-a.pref.example[127.0.0.9]:%d" % port in line

    # mx1.fallback.example (preference 10) refuses connections: mx2 gets the mail
    send(t, "someone@fallback.example", subject="fallback")
    got = second.wait_messages(1)
    assert got[0]["rcpt_tos"] == ["someone@fallback.example"]
    line = wait_deliver_line(t, "someone@fallback.example", "result=sent")
    assert "relay=mx2.fallback.example[127.0.0.3]" in line
    assert "event=deliver.remote.host_failed" in t.log()
    assert "mx1.fallback.example[127.0.0.2]" in t.log()


def test_no_mx_uses_the_domains_a_record(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.4", port, name="plain.example")
    t = outbound()
    send(t, "user@plain.example")
    assert p.wait_messages(1)[0]["rcpt_tos"] == ["user@plain.example"]
    assert "relay=plain.example[127.0.0.4]" in wait_deliver_line(t, "user@plain.example", "result=sent")


@pytest.mark.skipif(not have_ipv6_loopback(), reason="no IPv6 loopback")
def test_aaaa_only_domain_over_ipv6(outbound, peers, port):
    p = peers(CapturePeer, "::1", port, name="v6.example")
    t = outbound()
    send(t, "user@v6.example")
    assert p.wait_messages(1)[0]["rcpt_tos"] == ["user@v6.example"]
    assert "relay=v6.example[::1]" in wait_deliver_line(t, "user@v6.example", "result=sent")


def test_4xx_greeting_tries_the_next_host(outbound, peers, port):
    busy = peers(GreetingPeer, "127.0.0.11", port)
    ok = peers(CapturePeer, "127.0.0.12", port, name="ok.greet.example")
    t = outbound()
    send(t, "user@greet.example")
    assert ok.wait_messages(1)[0]["rcpt_tos"] == ["user@greet.example"]
    assert busy.connections >= 1
    assert "relay=ok.greet.example[127.0.0.12]" in wait_deliver_line(t, "user@greet.example",
                                                                  "result=sent")


def test_transport_override(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.4", port, name="plain.example")
    # override.example does not exist in DNS: only the transport can route it
    t = outbound(domains=f"\n[transport override.example]\nnexthop = [127.0.0.4]:{port}\n")
    send(t, "user@override.example")
    assert p.wait_messages(1)[0]["rcpt_tos"] == ["user@override.example"]


# ---- outcomes and reports ----

def test_null_mx_and_nxdomain_bounce(outbound, port):
    t = outbound()
    send(t, ["user@nullmx.example", "user@nosuch.example"], subject="nowhere")
    msg, text = dsn_report(t)
    assert "Action: failed" in text
    assert re.search(r"Final-Recipient: rfc822; ?user@nullmx\.example", text)
    assert "Status: 5.1.10" in text
    assert re.search(r"Final-Recipient: rfc822; ?user@nosuch\.example", text)
    assert "Status: 5.1.2" in text
    line = wait_deliver_line(t, "user@nullmx.example", "result=bounced")
    assert "status=5.1.10" in line
    assert "556 5.1.10" in line


def test_550_bounces_to_the_local_sender_with_the_remote_reply(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example", rcpt_script={
        "nobody@peer.example": ["550 5.1.1 <nobody@peer.example>: Recipient address rejected: "
                             "User unknown"]})
    t = outbound()
    send(t, ["nobody@peer.example", "somebody@peer.example"], subject="bounce me")
    got = p.wait_messages(1)
    assert got[0]["rcpt_tos"] == ["somebody@peer.example"]  # one transaction, the good one
    msg, text = dsn_report(t)
    assert msg["To"] and "alice@example.test" in msg["To"]
    assert "Action: failed" in text
    assert "Status: 5.1.1" in text
    assert re.search(r"Final-Recipient: rfc822; ?nobody@peer\.example", text)
    assert re.search(r"Remote-MTA: dns; ?mx\.peer\.example", text)
    diag = re.search(r"Diagnostic-Code: (.*(?:\r?\n[ \t].*)*)", text).group(1)
    diag = re.sub(r"\r?\n[ \t]+", " ", diag)
    assert diag.startswith("smtp;")
    assert "550 5.1.1 <nobody@peer.example>: Recipient address rejected: User unknown" in diag
    assert text.count("Final-Recipient:") == 1  # the delivered recipient is not reported
    line = wait_deliver_line(t, "nobody@peer.example", "result=bounced")
    assert "relay=mx.peer.example[127.0.0.13]:%d" % port in line
    assert "status=5.1.1" in line


def test_451_then_success_on_retry(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example",
              rcpt_script={"grey@peer.example": ["451 4.7.1 Greylisted, try again later"]})
    t = outbound(extra="retry_schedule = 1s")
    send(t, "grey@peer.example")
    first = wait_deliver_line(t, "grey@peer.example", "result=deferred")
    assert "status=4.7.1" in first and "451 4.7.1 Greylisted" in first
    got = p.wait_messages(1, timeout=30)
    assert got[0]["rcpt_tos"] == ["grey@peer.example"]
    wait_deliver_line(t, "grey@peer.example", "result=sent")
    assert p.rcpt_log.count("grey@peer.example") == 2
    assert t.messages("alice") == []  # no bounce, no warning


def test_recipients_in_several_domains_one_message(outbound, peers, port):
    d1 = peers(CapturePeer, "127.0.0.5", port, name="mx.d1.example")
    d2 = peers(CapturePeer, "127.0.0.6", port, name="mx.d2.example")
    t = outbound()
    send(t, ["a@d1.example", "c@d2.example", "b@d1.example"], subject="multi")
    m1 = d1.wait_messages(1)
    m2 = d2.wait_messages(1)
    time.sleep(0.5)
    assert len(d1.messages) == 1  # one transaction carries both d1 recipients
    assert sorted(m1[0]["rcpt_tos"]) == ["a@d1.example", "b@d1.example"]
    assert m2[0]["rcpt_tos"] == ["c@d2.example"]
    assert b"Subject: multi" in m1[0]["data"] and b"Subject: multi" in m2[0]["data"]


def test_connection_reuse_and_pipelining(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example", pipelining=True)
    t = outbound(extra="max_outbound_per_destination = 1")
    with t.smtp() as s:
        s.ehlo("client.example.test")
        for i in range(3):
            msg = (f"From: alice@example.test\r\nTo: r{i}@peer.example\r\nSubject: reuse {i}\r\n"
                   f"\r\nbody {i}\r\n.leading dot\r\n")
            assert s.sendmail("alice@example.test", [f"r{i}@peer.example", f"s{i}@peer.example"],
                              msg.encode()) == {}
    got = p.wait_messages(3)
    assert sorted(m["rcpt_tos"][0] for m in got) == ["r0@peer.example", "r1@peer.example",
                                                     "r2@peer.example"]
    assert len(p.sessions()) == 1, p.handler.conns  # one connection carried all three
    assert {m["conn"] for m in got} == {p.handler.conns.index(p.sessions()[0])}
    # PIPELINING: MAIL, the RCPTs and DATA arrived together
    chunks = p.sessions()[0]["chunks"]
    grouped = [c for c in chunks if b"MAIL FROM:" in c and b"RCPT TO:" in c and b"DATA\r\n" in c]
    assert grouped, chunks
    # dot-stuffing undone by the peer: the content is intact
    assert any(b"\r\n.leading dot\r\n" in m["data"] for m in got)


def test_starttls_to_a_peer_that_offers_it(outbound, peers, port, certdir):
    cert, key = make_cert(certdir, "mx.tls.example")
    p = peers(CapturePeer, "127.0.0.7", port, name="mx.tls.example", tls=(cert, key))
    t = outbound()
    send(t, "secure@tls.example")
    got = p.wait_messages(1)
    assert got[0]["tls"] is True
    line = wait_deliver_line(t, "secure@tls.example", "result=sent")
    assert re.search(r"tls=TLSv1\.[23]", line), line


def test_tls_required_but_not_offered_defers(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example")
    t = outbound(domains=f"\n[transport strict.example]\nnexthop = [127.0.0.13]:{port}\n"
                         "tls = encrypt\n")
    send(t, "user@strict.example")
    line = wait_deliver_line(t, "user@strict.example", "result=deferred")
    assert "status=4.7.4" in line
    assert p.messages == []


def test_smarthost_with_auth(outbound, peers, port, certdir):
    cert, key = make_cert(certdir, "smarthost.example")
    p = peers(CapturePeer, "127.0.0.8", port, name="smarthost.example", tls=(cert, key),
              auth=("relayuser", "relaypass"))
    t = outbound(extra=f"relayhost = [smarthost.example]:{port}\nrelayhost_user = relayuser\n"
                       "relayhost_password = relaypass")
    # a domain with no DNS at all: the smarthost takes everything
    send(t, ["far@elsewhere.example", "near@d1.example"], subject="via smarthost")
    got = p.wait_messages(1)
    assert sorted(got[0]["rcpt_tos"]) == ["far@elsewhere.example", "near@d1.example"]
    assert got[0]["tls"] is True
    assert got[0]["auth"] is True
    assert p.auth_seen and p.auth_seen[0][1] is True and p.auth_seen[0][2] is True
    assert "relaypass" not in t.log()
    # the configuration file is world-readable here: ternd says where the password belongs
    assert os.stat(t.conf).st_mode & 0o004
    assert "move the password to relayhost_password_file" in t.log()


def test_smarthost_password_from_a_file(outbound, peers, port, certdir):
    """relayhost_password_file: the secret stays out of ternd.conf (which tern-sendmail and
    so every local user reads) and out of the log."""
    cert, key = make_cert(certdir, "smarthost.example")
    p = peers(CapturePeer, "127.0.0.8", port, name="smarthost.example", tls=(cert, key),
              auth=("relayuser", "file secret"))
    secret = pathlib.Path(certdir) / "relay-pass"
    secret.write_text("file secret\n")
    secret.chmod(0o600)
    t = outbound(extra=f"relayhost = [smarthost.example]:{port}\nrelayhost_user = relayuser\n"
                       f"relayhost_password_file = {secret}")
    send(t, "far@elsewhere.example", subject="password from a file")
    got = p.wait_messages(1)
    assert got[0]["rcpt_tos"] == ["far@elsewhere.example"]
    assert got[0]["auth"] is True
    assert p.auth_seen and p.auth_seen[0][1] is True and p.auth_seen[0][2] is True
    assert "file secret" not in t.log()
    assert "move the password" not in t.log()


def test_success_notify_to_a_peer_without_dsn_reports_relayed(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example")
    t = outbound()
    send(t, "tracked@peer.example", subject="tracked", rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    p.wait_messages(1)
    line = wait_deliver_line(t, "tracked@peer.example", "result=sent")
    assert "dsn=relayed" in line
    msg, text = dsn_report(t)
    assert "Action: relayed" in text
    assert re.search(r"Final-Recipient: rfc822; ?tracked@peer\.example", text)


def test_utf8_domain_is_looked_up_by_its_a_labels(outbound, peers, port):
    """RFC 6531 mail to a domain written in UTF-8: DNS knows it as xn--bcher-kva.example
    (IDNA2008); the peer gets the address as the sender wrote it."""
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example", smtputf8=True)
    t = outbound()
    send(t, "leser@b\u00fccher.example", subject="idna", mail_options=["SMTPUTF8"])
    got = p.wait_messages(1)
    assert got[0]["rcpt_tos"] == ["leser@b\u00fccher.example"]
    sent = [line for line in deliver_lines(t) if "result=sent" in line]
    assert len(sent) == 1 and "relay=mx.peer.example[127.0.0.13]" in sent[0], sent


def test_utf8_domain_idna_refuses_bounces(outbound, peers, port):
    """A UTF-8 domain IDNA2008 does not allow (a snowman) cannot be looked up: it fails at
    once (5.1.2) instead of waiting out the queue lifetime."""
    t = outbound()
    send(t, "x@\u2603.example", subject="snowman", mail_options=["SMTPUTF8"])
    msg, text = dsn_report(t)
    assert "Status: 5.1.2" in text
    assert "IDNA" in text


def test_smtputf8_message_to_a_peer_without_it_bounces(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example", smtputf8=False)
    t = outbound()
    send(t, "user@peer.example", subject="utf8", mail_options=["SMTPUTF8"],
         sender="alice@example.test")
    msg, text = dsn_report(t)
    assert "Status: 5.6.7" in text
    assert p.messages == []


def test_tls_verify_policy(outbound, peers, port, certdir, monkeypatch):
    cert, key = make_cert(certdir, "mx.tls.example")
    p = peers(CapturePeer, "127.0.0.7", port, name="mx.tls.example", tls=(cert, key))
    strict = f"\n[transport verify.example]\nnexthop = [mx.tls.example]:{port}\ntls = verify\n"
    # not trusted: the message waits (4.7.5), nothing is sent
    t = outbound(domains=strict)
    send(t, "user@verify.example")
    line = wait_deliver_line(t, "user@verify.example", "result=deferred")
    assert "status=4.7.5" in line
    assert p.messages == []
    t.stop()
    # trusted (the peer's certificate is the trust store) and the name matches: sent
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    t2 = outbound(domains=strict)
    send(t2, "user@verify.example")
    got = p.wait_messages(1)
    assert got[0]["tls"] is True
    assert "result=sent" in wait_deliver_line(t2, "user@verify.example", "result=sent")


def test_tls_verify_with_own_trust_file(outbound, peers, port, certdir):
    """smtp_tls_ca_file: a private CA (here the peer's own certificate) instead of the
    system's trust store; read again on SIGHUP."""
    cert, key = make_cert(certdir, "mx.tls.example")
    other, _ = make_cert(certdir, "someone.else.example")
    p = peers(CapturePeer, "127.0.0.7", port, name="mx.tls.example", tls=(cert, key))
    strict = f"\n[transport verify.example]\nnexthop = [mx.tls.example]:{port}\ntls = verify\n"
    trust = certdir / "trust.pem"
    shutil.copy(other, trust)
    t = outbound(domains=strict, extra=f"smtp_tls_ca_file = {trust}")
    send(t, "first@verify.example")
    line = wait_deliver_line(t, "first@verify.example", "result=deferred")
    assert "status=4.7.5" in line
    assert p.messages == []
    # the operator puts the right CA in place and reloads: the retry goes out verified
    shutil.copy(cert, trust)
    t.reload()
    deadline = time.monotonic() + 10
    while "event=reload.done" not in t.log():
        assert time.monotonic() < deadline, "no reload"
        time.sleep(0.05)
    send(t, "second@verify.example")
    assert "result=sent" in wait_deliver_line(t, "second@verify.example", "result=sent")
    got = [m for m in p.messages if m["rcpt_tos"] == ["second@verify.example"]]
    assert len(got) == 1 and got[0]["tls"] is True
    # a trust file that no longer loads: the reload says so and the store in use stays
    trust.write_text("not a certificate\n")
    t.reload()
    deadline = time.monotonic() + 10
    while "key=smtp_tls_ca_file" not in t.log():
        assert time.monotonic() < deadline, "no reload.failed for the trust file"
        time.sleep(0.05)
    assert "event=reload.failed" in t.log()
    send(t, "third@verify.example")
    assert "result=sent" in wait_deliver_line(t, "third@verify.example", "result=sent")


def test_failed_handshake_under_may_retries_in_plaintext(outbound, peers, port, certdir):
    import ssl
    cert, key = make_cert(certdir, "mx.tls.example")
    p = peers(CapturePeer, "127.0.0.7", port, name="mx.tls.example", tls=(cert, key))
    # a server TLS context that cannot agree on anything with a TLS 1.2+ client
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1  # our client starts at TLS 1.2
    p.controller.SMTP_kwargs["tls_context"] = ctx
    t = outbound()
    send(t, "user@tls.example")
    got = p.wait_messages(1)
    assert got[0]["tls"] is False
    assert "result=sent" in wait_deliver_line(t, "user@tls.example", "result=sent")
    assert "status=4.7.5" in t.log()  # the failed attempt was logged


def test_dsn_parameters_passed_on_to_a_second_ternd(outbound, make_ternd, dns, port):
    # the peer is another ternd, which offers DSN: NOTIFY/ORCPT/RET/ENVID go along and the
    # success report becomes the peer's job (no "relayed" DSN from us)
    receiver = make_ternd(
        extra=f"dns = {dns.address}",
        listeners=f"\n[listen peer]\naddress = 127.0.0.14:{port}\nrole = mx\n",
        domains="\n[domain bin.example]\nmailboxes = mail/%d/%u\nusers = users\n")
    t = outbound()
    send(t, "bob@bin.example", subject="dsn along", mail_options=["RET=HDRS", "ENVID=env+2B1"],
         rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@bin.example"],
         body="line one\r\n.line two\r\n")
    files = receiver.wait_messages("bob", domain="bin.example")
    got = files[0].read_bytes()
    assert b"\r\n.line two\r\n" in got
    line = wait_deliver_line(t, "bob@bin.example", "result=sent")
    assert "relay=mx.bin.example[127.0.0.14]" in line
    assert "dsn=relayed" not in line
    receiver.wait_log("kind=success")  # the peer owes the success DSN now


def test_large_message_streams_intact(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example")
    t = outbound()
    lines = []
    for i in range(60000):  # about 3.6 MB, with dot lines to stuff
        lines.append(("." if i % 7 == 0 else "") + f"line {i:06d} " + "x" * 40)
    body = "\r\n".join(lines) + "\r\n"
    send(t, "big@peer.example", subject="large", body=body)
    got = p.wait_messages(1, timeout=60)
    data = got[0]["data"].replace(b"\r\n", b"\n")
    assert body.replace("\r\n", "\n").encode() in data
    wait_deliver_line(t, "big@peer.example", "result=sent")


def test_deferred_message_is_sent_after_a_restart(outbound, peers, port):
    # after a restart the content comes from the spool file, not from memory
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example",
              rcpt_script={"later@peer.example": ["451 4.3.0 not now"] * 2})
    t = outbound(extra="retry_schedule = 1s")
    body = "".join(f"restart line {i}\r\n" for i in range(2000))
    send(t, "later@peer.example", subject="restart", body=body)
    wait_deliver_line(t, "later@peer.example", "result=deferred")
    assert t.stop() == 0
    t.start()
    got = p.wait_messages(1, timeout=30)
    assert body.encode() in got[0]["data"]
    wait_deliver_line(t, "later@peer.example", "result=sent")


def test_connect_timeout_tries_the_next_host(outbound, peers, port):
    # mx1.fallback.example accepts no connection: its listen queue is full, so SYNs go
    # unanswered and the connection attempt times out (smtp_connect_timeout)
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind(("127.0.0.2", port))
    hole.listen(0)
    fillers = []
    for _ in range(3):
        f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        f.setblocking(False)
        f.connect_ex(("127.0.0.2", port))
        fillers.append(f)
    try:
        second = peers(CapturePeer, "127.0.0.3", port, name="mx2.fallback.example")
        t = outbound(extra="smtp_connect_timeout = 1s")
        started = time.time()
        send(t, "slow@fallback.example")
        got = second.wait_messages(1, timeout=30)
        assert got[0]["rcpt_tos"] == ["slow@fallback.example"]
        assert time.time() - started >= 0.9
        t.wait_log("timed out")
    finally:
        for f in fillers:
            f.close()
        hole.close()


def test_delay_warning_while_a_peer_keeps_deferring(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example",
              rcpt_script={"slowpoke@peer.example": ["451 4.2.0 mailbox busy"] * 1000})
    t = outbound(extra="retry_schedule = 1s\ndelay_warning = 2s")
    send(t, "slowpoke@peer.example", subject="delayed", rcpt_options=["NOTIFY=DELAY,FAILURE"])
    msg, text = dsn_report(t, timeout=30)
    assert "Action: delayed" in text
    assert re.search(r"Final-Recipient: rfc822; ?slowpoke@peer\.example", text)
    assert "451 4.2.0 mailbox busy" in re.sub(r"\r?\n[ \t]+", " ", text)
    assert p.messages == []


def test_global_limit_one_connection_serves_every_destination(outbound, peers, port):
    d1 = peers(CapturePeer, "127.0.0.5", port, name="mx.d1.example")
    d2 = peers(CapturePeer, "127.0.0.6", port, name="mx.d2.example")
    t = outbound(extra="max_outbound = 1")
    send(t, ["a@d1.example", "b@d2.example"], subject="one at a time")
    send(t, ["c@d2.example"], subject="and another")
    assert d1.wait_messages(1)[0]["rcpt_tos"] == ["a@d1.example"]
    assert len(d2.wait_messages(2)) == 2
    # the connections never overlapped (without the limit both would open at once, and an
    # idle one would linger 2 s; the peers' threads may see a close a little late)
    sessions = sorted(d1.sessions() + d2.sessions(), key=lambda c: c["opened"])
    deadline = time.time() + 10
    while any(c["closed"] is None for c in sessions) and time.time() < deadline:
        time.sleep(0.05)
    for a, b in zip(sessions, sessions[1:]):
        assert a["closed"] is not None and a["closed"] <= b["opened"] + 0.25, sessions


def test_many_recipients_are_split_into_transactions_of_100(outbound, peers, port):
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example")
    t = outbound()
    rcpts = [f"r{i:03d}@peer.example" for i in range(150)]
    send(t, rcpts, subject="crowd")
    got = p.wait_messages(2)
    assert sorted(len(m["rcpt_tos"]) for m in got) == [50, 100]
    assert sorted(r for m in got for r in m["rcpt_tos"]) == rcpts


def test_recipients_over_the_peers_limit_go_in_the_next_transaction_at_once(outbound, peers,
                                                                            port):
    # RFC 5321 §4.5.3.1.10: 452 to RCPT after others were accepted is the server's limit;
    # the rest are sent in a new transaction on the same connection, not after a retry
    # delay (an hour here: waiting for it would time this test out)
    p = peers(CapturePeer, "127.0.0.13", port, name="mx.peer.example", rcpt_limit=2)
    t = outbound(extra="retry_schedule = 1h")
    rcpts = [f"lim{i}@peer.example" for i in range(5)]
    send(t, rcpts, subject="limit")
    got = p.wait_messages(3)
    assert [len(m["rcpt_tos"]) for m in got] == [2, 2, 1]
    assert sorted(r for m in got for r in m["rcpt_tos"]) == rcpts
    assert len(p.sessions()) == 1  # all on one connection
    for r in rcpts:
        wait_deliver_line(t, r, "result=sent")
    assert not any("result=deferred" in line for line in deliver_lines(t))
    assert t.log().count("event=deliver.remote.rcpt_limit ") == 2
    assert t.messages("alice") == []  # no delay warning, no bounce


def test_dns_failure_defers(outbound, port):
    t = outbound()
    send(t, "user@broken.example", subject="dns trouble")
    line = wait_deliver_line(t, "user@broken.example", "result=deferred", timeout=40)
    assert "status=4.4.3" in line
    assert t.messages("alice") == []  # no bounce
