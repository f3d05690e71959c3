"""The suppression list and the bounces and complaints that fill it.

An address is looked up by its key, a keyed hash of the lowercased address: bounce reports and
imports write addresses in any case, and an erased reader's entry must keep no address at all.
The key's secret is NEWSLETTER_SUPPRESSION_KEY (by default the secret key the list was built with,
see config._oldest_key): if it changed, no entry would match any more, so it is set apart from the
key that signs links.

An address has at most one mail-stopping entry in force and, beside it, at most one `erased`
entry: an erasure's do-not-import record is never lifted nor replaced by a bounce or a block.

A new mail-stopping entry is also a change of each reader with that address: it records a
`suppressed` ConsentEvent for them in the same transaction (the reason in its `wording`, the
entry's source as its channel), which the changes feed and the webhooks tell as `reader.suppressed`.
Lifting it, when no other mail-stopping entry is left, records `unsuppressed` the same way
(`reader.unsuppressed`): a system kept in sync may mail the reader again.

Rules (record_event): a hard bounce or a complaint suppresses the address at once; soft bounces
suppress it once NEWSLETTER_SOFT_BOUNCE_LIMIT of them arrive within NEWSLETTER_SOFT_BOUNCE_WINDOW.

No Flask request in here: each function takes a session and plain values and leaves the commit to
the caller, like the rest of the domain.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import ColumnElement, Connection, Select, String, bindparam, exists, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import DELIVERY_EVENT_KINDS, SUPPRESSION_REASONS, ConsentEvent, DeliveryEvent, Reader, Suppression, utcnow
from .sql import in_list

# Reasons that stop our emails; `erased` only stops imports and syncs (see models.SUPPRESSION_REASONS).
MAIL_STOPPING = tuple(reason for reason in SUPPRESSION_REASONS if reason != "erased")
# What each kind of delivery event makes the suppression's reason.
_REASON_OF_KIND = {"hard_bounce": "hard_bounce", "complaint": "complaint", "soft_bounce": "soft_bounces"}
# A diagnostic is the receiving server's text: keep what a person reads, not a whole bounce message.
DIAGNOSTIC_LIMIT = 2000


class UnknownSuppression(LookupError):
    """No suppression in force with this id."""


class ErasedEntry(ValueError):
    """An `erased` entry is never lifted: it is what keeps imports from bringing an erased person back."""


def _comparable(address: str) -> str:
    """The form of `address` its key is made of: email-validator's normalized form, lowercased.

    An address email-validator refuses (bounce reports quote what the receiving server saw) is
    taken as written, stripped of spaces and angle brackets.
    """
    text = address.strip().strip("<>").strip()
    try:
        text = validate_email(text, check_deliverability=False, allow_display_name=False).normalized
    except EmailNotValidError:
        pass
    return text.lower()


def address_key(config: Mapping[str, Any], address: str) -> str:
    """The keyed hash (hex HMAC-SHA256) that stands for `address` on the suppression list."""
    secret = (config.get("NEWSLETTER_SUPPRESSION_KEY") or config["SECRET_KEY"]).encode()
    return hmac.new(secret, b"suppression:" + _comparable(address).encode("utf-8", "surrogatepass"),
                    hashlib.sha256).hexdigest()


def normalized_key(config: Mapping[str, Any], address: str) -> str:
    """address_key of an address email-validator has normalized already (a reader's), without validating it again.

    Normalizing is idempotent, so this is address_key's value, at a twentieth of its cost: for the
    signup path and exports, which take the key of every address they see.
    """
    secret = (config.get("NEWSLETTER_SUPPRESSION_KEY") or config["SECRET_KEY"]).encode()
    return hmac.new(secret, b"suppression:" + address.lower().encode("utf-8", "surrogatepass"),
                    hashlib.sha256).hexdigest()


def key_maker(config: Mapping[str, Any]) -> Callable[[str], str]:
    """normalized_key for many addresses in a row (an export's), with the HMAC's secret hashed once."""
    secret = (config.get("NEWSLETTER_SUPPRESSION_KEY") or config["SECRET_KEY"]).encode()
    prefixed = hmac.new(secret, b"suppression:", hashlib.sha256)

    def key(address: str) -> str:
        copy = prefixed.copy()
        copy.update(address.lower().encode("utf-8", "surrogatepass"))
        return copy.hexdigest()

    return key


def stops_mail(key: ColumnElement[str] | None = None) -> ColumnElement[bool]:
    """SQL: whether a mail-stopping entry is in force for `key` (by default the bind parameter `suppression_key`)."""
    if key is None:
        key = bindparam("suppression_key", type_=String())
    return exists().where(Suppression.address_key == key, Suppression.lifted_at.is_(None),
                          Suppression.reason.in_(MAIL_STOPPING))


def stopping_reason(connection: Session | Connection, key: str) -> str | None:
    """The reason of the mail-stopping entry in force for `key`, if any: one look at the unique index."""
    return connection.scalar(
        select(Suppression.reason).where(Suppression.address_key == key, Suppression.lifted_at.is_(None),
                                         Suppression.reason.in_(MAIL_STOPPING))
    )


@dataclass(frozen=True)
class Matcher:
    """Finds many normalized addresses' mail-stopping reasons: reasons.get(form(address)), None if not suppressed."""

    form: Callable[[str], str]  # the address as the keys of `reasons` are: lowercased, or its key
    reasons: dict[str, str]

    def reason(self, address: str) -> str | None:
        return self.reasons.get(self.form(address))


def mail_stopping_matcher(session: Session, config: Mapping[str, Any]) -> Matcher | None:
    """A Matcher of the mail-stopping entries in force, for many addresses (an export's); None if there are none.

    The entries are read once (a list's thousands of bounces and complaints, not its millions of
    readers). An entry keeps the address as reported: when each one's lowercased or normalized form
    hashes to its key, addresses are matched by that form, a dictionary look-up; otherwise by key.
    """
    rows = session.execute(
        select(Suppression.address_key, Suppression.email, Suppression.reason)
        .where(Suppression.lifted_at.is_(None), Suppression.reason.in_(MAIL_STOPPING))
    ).all()
    if not rows:
        return None
    by_form: dict[str, str] = {}
    for key, email, reason in rows:
        form = _form_of_key(config, key, email)
        if form is None:  # an entry made from a key alone: only keys can find it
            return Matcher(key_maker(config), {key: reason for key, _, reason in rows})
        by_form[form] = reason
    return Matcher(str.lower, by_form)


def _form_of_key(config: Mapping[str, Any], key: str, email: str | None) -> str | None:
    """The lowercased form of `email` whose normalized_key is `key`, if either simple one is."""
    if email is None:
        return None
    if normalized_key(config, email.lower()) == key:
        return email.lower()
    # Reported in another form (an IDN domain in ASCII, angle brackets): normalizing costs 30 µs, so only then.
    form = _comparable(email)
    return form if normalized_key(config, form) == key else None


def in_force(session: Session, key: str) -> Suppression | None:
    """The entry in force for this address key: the mail-stopping one if any, else the `erased` one."""
    entries = list(session.scalars(
        select(Suppression).where(Suppression.address_key == key, Suppression.lifted_at.is_(None))
    ))
    return _stopping_first(entries)


def _stopping_first(entries: list[Suppression]) -> Suppression | None:
    stopping = [entry for entry in entries if entry.reason != "erased"]
    return (stopping or entries or [None])[0]


def erased_in_force(session: Session, key: str) -> Suppression | None:
    """The `erased` entry in force for this address key: its reader was erased, an import must not bring them back."""
    return session.scalars(
        select(Suppression).where(Suppression.address_key == key, Suppression.lifted_at.is_(None),
                                  Suppression.reason == "erased")
    ).first()


def mail_stopped(session: Session, config: Mapping[str, Any], address: str) -> Suppression | None:
    """The entry that forbids mailing `address`, if any (an `erased` entry does not)."""
    return session.scalars(
        select(Suppression).where(Suppression.address_key == address_key(config, address),
                                  Suppression.lifted_at.is_(None), Suppression.reason.in_(MAIL_STOPPING))
    ).first()


def keys_in_force(session: Session, keys: Iterable[str]) -> dict[str, str]:
    """Of `keys`, those with an entry in force, each with its reason (for imports, a batch at a time).

    A key with both an `erased` entry and a mail-stopping one is reported `erased`: imports refuse
    an erased reader outright.
    """
    wanted = list(set(keys))
    dialect = session.get_bind().dialect.name
    # PostgreSQL takes the whole batch as one array; SQLite's parameters are counted, so 5,000 at a time.
    step = (len(wanted) or 1) if dialect == "postgresql" else 5000
    query = select(Suppression.address_key, Suppression.reason).where(
        in_list(Suppression.address_key, "keys", String(), dialect), Suppression.lifted_at.is_(None))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), step):
        for key, reason in session.execute(query, {"keys": wanted[start:start + step]}):
            if found.get(key) != "erased":
                found[key] = reason
    return found


def suppress(session: Session, config: Mapping[str, Any], address: str | None, *, reason: str, source: str,
             detail: str | None = None, admin_id: int | None = None, key: str | None = None,
             when: datetime | None = None) -> Suppression:
    """Put the address on the list (or keep the entry already in force); the entry in force is returned.

    A key has at most one mail-stopping entry and, apart from it, at most one `erased` entry: the
    two never replace each other, so lifting a bounce never ends an erasure's do-not-import. When
    the key has an `erased` entry, a new mail-stopping entry keeps no address and no detail (the
    erased person's address must not come back through a late bounce). `key` without `address` is
    for erasure, which keeps no address.
    """
    if reason not in SUPPRESSION_REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    if key is None:
        if address is None:
            raise ValueError("suppress() needs an address or its key")
        key = address_key(config, address)
    same_kind = (Suppression.reason == "erased") if reason == "erased" else Suppression.reason.in_(MAIL_STOPPING)

    def current() -> Suppression | None:
        return session.scalars(
            select(Suppression).where(Suppression.address_key == key, Suppression.lifted_at.is_(None), same_kind)
        ).first()

    existing = current()
    if existing is not None:
        return existing
    reported = address
    if reason == "erased" or erased_in_force(session, key) is not None:
        address, detail = None, None
    entry = Suppression(address_key=key, email=address, reason=reason, source=source, detail=_cut(detail),
                        created_at=when or utcnow(), created_by_id=admin_id)
    try:
        with session.begin_nested():
            session.add(entry)
    except IntegrityError:
        # A concurrent report of the same address won: its entry is the one in force (and its event recorded).
        winner = current()
        if winner is None:
            raise
        return winner
    if reason != "erased" and reported is not None:
        # Even when the key has an `erased` entry (and the new one keeps no address): a person who
        # signed up again after their erasure is a new reader, and it is their address.
        record_suppressed(session, [(reported, reason, source, entry.created_at)])
    return entry


def _reader_forms(address: str) -> set[str]:
    """The lowercased forms a reader's email (email-validator's normalized form) of `address` can have.

    A reader is keyed by the normalized form, whose local part keeps its case as the reader typed
    it, while reports quote the address in any case (most lowercase it): readers are found by
    lower(email), which ix_readers_lower_email indexes.
    """
    text = address.strip().strip("<>").strip()
    forms = {text.lower()}
    try:
        normalized = validate_email(text, check_deliverability=False, allow_display_name=False).normalized
    except EmailNotValidError:
        return forms
    return forms | {normalized.lower()}


def readers_by_lowered_email(dialect: str) -> Select[tuple[int, str]]:
    """SQL: (id, lower(email)) of the readers not erased whose lower(email) is in the bound list `emails`."""
    lowered = func.lower(Reader.email)
    return select(Reader.id, lowered).where(in_list(lowered, "emails", String(), dialect), Reader.erased_at.is_(None))


def record_suppressed(session: Session, entries: Iterable[tuple[str, str, str, datetime]]) -> int:
    """Record a `suppressed` ConsentEvent for each reader of each newly suppressed address; how many.

    `entries` are (address, reason, source, when) of new mail-stopping entries, each once: the
    caller records an entry's event when it puts the entry in force, not when it finds it there.
    A reader matches whatever the case of the address, as its suppression key does (readers who
    differ only in case are each told). SQLite's lower() folds ASCII letters only: there, a reader
    whose local part has non-ASCII capitals matches only a report quoting it in the same case.
    """
    return _record_for_readers(session, "suppressed", entries)


def _record_for_readers(session: Session, action: str, entries: Iterable[tuple[str, str, str, datetime]]) -> int:
    """Record an `action` ConsentEvent (reason as its wording) for each reader of each (address, reason, source, when)."""
    wanted: dict[str, tuple[str, str, datetime]] = {}
    for address, reason, source, when in entries:
        for form in _reader_forms(address):
            wanted.setdefault(form, (reason, source, when))
    if not wanted:
        return 0
    dialect = session.get_bind().dialect.name
    step = (len(wanted) or 1) if dialect == "postgresql" else 5000
    forms = list(wanted)
    query = readers_by_lowered_email(dialect)
    events = []
    for start in range(0, len(forms), step):
        for reader_id, form in session.execute(query, {"emails": forms[start:start + step]}):
            reason, source, when = wanted[form]
            events.append({"reader_id": reader_id, "newsletter_id": None, "action": action,
                           "occurred_at": when, "source": source[:32], "wording": reason})
    if events:
        session.execute(insert(ConsentEvent), events)
    return len(events)


def lift(session: Session, suppression_id: int, *, admin_id: int | None, note: str | None = None,
         source: str = "admin") -> Suppression:
    """End the entry in force with this id; it stays, as the record of who lifted it, when and why.

    An `erased` entry cannot be lifted (ErasedEntry): the person can sign up again themselves.
    When no mail-stopping entry is left for the address, each of its readers gets an `unsuppressed`
    ConsentEvent (the lifted entry's reason as its wording, `source` as its channel), which the
    changes feed and the webhooks tell as `reader.unsuppressed`.
    """
    entry = session.scalars(
        select(Suppression).where(Suppression.id == suppression_id, Suppression.lifted_at.is_(None))
        .with_for_update()
    ).first()
    if entry is None:
        raise UnknownSuppression(suppression_id)
    if entry.reason == "erased":
        raise ErasedEntry(suppression_id)
    entry.lifted_at, entry.lifted_by_id, entry.lift_note = utcnow(), admin_id, _cut(note)
    session.flush()
    if entry.email is not None and stopping_reason(session, entry.address_key) is None:
        # Mail may go to the address again: each of its readers is told (an entry that kept no
        # address, its reader erased or made from a key alone, names none we could tell).
        _record_for_readers(session, "unsuppressed", [(entry.email, entry.reason, source, entry.lifted_at)])
    return entry


@dataclass(frozen=True)
class Recorded:
    """What record_event did: whether the event was new, and the entry in force after it (if any)."""

    event: DeliveryEvent | None
    suppression: Suppression | None


def _cut(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.replace("\x00", "").strip()
    return text[:DIAGNOSTIC_LIMIT] or None


def record_event(session: Session, config: Mapping[str, Any], address: str, *, kind: str, provider: str,
                 occurred_at: datetime | None = None, diagnostic: str | None = None,
                 provider_event_id: str | None = None) -> Recorded:
    """Record a bounce or complaint about `address` and apply the rules; a repeated event is recorded once.

    `provider_event_id` is the provider's id of the event (a webhook redelivered, a message piped
    twice): an event already recorded under it changes nothing and comes back with event=None.
    """
    if kind not in DELIVERY_EVENT_KINDS:
        raise ValueError(f"unknown delivery event kind {kind!r}")
    key = address_key(config, address)
    if erased_in_force(session, key) is not None:
        # The reader was erased: keep that the address bounced or complained, not the words quoting it.
        diagnostic = None
    now = utcnow()
    event = DeliveryEvent(address_key=key, kind=kind, provider=provider, occurred_at=occurred_at or now,
                          received_at=now, diagnostic=_cut(diagnostic),
                          provider_event_id=provider_event_id[:255] if provider_event_id else None)
    try:
        with session.begin_nested():
            session.add(event)
    except IntegrityError:
        return Recorded(event=None, suppression=in_force(session, key))

    if kind == "soft_bounce":
        window = timedelta(seconds=config["NEWSLETTER_SOFT_BOUNCE_WINDOW"])
        recent = session.scalar(
            select(func.count()).select_from(DeliveryEvent)
            .where(DeliveryEvent.address_key == key, DeliveryEvent.kind == "soft_bounce",
                   DeliveryEvent.occurred_at >= event.occurred_at - window)
        ) or 0
        if recent < config["NEWSLETTER_SOFT_BOUNCE_LIMIT"]:
            entry = in_force(session, key)
            return Recorded(event=event, suppression=entry)
        days = f"{window.total_seconds() / 86400:g}"
        detail = f"{recent} soft bounces within {days} days; last: {diagnostic or 'no diagnostic'}"
    else:
        detail = diagnostic
    entry = suppress(session, config, address, reason=_REASON_OF_KIND[kind], source=provider, detail=detail,
                     key=key)
    return Recorded(event=event, suppression=entry)


def events_for(session: Session, config: Mapping[str, Any], address: str, limit: int = 200) -> list[DeliveryEvent]:
    """The bounces and complaints recorded for `address`, newest first."""
    return list(session.scalars(
        select(DeliveryEvent).where(DeliveryEvent.address_key == address_key(config, address))
        .order_by(DeliveryEvent.occurred_at.desc(), DeliveryEvent.id.desc()).limit(limit)
    ))
