"""DNS details with a real unbound on loopback: special-use names (RFC 6761, such as
.test) are asked of the configured server rather than answered by the resolver library,
and the client's forward-confirmed reverse name appears in Received:."""
import pytest

from conftest import RawClient
from outbound_peers import CapturePeer, Unbound, free_port_on


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    u = Unbound(tmp_path_factory.mktemp("unbound-test-tld"), [
        "ready.remote.test. IN A 127.0.0.1",
        "remote.test. IN MX 10 mx.remote.test.",
        "mx.remote.test. IN A 127.0.0.21",
        "1.0.0.127.in-addr.arpa. IN PTR client.remote.test.",
        "client.remote.test. IN A 127.0.0.1",
    ], zones=("remote.test.", ("127.in-addr.arpa.", "static")))
    yield u
    u.stop()


def test_special_use_tld_resolved_by_configured_server(make_ternd, dns):
    port = free_port_on(["127.0.0.21"])
    peer = CapturePeer("127.0.0.21", port, name="mx.remote.test")
    try:
        t = make_ternd(extra=f"dns = {dns.address}\nmx_port = {port}\n"
                             "trusted_networks = 127.0.0.1/32")
        with t.smtp() as s:
            s.sendmail("alice@example.test", ["friend@remote.test"],
                       b"Subject: to a .test domain\r\n\r\nhello\r\n")
        peer.wait_messages(1)
        t.wait_log("status=2.0.0")
    finally:
        peer.stop()


def test_reverse_dns_in_received_header(make_ternd, dns):
    t = make_ternd(extra=f"dns = {dns.address}\nreverse_dns_skip =\nreverse_dns = yes")
    with RawClient(t.smtp_port) as c:
        c.reply()
        c.cmd("EHLO helo-name.test")
        # no pause: DATA waits for the lookup (PTR, then A to confirm) to finish
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        c.cmd("DATA")
        c.send("Subject: rdns\r\n\r\nx\r\n.\r\n")
        assert c.reply()[0] == 250
    data = t.wait_messages("alice")[0].read_bytes()
    assert b"from helo-name.test (client.remote.test [127.0.0.1])" in data, data[:400]
