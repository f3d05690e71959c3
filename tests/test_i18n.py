"""Languages: pages, the iframe, the JSON API, embed.js's texts and emails speak English or Ukrainian.

The language is the request's own `lang` (query, form or JSON body), else Accept-Language, else
English. What is checked is what a reader or a site developer sees: the html lang, the words on
pages, JSON error messages and the emails at a real SMTP server.
"""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

import newsletter
from newsletter import addresses

from .conftest import hidden_fields, link_in, query

TRANSLATIONS = Path(newsletter.__file__).resolve().parent / "translations"
LC_MESSAGES = TRANSLATIONS / "uk" / "LC_MESSAGES"
UK = {"Accept-Language": "uk-UA,uk;q=0.9,en;q=0.5"}
EN = {"Accept-Language": "en-GB,en;q=0.9"}


def text(response) -> str:
    """The response body as a reader reads it (entities such as &#39; decoded)."""
    return html.unescape(response.get_data(as_text=True))


def api_signup(client, body: dict, headers: dict | None = None):
    return client.post("/api/v1/subscriptions", json=body, headers=headers or {})


# --- pages ------------------------------------------------------------------------------------------

def test_hosted_page_follows_accept_language(client):
    page = text(client.get("/subscribe", headers=UK))
    assert '<html lang="uk">' in page
    assert "Підпишіться на наші розсилки" in page
    assert ">Адреса електронної пошти <" in page  # the email field's label
    assert 'placeholder="Введіть свою електронну адресу, щоб підписатися"' in page
    assert "позначено обов’язкові поля" in page
    assert "<legend>Розсилки" in page
    assert ">Підписатися</button>" in page
    assert "Email address" not in page

    english = text(client.get("/subscribe", headers=EN))
    assert '<html lang="en">' in english
    assert "Email address" in english and "indicates required" in english


def test_lang_parameter_overrides_accept_language(client):
    page = text(client.get("/subscribe/weekly-explainer?lang=uk", headers=EN))
    assert '<html lang="uk">' in page
    assert "Підпишіться на розсилку «The Weekly Explainer»" in page
    assert "Автор: Olena Kovalenko" in page

    english = text(client.get("/subscribe?lang=en", headers=UK))
    assert '<html lang="en">' in english
    assert "Subscribe to our newsletters" in english


@pytest.mark.parametrize("headers, url", [
    ({"Accept-Language": "de-DE,de;q=0.9,fr;q=0.8"}, "/subscribe"),
    ({}, "/subscribe?lang=de"),
    ({}, "/subscribe"),
])
def test_unsupported_language_falls_back_to_english(client, headers, url):
    page = text(client.get(url, headers=headers))
    assert '<html lang="en">' in page
    assert "Email address" in page and "Subscribe to our newsletters" in page


def test_hosted_form_errors_and_thank_you_page_in_ukrainian(client, drain, smtp):
    form = client.get("/subscribe?lang=uk")
    fields = {**hidden_fields(form.get_data(as_text=True)), "newsletters": ["daily-briefing"]}
    refused = client.post("/subscribe?lang=uk", data={**fields, "email": "reader.example.com"})
    assert refused.status_code == 422
    page = text(refused)
    assert "<title>Помилка: Підпишіться на наші розсилки</title>" in page
    assert "Будь ласка, виправте помилку нижче." in page
    assert "Адреса електронної пошти має містити знак @." in page

    sent = client.post("/subscribe?lang=uk", data={**fields, "email": "reader@example.com"})
    assert sent.status_code == 303
    assert sent.headers["Location"].endswith("/thanks?lang=uk")
    thanks = client.get(sent.headers["Location"])
    assert "Перевірте пошту" in text(thanks)
    assert "Дякуємо за підписку. Ми надіслали вам лист для підтвердження." in text(thanks)


def test_iframe_form_in_ukrainian(client):
    frame = client.get("/embed/weekly-explainer?lang=uk", headers=EN)
    page = text(frame)
    assert '<html lang="uk">' in page
    assert "Введіть свою електронну адресу, щоб підписатися" in page
    assert "Автор: Olena Kovalenko." in page
    assert "позначено обов’язкові поля" in page
    assert ">Підписатися</button>" in page

    # The form posts back to its own URL, ?lang=uk included: errors and thanks stay Ukrainian.
    fields = hidden_fields(frame.get_data(as_text=True))
    refused = client.post("/embed/weekly-explainer?lang=uk", data={**fields, "email": "nobody"})
    assert refused.status_code == 422
    assert "Адреса електронної пошти має містити знак @." in text(refused)
    done = client.post("/embed/weekly-explainer?lang=uk", data={**fields, "email": "reader@example.com"})
    assert done.status_code == 200
    assert "Дякуємо, що підписалися на цю розсилку. Ми надіслали вам лист для підтвердження." in text(done)


def test_error_pages_in_ukrainian(client):
    missing = client.get("/no-such-page", headers=UK)
    assert missing.status_code == 404
    page = text(missing)
    assert "<h1>Не знайдено</h1>" in page
    assert "За цією адресою нічого немає." in page

    unknown = client.get("/embed/no-such-letter?lang=uk")
    assert unknown.status_code == 404
    assert '<html lang="uk">' in text(unknown) and "Спробувати ще раз" in text(unknown)

    english = client.get("/no-such-page", headers=EN)
    assert "<h1>Not Found</h1>" in text(english) and "There is nothing at this address." in text(english)


# --- JSON API and embed.js --------------------------------------------------------------------------

@pytest.mark.parametrize("lang_in", ["body", "header"])
def test_api_errors_in_ukrainian(client, lang_in):
    def send(body):
        if lang_in == "body":
            return api_signup(client, {**body, "lang": "uk"}, EN)
        return api_signup(client, body, UK)

    bad_email = send({"email": "reader.example.com", "newsletters": ["daily-briefing"]})
    assert bad_email.status_code == 422
    assert bad_email.get_json()["errors"] == {"email": ["Адреса електронної пошти має містити знак @."]}

    unknown = send({"email": "reader@example.com", "newsletters": ["weekly"]})
    assert unknown.status_code == 422
    assert unknown.get_json()["errors"] == {"newsletters": ["Немає розсилки з назвою 'weekly'."]}

    too_long = send({"email": "reader@example.com", "newsletters": ["daily-briefing"], "form_id": "x" * 201})
    assert too_long.get_json()["errors"] == {"form_id": ["Поле form_id може містити щонайбільше 200 символів."]}


def test_api_errors_fall_back_to_english(client):
    body = {"email": "reader.example.com", "newsletters": ["daily-briefing"], "lang": "fr"}
    refused = api_signup(client, body, {"Accept-Language": "fr-FR,de;q=0.5"})
    assert refused.get_json()["errors"] == {"email": ["An email address must have an @-sign."]}
    unknown = api_signup(client, {"email": "reader@example.com", "newsletters": ["weekly"]}, {"Accept-Language": "pl"})
    assert unknown.get_json()["errors"] == {"newsletters": ["There is no newsletter called 'weekly'."]}


def test_api_rate_limit_message_in_each_request_language(app, client):
    app.config["NEWSLETTER_RATE_LIMIT_IP"] = "1/minute"
    assert api_signup(client, {"email": "first@example.com", "newsletters": ["daily-briefing"]}).status_code == 202
    ukrainian = api_signup(client, {"email": "second@example.com", "newsletters": ["daily-briefing"]}, UK)
    assert ukrainian.status_code == 429
    assert ukrainian.get_json()["errors"]["request"] == [
        "Забагато спроб підписатися з вашої мережі. Зачекайте кілька хвилин і спробуйте ще раз."]
    english = api_signup(client, {"email": "third@example.com", "newsletters": ["daily-briefing"]}, EN)
    assert english.get_json()["errors"]["request"] == [
        "Too many signups from your network. Please wait a few minutes and try again."]


def test_embed_script_texts_in_ukrainian(client):
    ukrainian = client.get("/api/v1/forms?newsletters=daily-briefing,weekly-explainer&lang=uk", headers=EN)
    assert ukrainian.status_code == 200
    texts = ukrainian.get_json()["texts"]
    assert texts["email_label"] == "Введіть свою електронну адресу, щоб підписатися"
    assert texts["required_hint"] == "позначено обов’язкові поля"
    assert texts["invalid_email"] == "Будь ласка, введіть правильну адресу електронної пошти"
    assert texts["thanks"] == "Дякуємо, що підписалися на цю розсилку. Ми надіслали вам лист для підтвердження."

    english = client.get("/api/v1/forms?newsletters=daily-briefing", headers=EN).get_json()["texts"]
    assert english["email_label"] == "Enter your email to subscribe"
    assert english["invalid_email"] == "Please, enter correct email address"
    assert set(texts) == set(english)
    assert [key for key in english if texts[key] == english[key]] == []


BAD_ADDRESSES = [
    ("reader.example.com", "Адреса електронної пошти має містити знак @."),
    ("@example.com", "Перед знаком @ має щось бути."),
    ("reader@", "Після знака @ має щось бути."),
    ("re..ader@example.com", "В адресі електронної пошти не може бути двох крапок поспіль."),
    (".reader@example.com", "Адреса електронної пошти не може починатися з крапки."),
    ("reader.@example.com", "В адресі електронної пошти не може бути крапки безпосередньо перед знаком @."),
    ("reader@example", "Частина після знака @ недійсна: у ній має бути крапка."),
    ("reader@example.com.", "Адреса електронної пошти не може закінчуватися крапкою."),
    ("reader@-example.com", "В адресі електронної пошти не може бути дефіса безпосередньо після знака @."),
    ("Reader <reader@example.com>", "Тут не можна вказувати ім’я чи кутові дужки навколо адреси — "
                                    "лише саму адресу електронної пошти."),
    ("", "Введіть адресу електронної пошти."),
    ("a" * 321, "Ця адреса електронної пошти задовга."),
]


@pytest.mark.parametrize("address, why", BAD_ADDRESSES)
def test_email_validator_messages_are_translated(app, address, why):
    # email-validator says these in English; a new version that rewords one shows up here.
    with app.test_request_context("/subscribe?lang=uk"):
        with pytest.raises(addresses.InvalidAddress) as refused:
            addresses.normalize(address)
    assert str(refused.value) == why


# --- emails -----------------------------------------------------------------------------------------

def test_confirmation_email_of_a_ukrainian_signup_is_ukrainian(app, client, drain, smtp):
    response = api_signup(client, {"email": "reader@example.com", "newsletters": ["weekly-explainer"],
                                   "name": "Оксана", "lang": "uk"})
    assert response.status_code == 202
    drain()
    [message] = smtp.inbox.wait_for(1)
    assert message["Subject"] == "Підтвердьте підписку на розсилку «The Weekly Explainer»"
    body = message.get_body(("plain",)).get_content()
    assert "Добрий день, Оксана!" in body
    assert "Підтвердьте, будь ласка, що хочете отримувати:" in body
    assert "The Weekly Explainer (автор: Olena Kovalenko)" in body
    assert "Посилання діє 7 днів." in body
    assert "Confirm" not in body
    page = message.get_body(("html",)).get_content()
    assert '<html lang="uk">' in page and "Підтвердити підписку" in page

    # What the reader agreed to is kept in the words they were shown.
    [(wording,)] = query(app, "SELECT wording FROM consent_events")
    assert wording == ("Надсилайте мені електронною поштою: The Weekly Explainer. "
                       "Я можу будь-коли відписатися за посиланням у кожному листі.")


def test_confirmation_subject_counts_newsletters_in_ukrainian(client, drain, smtp):
    api_signup(client, {"email": "reader@example.com", "newsletters": ["daily-briefing", "weekly-explainer"]}, UK)
    drain()
    [message] = smtp.inbox.wait_for(1)
    assert message["Subject"] == "Підтвердьте підписку на 2 розсилки"


def test_welcome_email_is_in_the_language_of_the_confirmation_email_not_of_the_confirming_page(client, drain, smtp):
    # The page follows the browser that opens the link; the welcome, the reader's language (their signup's).
    api_signup(client, {"email": "reader@example.com", "newsletters": ["daily-briefing"]}, EN)
    drain()
    [confirmation] = smtp.inbox.wait_for(1)
    assert confirmation["Subject"] == "Confirm your subscription to The Daily Briefing"
    path = "/" + link_in(confirmation, "/confirm/").split("://", 1)[1].split("/", 1)[1]
    page = client.get(path, headers=UK)
    assert "Так, підпишіть мене" in text(page)
    done = client.post(path, data=hidden_fields(page.get_data(as_text=True)), headers=UK)
    assert "Підписку підтверджено" in text(done)
    drain()
    welcome = smtp.inbox.wait_for(2)[1]
    assert welcome["Subject"] == "Welcome to The Daily Briefing"


# --- the catalogs -----------------------------------------------------------------------------------

CATALOGS = sorted(path.parent for path in TRANSLATIONS.glob("*/LC_MESSAGES/messages.po"))


def _messages(catalog) -> dict:
    """msgid (or singular and plural) -> translation(s), as gettext will look them up."""
    def key(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    return {key(message.id): key(message.string) for message in catalog if message.id}


def test_ukrainian_is_among_the_catalogs():
    assert LC_MESSAGES in CATALOGS


@pytest.mark.parametrize("lc_messages", CATALOGS, ids=lambda path: path.parent.name)
def test_compiled_catalog_is_up_to_date(lc_messages, tmp_path):
    """messages.mo is what `pybabel compile` makes of messages.po today: nobody forgot to recompile."""
    with open(lc_messages / "messages.po", "rb") as po:
        source = read_po(po, locale=lc_messages.parent.name)
    with open(tmp_path / "messages.mo", "wb") as mo:
        write_mo(mo, source)
    with open(tmp_path / "messages.mo", "rb") as fresh, open(lc_messages / "messages.mo", "rb") as shipped:
        expected, actual = read_mo(fresh), read_mo(shipped)
    assert _messages(actual) == _messages(expected), "run: pybabel compile -d newsletter/translations"
    assert actual.plural_forms == expected.plural_forms


@pytest.mark.parametrize("lc_messages", CATALOGS, ids=lambda path: path.parent.name)
def test_catalog_is_complete_and_consistent(lc_messages):
    with open(lc_messages / "messages.po", "rb") as po:
        catalog = read_po(po, locale=lc_messages.parent.name)
    untranslated = [message.id for message in catalog
                    if message.id and (message.fuzzy or not all(message.string if isinstance(message.string, tuple)
                                                                else [message.string]))]
    assert untranslated == []
    # Placeholders match the English ones (python-format), and every plural form is given.
    problems = [(message.id, [str(error) for error in errors]) for message, errors in catalog.check()]
    assert problems == []
