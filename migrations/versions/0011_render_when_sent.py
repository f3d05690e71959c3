"""Deliveries say what to deliver and are rendered when sent; webhook endpoints; the changes feed's positions.

Outbox rows queued from now on hold the kind, reader, newsletters and language of an email (or the
endpoint and consent event of a webhook) instead of a rendered email, so the rendered columns become
optional; rows queued before keep theirs and are sent as they are. Consent events get their place in
the changes feed once they have committed (newsletter/changes.py).

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('webhook_endpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.Column('event_types', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('secret', sa.String(length=100), nullable=False),
    sa.Column('previous_secret', sa.String(length=100), nullable=True),
    sa.Column('previous_secret_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('feed_position', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('disabled_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_endpoints'))
    )
    op.create_table('webhook_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('endpoint_id', sa.Integer(), nullable=False),
    sa.Column('outbox_message_id', sa.Integer(), nullable=True),
    sa.Column('event_id', sa.BigInteger(), nullable=True),
    sa.Column('event_type', sa.String(length=64), nullable=True),
    sa.Column('attempted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('response_start', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoints.id'], name=op.f('fk_webhook_attempts_endpoint_id_webhook_endpoints'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['outbox_message_id'], ['outbox_messages.id'], name=op.f('fk_webhook_attempts_outbox_message_id_outbox_messages'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_attempts'))
    )
    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_attempts_endpoint', ['endpoint_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_attempts_outbox_message_id'), ['outbox_message_id'], unique=False)

    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('feed_position', sa.BigInteger(), nullable=True))
        batch_op.create_index('ix_consent_events_feed_position', ['feed_position'], unique=True)
        batch_op.create_index('ix_consent_events_unpositioned', ['id'], unique=False, postgresql_where=sa.text('feed_position IS NULL'), sqlite_where=sa.text('feed_position IS NULL'))

    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('newsletter_ids', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('locale', sa.String(length=35), nullable=True))
        batch_op.add_column(sa.Column('endpoint_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('event_id', sa.BigInteger(), nullable=True))
        batch_op.alter_column('message_id',
               existing_type=sa.VARCHAR(length=255),
               nullable=True)
        batch_op.alter_column('mail_from',
               existing_type=sa.VARCHAR(length=400),
               nullable=True)
        batch_op.alter_column('to_address',
               existing_type=sa.VARCHAR(length=320),
               nullable=True)
        batch_op.alter_column('subject',
               existing_type=sa.VARCHAR(length=400),
               nullable=True)
        batch_op.alter_column('body_text',
               existing_type=sa.TEXT(),
               nullable=True)
        batch_op.alter_column('body_html',
               existing_type=sa.TEXT(),
               nullable=True)
        batch_op.alter_column('headers',
               existing_type=sa.JSON(),
               nullable=True)
        batch_op.create_index('ix_outbox_messages_endpoint_reader', ['endpoint_id', 'reader_id', 'id'], unique=False, postgresql_where=sa.text('endpoint_id IS NOT NULL'), sqlite_where=sa.text('endpoint_id IS NOT NULL'))
        batch_op.create_foreign_key(batch_op.f('fk_outbox_messages_endpoint_id_webhook_endpoints'), 'webhook_endpoints', ['endpoint_id'], ['id'], ondelete='CASCADE')



def downgrade():
    # The old code can only send rendered rows: what is still waiting in the new shape is marked
    # failed (it can't be sent any more), and every new-shape row gets empty rendered columns.
    outbox = sa.table('outbox_messages', sa.column('status'), sa.column('body_text'), sa.column('last_error'),
                      sa.column('message_id'), sa.column('id'), sa.column('mail_from'), sa.column('to_address'),
                      sa.column('subject'), sa.column('body_html'), sa.column('headers'), sa.column('endpoint_id'))
    op.execute(outbox.delete().where(outbox.c.endpoint_id.is_not(None)))
    op.execute(outbox.update().where(outbox.c.body_text.is_(None), outbox.c.status == 'pending')
               .values(status='failed', last_error='Not sent: queued for a newer version, downgraded before it was sent'))
    op.execute(outbox.update().where(outbox.c.message_id.is_(None))
               .values(message_id=sa.literal('<downgraded-') + sa.cast(outbox.c.id, sa.String()) + sa.literal('@localhost>')))
    for column in ('mail_from', 'to_address', 'subject', 'body_text', 'body_html'):
        op.execute(outbox.update().where(outbox.c[column].is_(None)).values({column: ''}))
    op.execute(outbox.update().where(outbox.c.headers.is_(None)).values(headers=sa.text("'{}'")))
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_outbox_messages_endpoint_id_webhook_endpoints'), type_='foreignkey')
        batch_op.drop_index('ix_outbox_messages_endpoint_reader', postgresql_where=sa.text('endpoint_id IS NOT NULL'), sqlite_where=sa.text('endpoint_id IS NOT NULL'))
        batch_op.alter_column('headers',
               existing_type=sa.JSON(),
               nullable=False)
        batch_op.alter_column('body_html',
               existing_type=sa.TEXT(),
               nullable=False)
        batch_op.alter_column('body_text',
               existing_type=sa.TEXT(),
               nullable=False)
        batch_op.alter_column('subject',
               existing_type=sa.VARCHAR(length=400),
               nullable=False)
        batch_op.alter_column('to_address',
               existing_type=sa.VARCHAR(length=320),
               nullable=False)
        batch_op.alter_column('mail_from',
               existing_type=sa.VARCHAR(length=400),
               nullable=False)
        batch_op.alter_column('message_id',
               existing_type=sa.VARCHAR(length=255),
               nullable=False)
        batch_op.drop_column('event_id')
        batch_op.drop_column('endpoint_id')
        batch_op.drop_column('locale')
        batch_op.drop_column('newsletter_ids')

    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_events_unpositioned', postgresql_where=sa.text('feed_position IS NULL'), sqlite_where=sa.text('feed_position IS NULL'))
        batch_op.drop_index('ix_consent_events_feed_position')
        batch_op.drop_column('feed_position')

    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_attempts_outbox_message_id'))
        batch_op.drop_index('ix_webhook_attempts_endpoint')

    op.drop_table('webhook_attempts')
    op.drop_table('webhook_endpoints')
