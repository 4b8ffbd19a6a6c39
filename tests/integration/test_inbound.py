"""Inbound SMTP (issue 3) against a real ternd: real clients (smtplib, swaks, curl) and
wire-level exchanges for every reply the server promises."""
import email
import os
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import RawClient

MSG = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nhi there\r\n"


def body_of(path):
    return path.read_bytes()


def ehlo(c):
    code, text = c.reply()
    assert code == 220, text
    code, text = c.cmd("EHLO client.test")
    assert code == 250, text
    return text


# ---- real clients ----

def test_smtplib_delivers_with_received_header(ternd):
    with ternd.smtp() as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        refused = s.sendmail("bob@example.test", ["alice@example.test"], MSG)
        assert refused == {}
    files = ternd.wait_messages("alice")
    data = body_of(files[0])
    assert data.startswith(b"Return-Path: <bob@example.test>\r\nDelivered-To: alice@example.test\r\n")
    assert MSG in data  # the content, byte for byte
    msg = email.message_from_bytes(data)
    received = msg.get_all("Received")
    assert len(received) == 1
    assert "by mx.example.test" in received[0]
    assert "with ESMTP id" in received[0]
    assert "for <alice@example.test>" in received[0]
    assert "[127.0.0.1]" in received[0]


def test_swaks_pipelining(ternd):
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{ternd.smtp_port}", "--pipeline",
                        "--from", "bob@example.test", "--to", "alice@example.test,bob@example.test",
                        "--header", "Subject: piped"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.0.0 Ok: queued as" in r.stdout
    assert b"Subject: piped" in body_of(ternd.wait_messages("alice")[0])
    assert b"Subject: piped" in body_of(ternd.wait_messages("bob")[0])


def test_curl_smtp(ternd, tmp_path):
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: via curl\r\n\r\nbody\r\n")
    r = subprocess.run(["curl", "-sS", "--url", f"smtp://127.0.0.1:{ternd.smtp_port}",
                        "--mail-from", "bob@example.test", "--mail-rcpt", "carol@example.test",
                        "--upload-file", str(msg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"Subject: via curl" in body_of(ternd.wait_messages("carol")[0])


def test_ehlo_transcript_lists_every_extension(ternd):
    with RawClient(ternd.smtp_port) as c:
        text = ehlo(c)
    lines = text.splitlines()
    assert lines[0] == "250-mx.example.test"
    for ext in ("PIPELINING", "SIZE 26214400", "8BITMIME", "SMTPUTF8", "CHUNKING", "DSN",
                "ENHANCEDSTATUSCODES"):
        assert any(line[4:] == ext for line in lines), (ext, text)
    assert lines[-1].startswith("250 ")
    assert "AUTH" not in text  # never on the mx role


# ---- sequence, syntax and policy replies ----

def test_sequence_and_syntax_replies(ternd):
    with RawClient(ternd.smtp_port) as c:
        c.reply()
        assert c.cmd("MAIL FROM:<bob@example.test>")[0] == 503
        ehlo_text = c.cmd("EHLO client.test")
        assert ehlo_text[0] == 250
        assert c.cmd("RCPT TO:<alice@example.test>")[0] == 503
        assert c.cmd("DATA")[0] == 503
        code, text = c.cmd("MAIL FROM:<not an address>")
        assert code == 501 and "5.1.7" in text
        code, text = c.cmd("MAIL FROM:<bob@example.test> BOGUS=1")
        assert code == 555 and "5.5.4" in text
        assert c.cmd("MAIL FROM:<bob@example.test>")[0] == 250  # the refused MAIL left nothing
        assert c.cmd("MAIL FROM:<bob@example.test>")[0] == 503
        code, text = c.cmd("RCPT TO:<alice@example.test> NOTIFY=SOMETIMES")
        assert code == 501 and "5.5.4" in text
        code, text = c.cmd("RCPT TO:<nobody@example.test>")
        assert code == 550 and "5.1.1" in text
        code, text = c.cmd("RCPT TO:<someone@elsewhere.test>")
        assert code == 554 and "5.7.1" in text
    # a new session: the one above has spent most of its error allowance (max_errors)
    with RawClient(ternd.smtp_port) as c:
        ehlo(c)
        assert c.cmd("XYZZY")[0] == 500
        assert c.cmd("EXPN team")[0] == 502
        assert c.cmd("VRFY alice")[0] == 252
        assert c.cmd("HELP")[0] == 214
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("RSET")[0] == 250
        code, text = c.cmd("QUIT")
        assert code == 221 and "2.0.0" in text
        assert c.closed()


def test_postmaster_and_null_sender_always_accepted(ternd):
    with RawClient(ternd.smtp_port) as c:
        ehlo(c)
        assert c.cmd("MAIL FROM:<>")[0] == 250
        assert c.cmd("RCPT TO:<Postmaster>")[0] == 250
        assert c.cmd("RCPT TO:<POSTMASTER@Example.Test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send("Subject: to the postmaster\r\n\r\nhello\r\n.\r\n")
        code, text = c.reply()
        assert code == 250, text
    files = ternd.wait_messages("postmaster")
    assert len(files) == 1  # two spellings of one mailbox: delivered once


def test_recipient_limit_452(make_ternd):
    t = make_ternd(extra="max_recipients = 100")
    with RawClient(t.smtp_port) as c:
        ehlo(c)
        assert c.cmd("MAIL FROM:<bob@example.test>")[0] == 250
        for i in range(100):
            c.send(f"RCPT TO:<alice+{i}@example.test>\r\n")
        for i in range(100):
            assert c.reply()[0] == 250
        code, text = c.cmd("RCPT TO:<bob@example.test>")
        assert code == 452 and "4.5.3" in text


def test_size_limits(make_ternd):
    t = make_ternd(extra="message_size_limit = 4k")
    with RawClient(t.smtp_port) as c:
        ehlo(c)
        code, text = c.cmd("MAIL FROM:<bob@example.test> SIZE=100000")
        assert code == 552 and "5.3.4" in text
        assert c.cmd("MAIL FROM:<bob@example.test> SIZE=100")[0] == 250
        assert c.cmd("RCPT TO:<alice@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200 + b".\r\n")
        code, text = c.reply()
        assert code == 552 and "5.3.4" in text
        assert c.cmd("NOOP")[0] == 250  # the session goes on
    time.sleep(0.3)
    assert t.messages("alice") == []  # nothing stored


def test_mail_loop_refused(ternd):
    with RawClient(ternd.smtp_port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<bob@example.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA")[0] == 354
        hdrs = b"".join(b"Received: from a.test by b.test; Sun, 29 Nov 2026 12:00:00 +0000\r\n"
                        for _ in range(101))
        c.send(hdrs + b"Subject: loop\r\n\r\nx\r\n.\r\n")
        code, text = c.reply()
        assert code == 554 and "5.4.6" in text


def test_long_lines_and_binary_kept_exactly(ternd):
    long_line = b"L" * 5000
    with RawClient(ternd.smtp_port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<bob@example.test> BODY=8BITMIME")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: long\r\n\r\n" + long_line + b"\r\n\xe2\x82\xac 8bit\r\n..dot\r\n.\r\n")
        assert c.reply()[0] == 250
    data = body_of(ternd.wait_messages("alice")[0])
    assert long_line + b"\r\n\xe2\x82\xac 8bit\r\n.dot\r\n" in data


def test_bdat_binary_byte_for_byte(ternd):
    payload = b"Subject: chunks\r\n\r\n" + bytes(range(256)) + b"\r\n.\r\n\n\r"
    with RawClient(ternd.smtp_port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<bob@example.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        half = len(payload) // 2
        c.send(f"BDAT {half}\r\n".encode() + payload[:half])
        code, text = c.reply()
        assert code == 250, text
        assert c.cmd("DATA")[0] == 503  # DATA inside a BDAT transaction
        c.send(f"BDAT {len(payload) - half} LAST\r\n".encode() + payload[half:])
        code, text = c.reply()
        assert code == 250 and "queued as" in text
        # BDAT 0 LAST on its own ends a message too
        c.cmd("MAIL FROM:<bob@example.test>")
        c.cmd("RCPT TO:<bob@example.test>")
        c.send(b"BDAT 9\r\nSubject: BDAT 0 LAST\r\n")
        assert c.reply()[0] == 250
        assert c.cmd("BDAT 0 LAST")[0] == 250
    data = body_of(ternd.wait_messages("alice")[0])
    assert data.endswith(payload)
    assert body_of(ternd.wait_messages("bob")[0]).endswith(b"Subject: ")


@pytest.mark.parametrize("attack", [
    b"hello\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<bob@example.test>\nDATA\nforged\n.\n",
    b"hello\r\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nforged\r\n",
    b"hello\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nforged\r\n",
    b"hello\r.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nforged\r\n",
])
def test_smtp_smuggling_refused(ternd, attack):
    with RawClient(ternd.smtp_port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<alice@example.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: smuggle\r\n\r\n" + attack + b"\r\n.\r\n")
        code, text = c.reply()
        assert code == 550 and "5.6.0" in text
        assert c.cmd("NOOP")[0] == 250  # exactly one reply came before: no second message
    time.sleep(0.5)
    assert ternd.messages("alice") == [] and ternd.messages("bob") == []


def test_bad_command_lines(ternd):
    with RawClient(ternd.smtp_port) as c:
        ehlo(c)
        code, text = c.cmd("NOOP " + "x" * 600)
        assert code == 500 and "5.5.2" in text
        assert c.cmd("NOOP")[0] == 250
        c.send(b"NO\x00OP\r\n")
        code, text = c.reply()
        assert code == 500 and "5.5.2" in text
        c.send(b"NOOP\n")
        assert c.reply()[0] == 500
        local = "a" * 65
        code, text = c.cmd(f"MAIL FROM:<{local}@example.test>")
        assert code == 501
        code, text = c.cmd("MAIL FROM:<a@" + "d" * 250 + ".test>")
        assert code == 501
        assert c.cmd("QUIT")[0] == 221


def test_too_many_errors_421(make_ternd):
    t = make_ternd(extra="max_errors = 3")
    with RawClient(t.smtp_port) as c:
        ehlo(c)
        for _ in range(3):
            assert c.cmd("BOGUS")[0] == 500
        c.send("BOGUS\r\n")
        code, text = c.reply()
        assert code == 500
        code, text = c.reply()
        assert code == 421 and "4.7.0" in text
        assert c.closed()


def test_utf8_addresses_need_smtputf8(make_ternd):
    t = make_ternd(users="alice\nj\u00f6rg\n")
    with RawClient(t.smtp_port) as c:
        ehlo(c)
        code, text = c.cmd("MAIL FROM:<j\u00f6rg@example.test>")
        assert code == 553 and "5.6.7" in text
        assert c.cmd("MAIL FROM:<j\u00f6rg@example.test> SMTPUTF8")[0] == 250
        assert c.cmd("RCPT TO:<j\u00f6rg@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send("Subject: gr\u00fc\u00dfe\r\n\r\nhall\u00f6\r\n.\r\n".encode())
        assert c.reply()[0] == 250
    data = body_of(t.wait_messages("j\u00f6rg")[0])
    assert "hall\u00f6".encode() in data
    assert b"with UTF8SMTP" in data


def test_disconnect_mid_data_leaves_nothing(ternd):
    with RawClient(ternd.smtp_port) as c:
        ehlo(c)
        c.cmd("MAIL FROM:<bob@example.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: cut\r\n\r\nhalf a message")
    time.sleep(0.5)
    assert ternd.messages("alice") == []
    r = ternd.ctl("queue")
    assert r.returncode == 0
    assert "alice" not in r.stdout


def test_command_timeout_421(make_ternd):
    t = make_ternd(extra="command_timeout = 1s")
    with RawClient(t.smtp_port) as c:
        ehlo(c)
        time.sleep(1.5)
        code, text = c.reply()
        assert code == 421 and "4.4.2" in text
        assert c.closed()


def test_pregreet_refused(make_ternd):
    t = make_ternd(extra="pregreet_wait = 1s", start=False)
    t.start()
    with socket.create_connection(("127.0.0.1", t.smtp_port), timeout=5) as s:
        s.sendall(b"EHLO impatient.test\r\n")
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"554 5.5.1"), data
    # a patient client gets the greeting after the wait
    with RawClient(t.smtp_port) as c:
        code, _ = c.reply()
        assert code == 220


def test_session_limits(make_ternd):
    t = make_ternd(extra="max_sessions_per_ip = 2\nsession_limit_exceptions =")
    a, b = RawClient(t.smtp_port), RawClient(t.smtp_port)
    assert a.reply()[0] == 220 and b.reply()[0] == 220
    with RawClient(t.smtp_port) as c:
        code, text = c.reply()
        assert code == 421 and "4.7.0" in text
    a.close()
    time.sleep(0.2)
    with RawClient(t.smtp_port) as c:
        assert c.reply()[0] == 220
    b.close()
    t2 = make_ternd(extra="max_sessions = 1")
    with RawClient(t2.smtp_port) as first:
        assert first.reply()[0] == 220
        with RawClient(t2.smtp_port) as second:
            code, text = second.reply()
            assert code == 421 and "4.7.0" in text


def test_shutdown_421_for_idle_and_finishes_transaction(ternd):
    idle = RawClient(ternd.smtp_port)
    ehlo(idle)
    busy = RawClient(ternd.smtp_port)
    ehlo(busy)
    busy.cmd("MAIL FROM:<bob@example.test>")
    busy.cmd("RCPT TO:<alice@example.test>")
    assert busy.cmd("DATA")[0] == 354
    busy.send(b"Subject: during shutdown\r\n\r\nfirst half\r\n")
    ternd.proc.send_signal(15)
    code, text = idle.reply()
    assert code == 421 and "4.3.2" in text
    busy.send(b"second half\r\n.\r\n")
    code, text = busy.reply()
    assert code == 250, text
    code, text = busy.reply()
    assert code == 421
    assert ternd.proc.wait(30) == 0
    idle.close()
    busy.close()
    ternd.start()
    assert len(ternd.wait_messages("alice")) == 1


def test_low_disk_space_refused_before_data(make_ternd):
    # no file system here has a petabyte free: the spool counts as full
    t = make_ternd(extra="min_free_space = 1000000G")
    with RawClient(t.smtp_port) as c:
        ehlo(c)
        code, text = c.cmd("MAIL FROM:<bob@example.test>")
        assert code == 452 and "4.3.1" in text
        assert c.cmd("NOOP")[0] == 250  # the session and the daemon go on
    assert t.running()
