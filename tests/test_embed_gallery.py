"""The embed gallery (GET /embed) shows each snippet's code as escaped text to copy, beside a labelled preview."""

from __future__ import annotations

from html.parser import HTMLParser

from markupsafe import escape

from newsletter import catalog
from newsletter.extensions import db

ODD_NAME = 'Tom & "Jerry" <b>bold</b></code></pre><form action="https://evil.example/">'


class Gallery(HTMLParser):
    """The live tags of the page, and the text of each <code> element by its id."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.code: dict[str, str] = {}
        self._in_code: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "code":
            self._in_code = dict(attrs).get("id") or ""
            self.code[self._in_code] = ""

    def handle_endtag(self, tag):
        if tag == "code":
            self._in_code = None

    def handle_data(self, data):
        if self._in_code is not None:
            self.code[self._in_code] += data


def test_gallery_snippets_are_escaped_code_not_live_markup(app, client):
    with app.app_context():
        catalog.add_newsletter(db.session, "odd-name", name="x")
        db.session.commit()
        # The catalog refuses nothing here: a name is one line of any printable text.
        db.session.execute(db.text("UPDATE newsletters SET name = :name WHERE slug = 'odd-name'"), {"name": ODD_NAME})
        db.session.commit()
        db.session.remove()
    response = client.get("/embed")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "<title>Embed signup forms</title>" in text
    page = Gallery(text)
    base = app.config["NEWSLETTER_PUBLIC_URL"].rstrip("/")
    active = ["daily-briefing", "no-welcome", "odd-name", "weekly-explainer"]

    # The source of each snippet is the text of its <code>: what a developer copies and pastes.
    plain = page.code["code-daily-briefing-plain_form"]
    assert plain.startswith(f'<form action="{base}/subscribe" method="post">')
    assert '<input type="hidden" name="newsletters" value="daily-briefing">' in plain
    assert 'name="csrf_token"' not in plain  # the token is the preview's, not the snippet's
    assert page.code["code-daily-briefing-iframe"].startswith("<!-- Optional:")
    assert f'<iframe src="{base}/embed/daily-briefing?form_id=daily-briefing-frame"' in \
        page.code["code-daily-briefing-iframe"]
    assert page.code["code-daily-briefing-script"].startswith('<div data-newsletter="daily-briefing"')
    # In the HTML that source is escaped once more, so the page shows it rather than running it.
    assert escape(f'<form action="{base}/subscribe" method="post">') in text

    # A name with markup is escaped inside the snippet (safe to paste) and again around it (shown as text).
    odd = page.code["code-odd-name-plain_form"]
    assert f"subscribe to {escape(ODD_NAME)} <span" in odd
    assert ODD_NAME not in text and "<b>bold</b>" not in text

    # The only live forms are the previews of the plain form, one per newsletter, each labelled as a preview.
    forms = [attrs for tag, attrs in page.tags if tag == "form"]
    assert [attrs["action"] for attrs in forms] == [f"{base}/subscribe"] * len(active)
    assert not [attrs for tag, attrs in page.tags if tag == "form" and "evil" in (attrs.get("action") or "")]
    labels = [attrs.get("aria-labelledby") for tag, attrs in page.tags if attrs.get("class") == "preview"]
    assert len(labels) == 3 * len(active) and all(labels)
    assert "Preview: Plain HTML form" in text

    # Each snippet has a copy button naming what it copies, and a live region that says when it did.
    buttons = {attrs["data-copy"]: attrs for tag, attrs in page.tags if tag == "button" and "data-copy" in attrs}
    assert set(buttons) == {f"code-{slug}-{kind}" for slug in active for kind in ("plain_form", "iframe", "script")}
    assert buttons["code-daily-briefing-plain_form"]["aria-label"] == \
        "Copy the Plain HTML form code for The Daily Briefing"
    assert all("hidden" in attrs for attrs in buttons.values())  # shown by copy.js: no dead buttons without it
    assert [attrs["src"] for tag, attrs in page.tags if tag == "script" and "copy.js" in (attrs.get("src") or "")] \
        == ["/static/copy.js"]
    statuses = {attrs["id"] for tag, attrs in page.tags if attrs.get("role") == "status"}
    assert {f"{code_id}-status" for code_id in buttons} <= statuses
