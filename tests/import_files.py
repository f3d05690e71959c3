"""Mailchimp-style files for the import tests, and a stand-in reader while import_formats is a stub.

The stand-in reads only what these tests write (a Mailchimp members CSV, its status from the file's
name) and is used only if import_formats.detect is not implemented yet.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import pytest

from newsletter import import_formats
from newsletter.import_formats import Detected, SourceRow

HEADER = ["Email Address", "First Name", "Last Name", "MEMBER_RATING", "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME",
          "CONFIRM_IP", "LATITUDE", "LONGITUDE", "GMTOFF", "DSTOFF", "TIMEZONE", "CC", "REGION", "LAST_CHANGED",
          "LEID", "EUID", "NOTES", "TAGS"]
UNSUB_HEADER = HEADER[:16] + ["UNSUB_TIME", "UNSUB_CAMPAIGN_TITLE", "UNSUB_CAMPAIGN_ID", "UNSUB_REASON",
                              "UNSUB_REASON_OTHER"] + HEADER[16:]
CLEAN_HEADER = HEADER[:16] + ["CLEAN_TIME", "CLEAN_CAMPAIGN_TITLE", "CLEAN_CAMPAIGN_ID"] + HEADER[16:]


def member(email: str, *, first: str = "", optin: str = "", optin_ip: str = "", confirm: str = "",
           confirm_ip: str = "", changed: str = "", unsub: str = "", clean: str = "") -> dict[str, str]:
    return {"Email Address": email, "First Name": first, "OPTIN_TIME": optin, "OPTIN_IP": optin_ip,
            "CONFIRM_TIME": confirm, "CONFIRM_IP": confirm_ip, "LAST_CHANGED": changed, "UNSUB_TIME": unsub,
            "CLEAN_TIME": clean, "MEMBER_RATING": "2", "LEID": "1", "EUID": "abc"}


def write_members(path: Path, rows: list[dict[str, str]], kind: str = "subscribed") -> Path:
    """A Mailchimp members export of `kind` (subscribed, unsubscribed, cleaned) at `path`."""
    header = {"subscribed": HEADER, "unsubscribed": UNSUB_HEADER, "cleaned": CLEAN_HEADER}[kind]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, header, extrasaction="ignore", lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _time(text: str) -> datetime | None:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc) if text else None


def _detect(path: Path, requested: str = "auto", *, name: str | None = None) -> Detected:
    with path.open(encoding="utf-8-sig", newline="") as file:
        header = next(csv.reader(file), [])
    if "Email Address" not in header:
        raise import_formats.FormatError(f"{name or path.name} is not a Mailchimp export: its first line is "
                                         f"{','.join(header)[:80]!r}.")
    return Detected("mailchimp", [name or path.name], {"email": "Email Address"}, [])


def _read_rows(path: Path, detected: Detected) -> object:
    file_name = detected.files[0]
    kind = next((k for k in ("unsubscribed", "cleaned") if k in file_name), "subscribed")
    with path.open(encoding="utf-8-sig", newline="") as file:
        for line, row in enumerate(csv.DictReader(file), start=2):
            try:
                optin, confirm = _time(row.get("OPTIN_TIME", "")), _time(row.get("CONFIRM_TIME", ""))
                changed = _time(row.get("LAST_CHANGED", ""))
                unsub, clean = _time(row.get("UNSUB_TIME", "")), _time(row.get("CLEAN_TIME", ""))
            except ValueError as error:
                yield SourceRow(file=file_name, line=line, email=row["Email Address"].strip(), name=None,
                                status="unconfirmed", problem=f"bad time: {error}")
                continue
            status = kind if kind != "subscribed" else ("subscribed" if optin or confirm else "unconfirmed")
            yield SourceRow(file=file_name, line=line, email=row["Email Address"].strip(),
                            name=row.get("First Name") or None, status=status, optin_time=optin,
                            optin_ip=row.get("OPTIN_IP") or None, confirm_time=confirm,
                            confirm_ip=row.get("CONFIRM_IP") or None, changed_at=changed, unsubscribed_at=unsub,
                            cleaned_at=clean)


def formats_available() -> bool:
    try:
        import_formats.detect(Path("/nonexistent-probe.csv"))
    except NotImplementedError:
        return False
    except Exception:  # noqa: BLE001 (the real reader's own complaint about the probe)
        return True
    return True


@pytest.fixture
def readers_of_files(monkeypatch):
    """import_formats, or the stand-in while the real reader is not written yet."""
    if not formats_available():
        monkeypatch.setattr(import_formats, "detect", _detect)
        monkeypatch.setattr(import_formats, "read_rows", _read_rows)
