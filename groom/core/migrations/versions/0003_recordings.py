"""recordings and the job queue

Revision ID: 0003
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'jobs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('lesson_id', sa.Integer(), nullable=True),
        sa.Column('state', sa.Enum('queued', 'running', 'done', 'failed', name='jobstate',
                                   native_enum=False, length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('max_attempts', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('worker', sa.String(length=100), nullable=True),
        sa.Column('run_after', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['lesson_id'], ['lessons.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_jobs_state_run_after', 'jobs', ['state', 'run_after'])
    op.create_index('ix_jobs_lesson_id', 'jobs', ['lesson_id'])
    op.create_table(
        'recordings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('lesson_id', sa.Integer(), nullable=False),
        sa.Column('state', sa.Enum('recording', 'processing', 'ready', 'failed', 'no_audio',
                                   name='recordingstate', native_enum=False, length=16),
                  nullable=False),
        sa.Column('duration_s', sa.Float(), nullable=True),
        sa.Column('slide_count', sa.Integer(), nullable=False),
        sa.Column('recovered', sa.Boolean(), nullable=False),
        sa.Column('outputs', sa.JSON(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['lesson_id'], ['lessons.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('lesson_id'),
    )


def downgrade() -> None:
    op.drop_table('recordings')
    op.drop_index('ix_jobs_lesson_id', table_name='jobs')
    op.drop_index('ix_jobs_state_run_after', table_name='jobs')
    op.drop_table('jobs')
