"""slide decks

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'decks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('class_id', sa.Integer(), nullable=False),
        sa.Column('title', sa.String(length=200), nullable=False),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('pages', sa.Integer(), nullable=False),
        sa.Column('small_bytes', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['class_id'], ['classes.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_decks_class_id', 'decks', ['class_id'], unique=False)
    op.create_table(
        'slides',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('deck_id', sa.Integer(), nullable=False),
        sa.Column('index', sa.Integer(), nullable=False),
        sa.Column('width', sa.Integer(), nullable=False),
        sa.Column('height', sa.Integer(), nullable=False),
        sa.Column('small', sa.String(length=40), nullable=False),
        sa.Column('small_bytes', sa.Integer(), nullable=False),
        sa.Column('large', sa.String(length=40), nullable=False),
        sa.Column('large_bytes', sa.Integer(), nullable=False),
        sa.Column('thumb', sa.String(length=40), nullable=False),
        sa.Column('thumb_bytes', sa.Integer(), nullable=False),
        sa.Column('jpeg', sa.String(length=40), nullable=False),
        sa.Column('jpeg_bytes', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['deck_id'], ['decks.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('deck_id', 'index'),
    )


def downgrade() -> None:
    op.drop_table('slides')
    op.drop_index('ix_decks_class_id', table_name='decks')
    op.drop_table('decks')
