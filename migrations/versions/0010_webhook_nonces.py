"""One-time values of signed provider webhooks (Mailgun's tokens), to refuse replays.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('webhook_nonces',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('nonce', sa.String(length=255), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_nonces')),
    sa.UniqueConstraint('provider', 'nonce', name='uq_webhook_nonces_provider_nonce')
    )
    with op.batch_alter_table('webhook_nonces', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_nonces_seen_at', ['seen_at'], unique=False)


def downgrade():
    with op.batch_alter_table('webhook_nonces', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_nonces_seen_at')
    op.drop_table('webhook_nonces')
