"""Tenants and API keys: datasets and estimates belong to a tenant; api_keys holds hashed keys

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Rows stored before this revision belong to the tenant "default" (the tenant of every request
when no key is configured). A dataset is unique per (tenant, sha256), no longer per sha256: two
tenants uploading the same bytes get two rows that share the files. Idempotency keys are stored
as "<tenant>\\x1f<key>"; existing ones are rewritten to the default tenant's form.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SEP = "\x1f"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("scopes", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tenant", sa.String(100), nullable=False, server_default="default")
        )
        batch_op.drop_index("ix_datasets_sha256")
        batch_op.create_index("ix_datasets_sha256", ["sha256"], unique=False)
        batch_op.create_index("ix_datasets_tenant_sha256", ["tenant", "sha256"], unique=True)
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tenant", sa.String(100), nullable=False, server_default="default")
        )
        batch_op.create_index("ix_estimates_tenant", ["tenant"], unique=False)
        batch_op.alter_column("idempotency_key", existing_type=sa.String(200), type_=sa.String(320))
    op.execute(
        sa.text(
            "UPDATE estimates SET idempotency_key = :prefix || idempotency_key"
            " WHERE idempotency_key IS NOT NULL"
        ).bindparams(prefix="default" + SEP)
    )


def downgrade() -> None:
    # Keys of other tenants cannot keep their meaning: they are dropped.
    op.execute(
        sa.text(
            "UPDATE estimates SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL"
            " AND tenant <> 'default'"
        )
    )
    op.execute(
        sa.text(
            "UPDATE estimates SET idempotency_key = substr(idempotency_key, :n)"
            " WHERE idempotency_key IS NOT NULL"
        ).bindparams(n=len("default" + SEP) + 1)
    )
    with op.batch_alter_table("estimates", schema=None) as batch_op:
        batch_op.drop_index("ix_estimates_tenant")
        batch_op.drop_column("tenant")
        batch_op.alter_column("idempotency_key", existing_type=sa.String(320), type_=sa.String(200))
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index("ix_datasets_tenant_sha256")
        batch_op.drop_index("ix_datasets_sha256")
        batch_op.create_index("ix_datasets_sha256", ["sha256"], unique=True)
        batch_op.drop_column("tenant")
    op.drop_index("ix_api_keys_tenant", table_name="api_keys")
    op.drop_table("api_keys")
