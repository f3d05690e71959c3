"""A partial index for the email sender's claim: pending emails by due time, no webhook rows.

Revision ID: 0014
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

WHERE = "status = 'pending' AND endpoint_id IS NULL"


def upgrade():
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_messages_email_due', ['next_attempt_at', 'id'], unique=False,
                              postgresql_where=sa.text(WHERE), sqlite_where=sa.text(WHERE))


def downgrade():
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_messages_email_due', postgresql_where=sa.text(WHERE),
                            sqlite_where=sa.text(WHERE))
