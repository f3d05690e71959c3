"""The changes feed's last position ever given, so that a purge deleting the last events reuses none.

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('feed_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('last_position', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_feed_state_one_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feed_state'))
    )
    op.execute("INSERT INTO feed_state (id, last_position) "
               "SELECT 1, max(feed_position) FROM consent_events HAVING max(feed_position) IS NOT NULL")


def downgrade():
    op.drop_table('feed_state')
