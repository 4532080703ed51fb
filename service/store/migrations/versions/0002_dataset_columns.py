"""datasets.columns: the feature column names of each dataset

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Rows stored before this revision had no names kept (their hash never covered names): they get
the names every unnamed dataset has, x0 … x{d-1}, so that the column is set on every row.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("columns", sa.JSON(), nullable=True))
    datasets = sa.table(
        "datasets",
        sa.column("id", sa.String),
        sa.column("d", sa.Integer),
        sa.column("columns", sa.JSON),
    )
    bind = op.get_bind()
    for row_id, d in bind.execute(sa.select(datasets.c.id, datasets.c.d)).all():
        names = [f"x{j}" for j in range(d)]
        bind.execute(datasets.update().where(datasets.c.id == row_id).values(columns=names))


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("columns")
