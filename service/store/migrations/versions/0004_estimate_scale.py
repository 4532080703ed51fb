"""estimates.scale: the per-feature scaling an estimate asked for

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

Rows stored before this revision were not scaled: they get "none".
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scale", sa.String(16), nullable=False, server_default="none")
        )


def downgrade() -> None:
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.drop_column("scale")
