"""Slides: a phone-sized image (600 px wide, few colours), the first one a thin link gets

Revision ID: 0007_slide_phone
Revises: 0006_api_meetings

Nullable and left null for decks imported before it: those slides are offered their ``small``
image in its place (``Slide.phone_name``), as before.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007_slide_phone'
down_revision = '0006_api_meetings'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('slides') as batch:
        batch.add_column(sa.Column('phone', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('phone_bytes', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('slides') as batch:
        batch.drop_column('phone_bytes')
        batch.drop_column('phone')
