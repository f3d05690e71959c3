"""Indexes for the dashboard (events by action and day) and the export's first-signup source lookup.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

FIRST_SIGNUP = sa.text("action = 'signup_requested'")


def upgrade():
    op.create_index('ix_consent_events_action_time', 'consent_events', ['action', 'occurred_at'])
    op.create_index('ix_consent_events_first_signup', 'consent_events', ['reader_id', 'newsletter_id', 'id'],
                    postgresql_include=['source'], postgresql_where=FIRST_SIGNUP, sqlite_where=FIRST_SIGNUP)


def downgrade():
    op.drop_index('ix_consent_events_first_signup', table_name='consent_events')
    op.drop_index('ix_consent_events_action_time', table_name='consent_events')
