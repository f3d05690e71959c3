"""Drop ix_subscriptions_newsletter_id: ix_subscriptions_newsletter_status (newsletter_id, status) serves
every lookup by newsletter, and each index costs every signup and confirmation an index write.

Revision ID: 0005
Revises: 0004
"""
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.drop_index('ix_subscriptions_newsletter_id', table_name='subscriptions')


def downgrade():
    op.create_index('ix_subscriptions_newsletter_id', 'subscriptions', ['newsletter_id'])
