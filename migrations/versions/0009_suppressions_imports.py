"""The suppression list, the bounces and complaints that fill it, and the record of imports.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('delivery_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('address_key', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('diagnostic', sa.Text(), nullable=True),
    sa.Column('provider_event_id', sa.String(length=255), nullable=True),
    sa.CheckConstraint("kind IN ('hard_bounce', 'soft_bounce', 'complaint')", name=op.f('ck_delivery_events_kind_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_events')),
    sa.UniqueConstraint('provider', 'provider_event_id', name='uq_delivery_events_provider_event')
    )
    with op.batch_alter_table('delivery_events', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_events_key_kind_time', ['address_key', 'kind', 'occurred_at'], unique=False)
        batch_op.create_index('ix_delivery_events_received_at', ['received_at'], unique=False)

    op.create_table('imports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('admin_id', sa.Integer(), nullable=True),
    sa.Column('newsletter_id', sa.Integer(), nullable=True),
    sa.Column('file_name', sa.String(length=255), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('stored_path', sa.String(length=1024), nullable=True),
    sa.Column('format', sa.String(length=16), nullable=True),
    sa.Column('unconfirmed', sa.String(length=16), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('rows_done', sa.Integer(), nullable=False),
    sa.Column('rows_total', sa.Integer(), nullable=True),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('uploaded', 'queued', 'running', 'finished', 'failed')", name=op.f('ck_imports_status_known')),
    sa.ForeignKeyConstraint(['admin_id'], ['admin_users.id'], name=op.f('fk_imports_admin_id_admin_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['newsletter_id'], ['newsletters.id'], name=op.f('fk_imports_newsletter_id_newsletters'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_imports'))
    )
    with op.batch_alter_table('imports', schema=None) as batch_op:
        batch_op.create_index('ix_imports_created_at', ['created_at'], unique=False)

    op.create_table('suppressions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('address_key', sa.String(length=64), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('lifted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lifted_by_id', sa.Integer(), nullable=True),
    sa.Column('lift_note', sa.Text(), nullable=True),
    sa.CheckConstraint("reason IN ('hard_bounce', 'complaint', 'soft_bounces', 'blocked', 'manual', 'import', 'erased')", name=op.f('ck_suppressions_reason_known')),
    sa.ForeignKeyConstraint(['created_by_id'], ['admin_users.id'], name=op.f('fk_suppressions_created_by_id_admin_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['lifted_by_id'], ['admin_users.id'], name=op.f('fk_suppressions_lifted_by_id_admin_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_suppressions'))
    )
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.create_index('ix_suppressions_created_at', ['created_at'], unique=False)
        batch_op.create_index('uq_suppressions_active_key', ['address_key'], unique=True, postgresql_where=sa.text("lifted_at IS NULL AND reason <> 'erased'"), sqlite_where=sa.text("lifted_at IS NULL AND reason <> 'erased'"))
        batch_op.create_index('uq_suppressions_active_erased_key', ['address_key'], unique=True, postgresql_where=sa.text("lifted_at IS NULL AND reason = 'erased'"), sqlite_where=sa.text("lifted_at IS NULL AND reason = 'erased'"))

    op.create_table('import_refusals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('import_id', sa.Integer(), nullable=False),
    sa.Column('file', sa.String(length=255), nullable=False),
    sa.Column('line', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['import_id'], ['imports.id'], name=op.f('fk_import_refusals_import_id_imports'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_import_refusals'))
    )
    with op.batch_alter_table('import_refusals', schema=None) as batch_op:
        batch_op.create_index('ix_import_refusals_import_line', ['import_id', 'id'], unique=False)



def downgrade():
    with op.batch_alter_table('import_refusals', schema=None) as batch_op:
        batch_op.drop_index('ix_import_refusals_import_line')

    op.drop_table('import_refusals')
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.drop_index('uq_suppressions_active_erased_key', postgresql_where=sa.text("lifted_at IS NULL AND reason = 'erased'"), sqlite_where=sa.text("lifted_at IS NULL AND reason = 'erased'"))
        batch_op.drop_index('uq_suppressions_active_key', postgresql_where=sa.text("lifted_at IS NULL AND reason <> 'erased'"), sqlite_where=sa.text("lifted_at IS NULL AND reason <> 'erased'"))
        batch_op.drop_index('ix_suppressions_created_at')

    op.drop_table('suppressions')
    with op.batch_alter_table('imports', schema=None) as batch_op:
        batch_op.drop_index('ix_imports_created_at')

    op.drop_table('imports')
    with op.batch_alter_table('delivery_events', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_events_received_at')
        batch_op.drop_index('ix_delivery_events_key_kind_time')

    op.drop_table('delivery_events')
