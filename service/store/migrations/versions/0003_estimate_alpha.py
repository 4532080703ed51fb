"""estimates.alpha: the level of the estimate's two-sample test

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Rows stored before this revision were asked no level: they get the default, 0.05.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("alpha", sa.Float(), nullable=False, server_default=sa.text("0.05"))
        )


def downgrade() -> None:
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.drop_column("alpha")
