"""The suppression list as the admin sees it: entries page by page, found by address; adding and lifting by hand.

The rules themselves (what suppresses, the keys) are in suppressions.py; this module only looks
entries up and wraps the admin's two changes. No Flask request in here; the caller commits.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from . import addresses, subscriptions, suppressions
from .models import SUPPRESSION_REASONS, AdminUser, Reader, Suppression
from .paging import PageNumbers

PAGE_SIZE = 50
NOTE_LIMIT = 2000
# The list's views: entries in force (what stops mail or imports now), or those lifted since.
STATES = ("in_force", "lifted")
REASON_LABELS = {
    "hard_bounce": "Hard bounce",
    "complaint": "Complaint (reported as spam)",
    "soft_bounces": "Repeated soft bounces",
    "blocked": "Blocked by an admin",
    "manual": "Added by an admin",
    "import": "Imported as cleaned",
    "erased": "Erased reader (do not contact; no address kept)",
}


# Why an `erased` entry has no lift button: it is the erasure's promise, not a mail stop.
ERASED_STAYS = ("This entry can't be lifted: it keeps imports from bringing back a reader whose data was erased "
                "on request. Nothing stops that person from signing up again themselves.")


class RefusedChange(ValueError):
    """The admin's change can't be made; `field` names the form field at fault (None: the whole form)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Listed:
    entry: Suppression
    created_by: str | None  # the admin's email, if an admin made it
    lifted_by: str | None


@dataclass(frozen=True)
class SuppressionPage(PageNumbers):
    """One page of entries, newest first, and where it sits among all matches."""

    entries: list[Listed]
    total: int
    page: int
    per_page: int

    @property
    def shown(self) -> int:
        return len(self.entries)


def _searchable(text: str) -> bool:
    # An address holds no control characters (and PostgreSQL's text can't hold NUL): such text matches nothing.
    return not any(unicodedata.category(char) in ("Cc", "Cs") for char in text)


def search(session: Session, config: Mapping[str, Any], *, address: str = "", reason: str | None = None,
           state: str = "in_force", page: int = 1, per_page: int | None = None) -> SuppressionPage:
    """Entries in force (or lifted), newest first; of one `reason`; of `address` (its key, or as written, any case)."""
    per_page = per_page or PAGE_SIZE
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    if reason is not None and reason not in SUPPRESSION_REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    address = address.strip()
    if address and not _searchable(address):
        return SuppressionPage([], 0, 1, per_page)
    query = select(Suppression.id).where(
        Suppression.lifted_at.is_(None) if state == "in_force" else Suppression.lifted_at.is_not(None))
    if reason is not None:
        query = query.where(Suppression.reason == reason)
    if address:
        query = query.where(or_(Suppression.address_key == suppressions.address_key(config, address),
                                func.lower(Suppression.email) == address.lower()))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = min(max(1, page), max(1, math.ceil(total / per_page)))
    creator, lifter = aliased(AdminUser), aliased(AdminUser)
    newest = Suppression.lifted_at.desc() if state == "lifted" else Suppression.created_at.desc()
    rows = session.execute(
        select(Suppression, creator.email, lifter.email)
        .outerjoin(creator, creator.id == Suppression.created_by_id)
        .outerjoin(lifter, lifter.id == Suppression.lifted_by_id)
        .where(Suppression.id.in_(query))
        .order_by(newest, Suppression.id.desc()).offset((page - 1) * per_page).limit(per_page)
    )
    return SuppressionPage([Listed(*row) for row in rows], total, page, per_page)


def _note(note: str | None, *, required: bool) -> str | None:
    note = (note or "").strip()
    if required and not note:
        raise RefusedChange("Say why, for the record.", "note")
    if len(note) > NOTE_LIMIT:
        raise RefusedChange(f"A note can be at most {NOTE_LIMIT} characters long.", "note")
    if not _searchable(note.replace("\n", " ").replace("\r", " ").replace("\t", " ")):
        raise RefusedChange("A note can't contain control characters.", "note")
    return note or None


def add(session: Session, config: Mapping[str, Any], address: str, note: str | None, *, admin_id: int
        ) -> tuple[Suppression, bool]:
    """Put `address` on the list by hand (reason `manual`); (the entry in force, whether it is new).

    An address already stopped keeps its entry (with its reason). An erased reader's address gets
    its own `manual` entry next to the `erased` one, keeping no address (see suppressions.suppress).
    """
    try:
        normalized = addresses.normalize(address)
    except addresses.InvalidAddress as error:
        raise RefusedChange(str(error), "address") from None
    note = _note(note, required=False)
    before = suppressions.mail_stopped(session, config, normalized)
    if before is not None:
        return before, False
    entry = suppressions.suppress(session, config, normalized, reason="manual", source="admin", detail=note,
                                  admin_id=admin_id)
    return entry, True


def lift(session: Session, config: Mapping[str, Any], suppression_id: int, note: str | None, *, admin_id: int
         ) -> Suppression:
    """Lift the entry in force with this id, with the admin's note; a `blocked` entry unblocks its reader.

    suppressions.UnknownSuppression if there is no such entry in force (two admins lifting it at
    once: the second one finds it lifted); RefusedChange for an `erased` entry, which stays.
    """
    note = _note(note, required=True)
    entry = session.get(Suppression, suppression_id)
    if entry is None or entry.lifted_at is not None:
        raise suppressions.UnknownSuppression(suppression_id)
    if entry.reason == "erased":
        raise RefusedChange(ERASED_STAYS)
    reader = None
    if entry.reason == "blocked" and entry.email is not None:
        # The reader's row first, then the entry's: the order subscriptions.unblock locks them in.
        reader = session.scalar(select(Reader).where(Reader.email == entry.email, Reader.erased_at.is_(None))
                                .with_for_update().execution_options(populate_existing=True))
    entry = session.scalar(select(Suppression).where(Suppression.id == suppression_id).with_for_update()
                           .execution_options(populate_existing=True))
    if entry is None or entry.lifted_at is not None:
        raise suppressions.UnknownSuppression(suppression_id)
    if reader is not None and reader.blocked_at is not None:
        # The block and its entry are one thing: lifting one ends the other (unblock lifts the entry).
        subscriptions.unblock(session, reader.id, source=subscriptions.Source(channel="admin", wording=note),
                              config=config, admin_id=admin_id)
        if entry.lifted_at is not None:
            entry.lift_note = note
            return entry
    return suppressions.lift(session, suppression_id, admin_id=admin_id, note=note)


def get(session: Session, suppression_id: int) -> Listed | None:
    """One entry, lifted or not, with who made and lifted it."""
    creator, lifter = aliased(AdminUser), aliased(AdminUser)
    row = session.execute(
        select(Suppression, creator.email, lifter.email)
        .outerjoin(creator, creator.id == Suppression.created_by_id)
        .outerjoin(lifter, lifter.id == Suppression.lifted_by_id)
        .where(Suppression.id == suppression_id)
    ).first()
    return Listed(*row) if row is not None else None


def for_address(session: Session, config: Mapping[str, Any], address: str) -> Suppression | None:
    """The entry in force for a reader's (normalized) address, if any: the one that stops mail, else the `erased` one."""
    return suppressions.in_force(session, suppressions.normalized_key(config, address))


def stopping_mail_to(session: Session, config: Mapping[str, Any], address: str) -> Suppression | None:
    """The mail-stopping entry in force for a live reader's (normalized) address, if any.

    A live reader's page shows only this: an `erased` entry for the address is about an earlier,
    erased reader (the person signed up again since), not about this one.
    """
    key = suppressions.normalized_key(config, address)
    entry = suppressions.in_force(session, key)
    return entry if entry is not None and entry.reason != "erased" else None
