"""Subscriptions remember when a confirmation email last named them, so that a signup in a second box
on a page gets its own email at once.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('confirmation_sent_at', sa.DateTime(timezone=True), nullable=True))
    # Until now every confirmation email named all of the reader's pending subscriptions, so one
    # was named exactly when the reader's last email went out after it became pending. The others
    # (the second box's newsletter, never mailed) get their email at the reader's next signup.
    op.execute(
        "UPDATE subscriptions SET confirmation_sent_at = ("
        " SELECT readers.confirmation_sent_at FROM readers WHERE readers.id = subscriptions.reader_id)"
        " WHERE status = 'pending' AND EXISTS ("
        " SELECT 1 FROM readers WHERE readers.id = subscriptions.reader_id"
        " AND readers.confirmation_sent_at >= subscriptions.pending_since)"
    )


def downgrade():
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_column('confirmation_sent_at')
