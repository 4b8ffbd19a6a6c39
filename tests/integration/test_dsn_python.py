"""DSN reports composed by mail/dsn.c, read back by Python's email package.

The unit test build/tests/test_dsn writes every report it composes into $TERN_DSN_DUMP;
this test runs it and checks each report with an independent MIME parser: no parse
defects, multipart/report with the right report-type, the delivery-status blocks with the
fields RFC 3464 requires, and a third part Python can open (a message, or header lines).
"""
import email
import email.parser
import email.policy
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("TERN_BUILD", ROOT / "build"))


def unit_binary():
    for candidate in (BUILD / "tests" / "test_dsn", ROOT / "build" / "asan" / "tests" / "test_dsn"):
        if candidate.exists():
            return candidate
    pytest.skip("build/tests/test_dsn is not built (make unit)")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("dsn")
    env = dict(os.environ, TERN_DSN_DUMP=str(out))
    subprocess.run([str(unit_binary())], env=env, check=True, capture_output=True)
    files = sorted(out.glob("*.eml"))
    assert len(files) >= 10
    return files


def status_blocks(part):
    """The field blocks of a (global-)delivery-status part, as Message objects."""
    if part.get_content_type() == "message/delivery-status":
        return part.get_payload()  # Python splits it into blocks itself
    # message/global-delivery-status: Python treats it like any message/* (an embedded
    # message), so take the part's text back and split the blocks here
    text = part.as_bytes().decode("utf-8").replace("\r\n", "\n")
    raw = text.split("\n\n", 1)[1]
    return [email.parser.HeaderParser().parsestr(b + "\n")
            for b in raw.strip("\n").split("\n\n")]


def test_reports_parse(reports):
    for path in reports:
        data = path.read_bytes()
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        for part in msg.walk():
            assert not part.defects, f"{path.name}: {part.defects}"
        assert msg.get_content_type() == "multipart/report", path.name
        assert msg["Auto-Submitted"] == "auto-replied"
        assert msg["Message-ID"] and msg["Date"] and msg["From"] and msg["To"]
        parts = msg.get_payload()
        assert len(parts) in (2, 3), path.name
        assert parts[0].get_content_type() == "text/plain"
        report_type = msg.get_param("report-type")
        assert parts[1].get_content_type() == "message/" + report_type, path.name

        blocks = status_blocks(parts[1])
        assert blocks[0]["Reporting-MTA"].startswith("dns;"), path.name
        assert len(blocks) >= 2
        for b in blocks[1:]:
            assert b["Final-Recipient"] and b["Action"] and b["Status"], path.name
            assert b["Action"] in ("failed", "delayed", "delivered", "relayed", "expanded")
            if b["Action"] != "delayed":
                assert b["Will-Retry-Until"] is None

        if len(parts) == 3:
            third = parts[2]
            ctype = third.get_content_type()
            if ctype in ("message/rfc822", "message/global"):
                inner = third.get_payload()
                inner = inner[0] if isinstance(inner, list) else email.message_from_string(inner)
                assert inner["Subject"] is not None, path.name
            else:
                assert ctype in ("text/rfc822-headers", "message/global-headers"), path.name
                payload = third.get_payload(decode=not third.is_multipart())
                if isinstance(payload, list):  # message/global-headers: seen as message/*
                    parsed = payload[0]
                else:
                    parsed = email.parser.BytesHeaderParser().parsebytes(payload)
                assert len(parsed.keys()) >= 1, path.name


def test_failure_full_roundtrip(reports):
    path = next(p for p in reports if p.name == "failure_full.eml")
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    returned = msg.get_payload()[2].get_payload()[0]
    assert returned["Message-ID"] == "<orig@example.org>"
    assert "Body line two." in returned.get_payload()
    rcpt = status_blocks(msg.get_payload()[1])[1]
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
