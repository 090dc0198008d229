"""Join the two branches that both followed 0001 (slides and recordings) into one head.

0002 and 0003 were written side by side; databases made before this file carry both in
``alembic_version``. A merge revision (not a rewrite of 0003) keeps those databases upgradable.

Revision ID: 0004
Revises: 0002, 0003
"""

revision = "0004"
down_revision = ("0002", "0003")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
