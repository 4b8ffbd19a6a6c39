"""ternctl and tern-sendmail against a real ternd (fixtures in conftest.py).

Covered: ternctl queue/show/hold/release/flush/delete/stats (text and JSON) on a message
kept deferred by a transport pointing at a closed port, exit codes (0 done, 1 failed,
2 usage, 3 not running), the control socket (mode 0600, a stale socket after kill -9,
a second ternd refused, stalled and concurrent clients, long and unknown requests,
escaping of hostile header text), ternctl passwd (stdin and a terminal), and tern-sendmail
(-t with Bcc removal, -f/-F, -i, the "." line, command-line recipients, errors and their
sysexits codes, a message dropped while ternd is stopped and delivered once it starts).
"""
import json
import os
import pathlib
import pwd
import re
import select
import shutil
import socket
import stat
import subprocess
import time
import warnings

import pytest

from conftest import SENDMAIL, TERNCTL, free_port

USER = pwd.getpwuid(os.getuid()).pw_name
QID = re.compile(r"^[0-9A-Z]{14}$")


def closed_port():
    """A loopback port nobody listens on (connections are refused)."""
    return free_port()


def remote_ternd(make_ternd, **kw):
    """A ternd whose mail for remote.test goes to a closed port: such mail stays deferred."""
    extra = kw.pop("extra", "")
    t = make_ternd(start=False, extra=extra, domains=kw.pop("domains", ""), **kw)
    t.domains += f"\n[transport remote.test]\nnexthop = 127.0.0.1:{closed_port()}\ntls = none\n"
    t.write_config()
    t.start()
    return t


def queue_json(t):
    r = t.ctl("-j", "queue")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_queue(t, pred, timeout=15):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = queue_json(t)
        if pred(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"queue never matched: {last}\n{t.log()[-3000:]}")


def deferred_message(t, subject="deferred test"):
    """Queue one message for a remote recipient and wait until its first attempt failed."""
    msg = f"To: far@remote.test\nSubject: {subject}\nX-Evil: a\x1b[31mred\x07\n\nbody\n"
    r = t.sendmail("-f", "sender@example.test", "-t", input=msg.encode())
    assert r.returncode == 0, r.stderr
    q = wait_queue(t, lambda q: any(rc.get("state") == "deferred"
                                    for m in q.get("messages", [])
                                    for rc in m.get("recipients", [])))
    (m,) = q["messages"]
    return m["id"]


def raw_request(t, data, timeout=15):
    """Send bytes on the control socket and return everything ternd answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(t.spool / "control.sock"))
    s.sendall(data)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out


# ---- ternctl ----

def test_ctl_not_running(make_ternd):
    t = make_ternd(start=False)
    sock = str(t.spool / "control.sock")
    for cmd in (["queue"], ["stats"], ["show", "0123456789ABCD"], ["ping"]):
        r = t.ctl(*cmd)
        assert r.returncode == 3, (cmd, r)
        assert "not running" in r.stderr and sock in r.stderr
        assert r.stdout == ""


def test_ctl_usage(make_ternd):
    t = make_ternd(start=False)
    assert subprocess.run([str(TERNCTL)], capture_output=True).returncode == 2
    for args in (["bogus"], ["show"], ["queue", "x"], ["delete"], ["show", "a", "b"],
                 ["show", "has space"], ["-x", "queue"]):
        r = t.ctl(*args)
        assert r.returncode == 2, (args, r)
        assert r.stderr
    r = t.ctl("help")
    assert r.returncode == 0 and "commands:" in r.stdout and "passwd" in r.stdout
    # a configuration that cannot be read: a failure, not "not running"
    r = subprocess.run([str(TERNCTL), "-c", "/nonexistent/ternd.conf", "queue"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "/nonexistent/ternd.conf" in r.stderr


def test_ctl_queue_show_hold_release_flush_delete(make_ternd):
    t = remote_ternd(make_ternd)
    # the socket is for the owner only
    mode = stat.S_IMODE(os.stat(t.spool / "control.sock").st_mode)
    assert mode == 0o600

    assert t.ctl("ping").returncode == 0
    qid = deferred_message(t)
    assert QID.match(qid)

    # queue: text, aligned columns, recipient with state and last error
    r = t.ctl("queue")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["QUEUE", "ID"]
    assert lines[1].startswith(qid)
    assert "sender@example.test" in lines[1]
    assert re.match(r"^\s+deferred\s+far@remote\.test\s+attempts 1", lines[2]), lines[2]
    assert re.search(r": 4\.\d+\.\d+ \S", lines[2]), lines[2]  # status and last reply
    assert lines[-1] == "-- 1 message, 1 recipient"

    # JSON has the same facts, typed
    (m,) = queue_json(t)["messages"]
    assert m["id"] == qid and m["held"] is False and isinstance(m["size"], int)
    assert m["sender"] == "sender@example.test"
    (rc,) = m["recipients"]
    assert rc["addr"] == "far@remote.test" and rc["state"] == "deferred"
    assert rc["attempts"] == 1 and rc["next"] > time.time()

    # show: envelope, recipient, headers (hostile bytes escaped)
    r = t.ctl("show", qid)
    assert r.returncode == 0, r.stderr
    assert f"id:" in r.stdout and qid in r.stdout
    assert "sender@example.test" in r.stdout
    assert "far@remote.test" in r.stdout and "deferred" in r.stdout
    assert "Subject: deferred test" in r.stdout
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "a\\x1b[31mred\\x07" in r.stdout
    # lower case ids work too
    assert t.ctl("show", qid.lower()).returncode == 0
    j = json.loads(t.ctl("-j", "show", qid).stdout)
    assert j["ok"] is True and j["message"]["id"] == qid
    assert any(h.startswith("X-Evil: a\x1b[31mred") for h in j["message"]["headers"])

    # hold: listed as held; release: not any more
    r = t.ctl("hold", qid)
    assert r.returncode == 0 and qid in r.stdout
    r = t.ctl("queue")
    assert re.search(rf"^{qid}\s+\S+\s+\S+\s+held\s", r.stdout, re.M), r.stdout
    assert queue_json(t)["messages"][0]["held"] is True
    assert t.ctl("release", qid).returncode == 0
    assert queue_json(t)["messages"][0]["held"] is False

    # flush: the deferred recipient is tried again now
    r = t.ctl("flush", qid)
    assert r.returncode == 0, r.stderr
    wait_queue(t, lambda q: q["messages"][0]["recipients"][0]["attempts"] >= 2)
    assert t.ctl("flush").returncode == 0

    # unknown and invalid ids: exit 1 with a clear message
    r = t.ctl("show", "0123456789ABCD")
    assert r.returncode == 1 and "unknown queue id 0123456789ABCD" in r.stderr
    for cmd in ("hold", "release", "flush", "delete"):
        r = t.ctl(cmd, "0123456789ABCD")
        assert r.returncode == 1 and "unknown queue id" in r.stderr, (cmd, r)
    r = t.ctl("show", "nope")
    assert r.returncode == 1 and "invalid queue id" in r.stderr
    r = t.ctl("-j", "show", "0123456789ABCD")
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] is False

    # delete: gone, no bounce
    r = t.ctl("delete", qid)
    assert r.returncode == 0, r.stderr
    r = t.ctl("queue")
    assert r.returncode == 0 and "the queue is empty" in r.stdout
    assert t.ctl("show", qid).returncode == 1
    assert "event=control.command" in t.log() and "cmd=delete" in t.log()


def test_ctl_delete_all_and_hold_all(make_ternd):
    t = remote_ternd(make_ternd)
    for i in range(3):
        r = t.sendmail("-f", "s@example.test", "far@remote.test",
                       input=f"Subject: {i}\n\nx\n".encode())
        assert r.returncode == 0, r.stderr
    wait_queue(t, lambda q: len(q.get("messages", [])) == 3)
    assert t.ctl("hold", "all").returncode == 0
    assert all(m["held"] for m in queue_json(t)["messages"])
    assert t.ctl("release", "all").returncode == 0
    assert not any(m["held"] for m in queue_json(t)["messages"])
    r = t.ctl("delete", "all")
    assert r.returncode == 0 and "3 messages" in r.stdout
    assert queue_json(t).get("messages") is None


def test_ctl_stats(ternd):
    with ternd.smtp() as s:
        s.sendmail("x@example.test", ["alice@example.test"], "Subject: s\r\n\r\nhi\r\n")
    ternd.wait_messages("alice")
    r = ternd.ctl("stats")
    assert r.returncode == 0, r.stderr
    for key in ("uptime", "messages", "recipients_pending", "recipients_deferred",
                "committed", "delivered", "failed", "fsyncs", "commit_batches", "sessions",
                "connections_accepted", "connections_refused"):
        assert re.search(rf"^{key}:\s+\S", r.stdout, re.M), (key, r.stdout)
    st = json.loads(ternd.ctl("-j", "stats").stdout)["stats"]
    assert st["committed"] >= 1 and st["connections_accepted"] >= 1
    assert st["pid"] == ternd.proc.pid


def test_ctl_stats_prometheus(ternd):
    """ternctl -p stats: the Prometheus text format, read back by the Prometheus project's own
    parser (python3-prometheus-client)."""
    from prometheus_client.parser import text_string_to_metric_families
    with ternd.smtp() as s:
        s.sendmail("x@example.test", ["alice@example.test"], "Subject: p\r\n\r\nhi\r\n")
    ternd.wait_messages("alice")
    r = ternd.ctl("-p", "stats")
    assert r.returncode == 0, r.stderr
    families = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    # the parser names counters without their _total suffix
    assert families["tern_queue_committed_messages"].type == "counter"
    assert families["tern_queue_committed_messages"].samples[0].value >= 1
    assert families["tern_smtp_connections_accepted"].samples[0].value >= 1
    assert families["tern_queue_messages"].type == "gauge"
    assert families["tern_uptime_seconds"].samples[0].value >= 0
    assert "pid" not in r.stdout
    names = [line.split()[0] for line in r.stdout.splitlines() if not line.startswith("#")]
    assert len(names) == len(set(names)) >= 15
    assert all(n.startswith("tern_") for n in names)
    # only with stats, never with -j
    assert ternd.ctl("-p", "queue").returncode == 2
    assert ternd.ctl("-p", "-j", "stats").returncode == 2


def test_ctl_protocol_edges(ternd):
    out = raw_request(ternd, b"x" * 300 + b"\n")
    assert out == b"error: request too long\n"
    out = raw_request(ternd, b"frobnicate\n")
    assert out.startswith(b"error: unknown command \"frobnicate\"")
    out = raw_request(ternd, b"show \x01\n")
    assert out == b"error: request is not printable ASCII\n"
    out = raw_request(ternd, b"stats\n")
    assert out.startswith(b"stats uptime=") and out.endswith(b"\nok\n")
    # every byte printable ASCII or LF
    assert all(32 <= c < 127 or c == 10 for c in out)


def test_ctl_stalled_and_concurrent_clients(ternd):
    path = str(ternd.spool / "control.sock")
    stalled = []
    for _ in range(5):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(b"que")  # never finishes its line
        stalled.append(s)
    # others are served meanwhile
    for _ in range(3):
        assert ternd.ctl("ping").returncode == 0
    # and the stalled ones are answered and closed after the request timeout
    for s in stalled:
        s.settimeout(20)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data == b"error: request timeout\n"
        s.close()


def test_ctl_stale_socket_and_second_daemon(make_ternd):
    t = make_ternd()
    t.kill9()
    assert (t.spool / "control.sock").exists()
    r = t.ctl("queue")
    assert r.returncode == 3 and "not running" in r.stderr
    t.start()  # removes the stale socket
    assert t.ctl("queue").returncode == 0

    # a second ternd on the same control socket is refused
    other = make_ternd(start=False, extra=f"control_socket = {t.spool / 'control.sock'}")
    proc = subprocess.run([str(t.proc.args[0]), "-F", "-c", str(other.conf)],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0
    assert "another ternd is running" in proc.stderr + proc.stdout
    assert t.ctl("ping").returncode == 0


def check_hash(hash_, password):
    assert hash_.startswith("$y$"), hash_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return
    assert crypt.crypt(password, hash_) == hash_


def test_ctl_passwd_stdin():
    r = subprocess.run([str(TERNCTL), "passwd"], input="s3cret pass\n", capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    check_hash(r.stdout.strip(), "s3cret pass")
    r = subprocess.run([str(TERNCTL), "passwd"], input="", capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    r = subprocess.run([str(TERNCTL), "passwd"], input="\n", capture_output=True, text=True)
    assert r.returncode == 1 and "empty" in r.stderr


def run_on_tty(args, answers):
    """Run args with a terminal as stdin; write each answer after each prompt."""
    master, slave = os.openpty()
    p = subprocess.Popen(args, stdin=slave, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    for a in answers:
        deadline = time.time() + 10
        while not seen.rstrip().endswith(b":") and time.time() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                seen += os.read(master, 1024)
        os.write(master, a.encode() + b"\n")
        seen += b"|"
    out, _ = p.communicate(timeout=20)
    try:
        while True:
            r, _, _ = select.select([master], [], [], 0.2)
            if not r:
                break
            seen += os.read(master, 1024)
    except OSError:
        pass
    os.close(master)
    return p.returncode, out.decode(), seen.decode(errors="replace")


def test_ctl_passwd_terminal():
    code, out, tty = run_on_tty([str(TERNCTL), "passwd"], ["hunter22", "hunter22"])
    assert code == 0, tty
    assert "Password:" in tty and "Repeat password:" in tty
    assert "hunter22" not in tty  # not echoed
    check_hash(out.strip(), "hunter22")
    code, out, tty = run_on_tty([str(TERNCTL), "passwd"], ["one", "two"])
    assert code == 1 and out == "" and "do not match" in tty


# ---- tern-sendmail ----

def read_delivered(t, user, count=1):
    files = t.wait_messages(user, count=count)
    return [f.read_bytes() for f in files]


def test_sendmail_t_shell(ternd):
    cmd = (f"printf 'To: alice@example.test\\nBcc: bob@example.test\\nSubject: x\\n\\nhi\\n' "
           f"| {SENDMAIL} -C {ternd.conf} -t")
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    (alice,) = read_delivered(ternd, "alice")
    (bob,) = read_delivered(ternd, "bob")
    for msg in (alice, bob):
        assert b"Subject: x\r\n" in msg
        assert b"\r\n\r\nhi\r\n" in msg
        assert b"Bcc" not in msg  # removed for every recipient
        assert re.search(rb"^Date: \w{3}, \d\d \w{3} \d{4} ", msg, re.M)
        assert re.search(rb"^Message-ID: <[^>]+@mx\.example\.test>\r$", msg, re.M)
        assert f"From: {USER}@mx.example.test\r\n".encode() in msg or \
            re.search(rf"^From: .*<{USER}@mx\.example\.test>\r$".encode(), msg, re.M)


def test_sendmail_f_F_and_recipients(ternd):
    r = ternd.sendmail("-f", "bob@example.test", "-F", "Bob Builder", "--",
                       "alice@example.test, Carol <carol@example.test>",
                       input=b"Subject: ff\n\nfrom bob\n")
    assert r.returncode == 0, r.stderr
    (alice,) = read_delivered(ternd, "alice")
    (carol,) = read_delivered(ternd, "carol")
    for m in (alice, carol):
        assert b"From: Bob Builder <bob@example.test>\r\n" in m
        assert b"Subject: ff\r\n" in m
    rp = re.search(rb"^Return-Path: <([^>]*)>", alice, re.M)
    if rp:
        assert rp.group(1) == b"bob@example.test"
    # -fADDR attached, and a From: that is already there is kept
    r = ternd.sendmail("-fbob@example.test", "dave@example.test",
                       input=b"From: Someone <someone@example.test>\n\nx\n")
    assert r.returncode == 0, r.stderr
    (dave,) = read_delivered(ternd, "dave")
    head = dave.split(b"\r\n\r\n", 1)[0]
    assert len(re.findall(rb"^From: ", head, re.M)) == 1
    assert b"From: Someone <someone@example.test>\r\n" in dave


def test_sendmail_dot_and_i(ternd):
    body = b"Subject: dots\n\nline one\n.\nline three\n"
    assert ternd.sendmail("alice@example.test", input=body).returncode == 0
    (m,) = read_delivered(ternd, "alice")
    assert b"line one\r\n" in m and b"line three" not in m
    for flag in ("-i", "-oi"):
        assert ternd.sendmail(flag, "bob@example.test", input=body).returncode == 0
    for m in read_delivered(ternd, "bob", count=2):
        assert b"line one\r\n.\r\nline three\r\n" in m


def test_sendmail_errors(make_ternd):
    t = make_ternd(extra="message_size_limit = 2k")
    r = t.sendmail(input=b"Subject: x\n\nx\n")
    assert r.returncode == 64 and b"no recipients" in r.stderr
    r = t.sendmail("-t", input=b"Subject: x\n\nx\n")
    assert r.returncode == 65 and b"no recipients" in r.stderr
    r = t.sendmail("not an address@", input=b"x\n")
    assert r.returncode == 67 and b"not an address@" in r.stderr
    r = t.sendmail("-t", input=b"To: Bob bob@example.test\n\nx\n")
    assert r.returncode == 67 and b"To:" in r.stderr
    r = t.sendmail("-f", "bad address", "alice@example.test", input=b"x\n")
    assert r.returncode == 64
    r = t.sendmail("-Z", "alice@example.test", input=b"x\n")
    assert r.returncode == 64 and b"-Z" in r.stderr
    r = t.sendmail("-bs", input=b"")
    assert r.returncode == 64 and b"-bs" in r.stderr
    r = t.sendmail("alice@example.test", input=b"Subject: big\n\n" + b"y" * 5000 + b"\n")
    assert r.returncode == 65 and b"message_size_limit" in r.stderr
    r = t.sendmail("alice@example.test", input=b"X-Long: " + b"h" * 1200 + b"\n\nx\n")
    assert r.returncode == 65 and b"header line" in r.stderr
    # accepted-and-ignored sendmail options
    r = t.sendmail("-oem", "-odb", "-oQ/var/x", "-v", "-bm", "-m", "-Ltag", "alice@example.test",
                   input=b"Subject: ok\n\nx\n")
    assert r.returncode == 0, r.stderr
    assert b"queued as" in r.stderr  # -v
    read_delivered(t, "alice")
    # a bad configuration
    r = subprocess.run([str(SENDMAIL), "-C", "/nonexistent.conf", "alice@example.test"],
                       input=b"x\n", capture_output=True)
    assert r.returncode == 78 and b"/nonexistent.conf" in r.stderr


def test_sendmail_bp(ternd):
    r = ternd.sendmail("-bp")
    assert r.returncode == 0 and b"the queue is empty" in r.stdout


def test_sendmail_without_daemon(make_ternd):
    t = make_ternd(start=False)
    # never started: no drop folder yet -> a clear error, not a lost message
    r = t.sendmail("alice@example.test", input=b"Subject: early\n\nx\n")
    assert r.returncode == 73 and b"maildrop" in r.stderr

    t.start()
    t.stop()
    r = t.sendmail("-t", input=b"To: alice@example.test\nSubject: offline\n\nwhile down\n")
    assert r.returncode == 0, r.stderr
    drops = [p for p in (t.spool / "maildrop").iterdir() if not p.name.startswith(".")]
    assert len(drops) == 1 and QID.match(drops[0].name)
    assert t.messages("alice") == []
    t.start()
    (m,) = read_delivered(t, "alice")
    assert b"Subject: offline\r\n" in m and b"while down\r\n" in m
    deadline = time.time() + 10
    while time.time() < deadline and any(not p.name.startswith(".")
                                         for p in (t.spool / "maildrop").iterdir()):
        time.sleep(0.05)
    assert [p for p in (t.spool / "maildrop").iterdir() if not p.name.startswith(".")] == []


def runuser(user, args, **kw):
    return subprocess.run(["runuser", "-u", user, "--", *args], capture_output=True, **kw)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"),
                                reason="needs root and runuser to act as another user")


@needs_root
def test_ctl_other_user_refused(ternd):
    r = runuser("nobody", [str(TERNCTL), "-c", str(ternd.conf), "queue"], text=True)
    assert r.returncode == 1 and "permission denied" in r.stderr, r


@needs_root
@needs_root
def test_sendmail_as_ordinary_user(ternd):
    r = runuser("nobody", [str(SENDMAIL), "-C", str(ternd.conf), "-t"],
                input=b"To: alice@example.test\nSubject: from nobody\n\nhi\n")
    assert r.returncode == 0, r.stderr
    (m,) = read_delivered(ternd, "alice")
    assert b"From: nobody@mx.example.test" in m or b"<nobody@mx.example.test>" in m
