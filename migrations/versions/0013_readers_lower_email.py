"""An index of readers by lower(email): suppressions find a reader by an address quoted in any case.

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_readers_lower_email', 'readers', [sa.text('lower(email)')])


def downgrade():
    op.drop_index('ix_readers_lower_email', table_name='readers')
