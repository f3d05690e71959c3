"""`newsletter import`: one recorded run per file, a summary, refusals as CSV, clear errors."""

from __future__ import annotations

import re

import pytest

from .conftest import query
from .import_files import member, readers_of_files, write_members  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("readers_of_files")
OPTIN = "2023-03-01 10:00:00"


def test_import_prints_the_mapping_and_summary_and_writes_refusals(runner, app, tmp_path):
    path = write_members(tmp_path / "subscribed_members.csv", [
        member("a@example.com", optin=OPTIN), member("b@example.com"), member("a@example.com", optin=OPTIN),
        member("=bad")])
    refusals = tmp_path / "refused.csv"
    result = runner.invoke(args=["import", str(path), "--newsletter", "daily-briefing",
                                 "--refusals-out", str(refusals)])
    assert result.exit_code == 0, result.output
    assert "Import #1: subscribed_members.csv as Mailchimp export into daily-briefing" in result.output
    assert "'Email Address' -> email" in result.output
    assert ("4 rows in" in result.output and "2 new (of which 1 asked to confirm by email), 0 updated, 0 unchanged, "
            "0 suppressed, 2 refused." in result.output)
    # Asked to confirm is a part of the new rows: the outcomes add up to the rows read.
    outcomes = re.search(r"(\d+) rows in .*?: (\d+) new \(.*?\), (\d+) updated, (\d+) unchanged, (\d+) suppressed, "
                         r"(\d+) refused", result.output).groups()
    assert int(outcomes[0]) == sum(map(int, outcomes[1:]))
    assert "Refused 2 rows: duplicate_in_file 1, invalid_address 1" in result.output
    assert "subscribed_members.csv line 4: 'a@example.com' duplicate_in_file" in result.output
    lines = refusals.read_text().splitlines()
    assert lines[0] == "file,line,email,reason,detail" and len(lines) == 3
    assert lines[2].startswith("subscribed_members.csv,5,'=bad,invalid_address,")
    assert query(app, "SELECT status, channel, dry_run FROM imports") == [("finished", "cli", False)]
    assert query(app, "SELECT count(*) FROM readers")[0][0] == 2


def test_dry_run_and_several_files(runner, app, tmp_path):
    first = write_members(tmp_path / "one.csv", [member("a@example.com", optin=OPTIN)])
    second = write_members(tmp_path / "unsubscribed_two.csv", [member("b@example.com", unsub=OPTIN)], "unsubscribed")
    result = runner.invoke(args=["import", str(first), str(second), "--newsletter", "daily-briefing", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Dry run #1: one.csv" in result.output and "Dry run #2: unsubscribed_two.csv" in result.output
    assert "new (of which 0 would be asked to confirm by email)" in result.output
    assert query(app, "SELECT count(*) FROM readers")[0][0] == 0
    assert query(app, "SELECT count(*) FROM imports WHERE dry_run AND status = 'finished'")[0][0] == 2


def test_unconfirmed_policy_option(runner, app, tmp_path):
    path = write_members(tmp_path / "m.csv", [member("bare@example.com")])
    result = runner.invoke(args=["import", str(path), "--newsletter", "daily-briefing", "--unconfirmed", "skip"])
    assert result.exit_code == 0 and "unconfirmed_skipped 1" in result.output


@pytest.mark.parametrize("arguments, message", [
    (["--newsletter", "nope"], "There is no newsletter called 'nope'"),
    (["--newsletter", "daily-briefing", "--format", "excel"], "Invalid value for '--format'"),
])
def test_clear_errors(runner, app, tmp_path, arguments, message):
    path = write_members(tmp_path / "m.csv", [member("a@example.com")])
    result = runner.invoke(args=["import", str(path), *arguments])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def test_missing_and_unrecognized_files(runner, app, tmp_path):
    result = runner.invoke(args=["import", str(tmp_path / "missing.csv"), "--newsletter", "daily-briefing"])
    assert result.exit_code != 0 and "There is no file" in result.output
    other = tmp_path / "notes.csv"
    other.write_text("what,is,this\n1,2,3\n")
    result = runner.invoke(args=["import", str(other), "--newsletter", "daily-briefing"])
    assert result.exit_code == 1 and result.output.startswith("Error: notes.csv: ")
    assert query(app, "SELECT count(*) FROM imports")[0][0] == 0


def test_refusals_out_in_a_missing_folder_is_a_clear_error(runner, app, tmp_path):
    path = write_members(tmp_path / "m.csv", [member("bad")])
    result = runner.invoke(args=["import", str(path), "--newsletter", "daily-briefing",
                                 "--refusals-out", str(tmp_path / "no" / "such" / "dir.csv")])
    assert result.exit_code == 1 and "Can't write the refused rows to" in result.output
    assert "Traceback" not in result.output


def test_our_own_export_imports_back_unchanged(runner, app, tmp_path):
    from .import_files import formats_available

    if not formats_available():
        pytest.skip("import_formats is not written yet")
    with app.app_context():
        from newsletter import subscriptions
        from newsletter.extensions import db
        from newsletter.models import Newsletter, Reader, Subscription

        newsletter = db.session.query(Newsletter).filter_by(slug="daily-briefing").one()
        for number, status in enumerate(["confirmed", "confirmed", "unsubscribed"]):
            reader = Reader(email=f"own{number}@example.com", name=f"Own {number}")
            db.session.add(reader)
            db.session.flush()
            now = subscriptions.utcnow()
            db.session.add(Subscription(reader_id=reader.id, newsletter_id=newsletter.id, status=status,
                                        created_at=now, pending_since=now, confirmed_at=now,
                                        unsubscribed_at=now if status == "unsubscribed" else None))
        db.session.commit()
        db.session.remove()
    exported = tmp_path / "export.csv"
    result = runner.invoke(args=["export", "daily-briefing", "-o", str(exported)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["import", str(exported), "--newsletter", "daily-briefing"])
    assert result.exit_code == 0, result.output
    assert "as newsletter export" in result.output
    assert "0 new (of which 0 asked to confirm by email), 0 updated, 3 unchanged" in result.output


def test_a_mailchimp_zip(runner, app, tmp_path):
    import zipfile

    from .import_files import formats_available

    if not formats_available():
        pytest.skip("import_formats is not written yet")
    subscribed = write_members(tmp_path / "subscribed_members_export_ab12.csv", [member("z1@example.com", optin=OPTIN)])
    unsubscribed = write_members(tmp_path / "unsubscribed_members_export_ab12.csv",
                                 [member("z2@example.com", optin=OPTIN, unsub=OPTIN)], "unsubscribed")
    cleaned = write_members(tmp_path / "cleaned_members_export_ab12.csv",
                            [member("z3@example.com", clean=OPTIN)], "cleaned")
    archive = tmp_path / "members_export_ab12.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in (subscribed, unsubscribed, cleaned):
            zipped.write(path, path.name)
    result = runner.invoke(args=["import", str(archive), "--newsletter", "daily-briefing"])
    assert result.exit_code == 0, result.output
    assert "3 rows in" in result.output
    assert "2 new (of which 0 asked to confirm by email), 0 updated, 0 unchanged, 1 suppressed, 0 refused" in result.output
    assert sorted(query(app, "SELECT s.status FROM subscriptions s")) == [("confirmed",), ("unsubscribed",)]


def test_worker_once_says_how_many_import_confirmations_wait_for_the_hourly_rate(runner, app, tmp_path, smtp):
    app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"] = 1
    path = write_members(tmp_path / "subscribed_members.csv", [member(f"r{i}@example.com") for i in range(3)])
    assert runner.invoke(args=["import", str(path), "--newsletter", "daily-briefing"]).exit_code == 0
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert ("sent 1, will retry 0, failed 0, 2 import confirmation(s) wait for the hourly rate "
            "(NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR)") in result.output
    assert len(smtp.inbox.wait_for(1)) == 1
    again = runner.invoke(args=["worker", "--once"])
    assert "sent 0, will retry 0, failed 0, 2 import confirmation(s) wait" in again.output
