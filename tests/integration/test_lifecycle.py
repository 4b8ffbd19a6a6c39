"""The daemon's life cycle (issue 2): configuration checks, daemonizing with a pid file,
privilege drop, SIGTERM, SIGHUP reloads (good and bad), and logging."""
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import time

import pytest

from conftest import TERND, RawClient, Ternd, make_base


def run_check(conf):
    return subprocess.run([str(TERND), "-n", "-c", str(conf)], capture_output=True, text=True,
                          timeout=30)


def test_check_accepts_contract_configuration(make_ternd):
    t = make_ternd(start=False)
    r = run_check(t.conf)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


@pytest.mark.parametrize("text,where", [
    ("hostname = mx.example.test\nspool = spool\nbogus = 1\n", ":3:"),
    ("[listen mx]\naddress = 127.0.0.1:2525\nrole = sideways\n", ":3:"),
    ("[listen mx]\nrole = mx\n", ":1:"),
    ("max_errors = many\n[listen mx]\naddress = 127.0.0.1:2525\nrole = mx\n", ":1:"),
])
def test_check_reports_file_line_and_key(tmp_path, text, where):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    r = run_check(conf)
    assert r.returncode != 0
    assert f"{conf}{where}" in r.stderr, r.stderr


def test_check_missing_file(tmp_path):
    r = run_check(tmp_path / "absent.conf")
    assert r.returncode != 0
    assert "absent.conf" in r.stderr and "No such file" in r.stderr


def test_check_bad_certificate(make_ternd):
    t = make_ternd(start=False, extra="tls_cert = nope.pem\ntls_key = nope.key")
    r = run_check(t.conf)
    assert r.returncode != 0
    assert "nope.pem" in r.stderr


def test_check_bad_outbound_trust_file(make_ternd):
    t = make_ternd(start=False, extra="smtp_tls_ca_file = no-such-ca.pem")
    r = run_check(t.conf)
    assert r.returncode != 0
    assert "smtp_tls_ca_file" in r.stderr and "no-such-ca.pem" in r.stderr


def test_daemonizes_with_pidfile_and_syslog(make_ternd):
    t = make_ternd(start=False)
    text = t.config_text().replace("log = stderr\n", "log = syslog\n")
    t.conf.write_text(text)
    r = subprocess.run([str(TERND), "-c", str(t.conf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr  # the parent returns once the child is on its own
    pidfile = t.spool / "ternd.pid"
    deadline = time.time() + 10
    while time.time() < deadline and not (pidfile.exists() and t.port_open(t.smtp_port)):
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, 0)
        with t.smtp() as s:
            s.sendmail("bob@example.test", ["alice@example.test"], b"Subject: d\r\n\r\nx\r\n")
        t.wait_messages("alice")
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("daemon did not stop on SIGTERM")


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
def test_drops_privileges_to_configured_user(ternd):
    tern = pwd.getpwnam("tern")
    status = pathlib.Path(f"/proc/{ternd.proc.pid}/status").read_text()
    uids = next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:]
    assert all(int(u) == tern.pw_uid for u in uids), uids
    # the spool and Maildirs belong to it
    with ternd.smtp() as s:
        s.sendmail("bob@example.test", ["alice@example.test"], b"Subject: p\r\n\r\nx\r\n")
    f = ternd.wait_messages("alice")[0]
    assert f.stat().st_uid == tern.pw_uid
    assert (ternd.spool / "queue").stat().st_uid == tern.pw_uid


def test_sigterm_exits_zero(ternd):
    assert ternd.stop() == 0
    assert "event=stop phase=done" in ternd.log()


def test_sighup_reload_and_bad_reload_keeps_old(ternd):
    with RawClient(ternd.smtp_port) as c:
        c.reply()
        c.cmd("EHLO x.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd("RCPT TO:<newuser@example.test>")[0] == 550
    (ternd.dir / "users").write_text((ternd.dir / "users").read_text() + "newuser\n")
    ternd.reload()
    ternd.wait_log("event=reload.done")
    with RawClient(ternd.smtp_port) as c:
        c.reply()
        c.cmd("EHLO x.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd("RCPT TO:<newuser@example.test>")[0] == 250
    # a broken configuration is logged and the running one stays
    good = ternd.conf.read_text()
    ternd.conf.write_text(good + "\nnot_a_key = 1\n")
    ternd.reload()
    ternd.wait_log("event=reload.failed")
    assert "not_a_key" in ternd.log()
    assert ternd.running()
    with RawClient(ternd.smtp_port) as c:
        c.reply()
        c.cmd("EHLO x.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd("RCPT TO:<newuser@example.test>")[0] == 250
    ternd.conf.write_text(good)


def test_log_lines_are_logfmt_with_ids(ternd):
    with ternd.smtp() as s:
        s.sendmail("bob@example.test", ["alice@example.test"], b"Subject: l\r\n\r\nx\r\n")
    ternd.wait_messages("alice")
    ternd.wait_log("event=queue.done")
    lines = [l for l in ternd.log().splitlines() if l.startswith("ts=")]
    assert lines
    for line in lines:
        assert " level=" in line and " event=" in line
    queued = [l for l in lines if "event=smtp.queued" in l][0]
    qid = queued.split(" qid=")[1].split()[0]
    sid = queued.split(" sid=")[1].split()[0]
    about_message = [l for l in lines if qid in l]
    assert any("event=deliver.local" in l for l in about_message)
    assert all(f"qid={qid}" in l for l in about_message)
    assert any(f"sid={sid}" in l and "event=smtp.connect" in l for l in lines)


def test_second_daemon_on_same_spool_refused(ternd):
    other = Ternd(make_base(), smtp_port=None)
    text = ternd.config_text().replace(str(ternd.smtp_port), str(other.smtp_port)).replace(
        str(ternd.sub_port), str(other.sub_port))
    # point it at the running daemon's spool
    text = text.replace("spool = spool", f"spool = {ternd.spool}")
    other.conf.write_text(text)
    try:
        with pytest.raises(RuntimeError):
            other.start(timeout=5)
        assert other.proc.returncode != 0
        assert "another ternd is running" in other.log()
    finally:
        shutil.rmtree(other.dir, ignore_errors=True)
