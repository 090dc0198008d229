"""BigBlueButton-compatible API: meetings (each a lesson), webhooks, and job payloads

Revision ID: 0006_api_meetings
Revises: 0005_user_sessions
"""
import sqlalchemy as sa
from alembic import op

revision = '0006_api_meetings'
down_revision = '0005_user_sessions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'api_meetings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('client', sa.String(length=64), nullable=False),
        sa.Column('meeting_id', sa.String(length=256), nullable=False),
        sa.Column('internal_id', sa.String(length=80), nullable=False),
        sa.Column('lesson_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('attendee_pw', sa.String(length=128), nullable=False),
        sa.Column('moderator_pw', sa.String(length=128), nullable=False),
        sa.Column('welcome', sa.Text(), nullable=False),
        sa.Column('logout_url', sa.String(length=1000), nullable=False),
        sa.Column('record', sa.Boolean(), nullable=False),
        sa.Column('meta', sa.JSON(), nullable=False),
        sa.Column('deck_id', sa.Integer(), nullable=True),
        sa.Column('published', sa.Boolean(), nullable=False),
        sa.Column('forcibly_ended', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['lesson_id'], ['lessons.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['deck_id'], ['decks.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('internal_id'),
        sa.UniqueConstraint('lesson_id'),
    )
    op.create_index('ix_api_meetings_client_meeting', 'api_meetings', ['client', 'meeting_id'])
    op.create_table(
        'api_hooks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('client', sa.String(length=64), nullable=False),
        sa.Column('callback_url', sa.String(length=1000), nullable=False),
        sa.Column('meeting_id', sa.String(length=256), nullable=True),
        sa.Column('raw', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_api_hooks_client', 'api_hooks', ['client'])
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('payload', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('payload')
    op.drop_index('ix_api_hooks_client', table_name='api_hooks')
    op.drop_table('api_hooks')
    op.drop_index('ix_api_meetings_client_meeting', table_name='api_meetings')
    op.drop_table('api_meetings')
