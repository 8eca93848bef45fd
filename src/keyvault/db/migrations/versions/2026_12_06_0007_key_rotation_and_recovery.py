"""key rotation and recovery: audit keys kept for removed root keys, a recovery copy of every
keyring entry, the recovery kit's public key, and the lease the keyring's maintenance runs under

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("root_keys") as batch:
        # Every entry so far is a root key; "audit" entries keep only a removed key's audit key.
        batch.add_column(
            sa.Column("purpose", sa.String(length=8), nullable=False, server_default="root")
        )
        batch.add_column(sa.Column("recovery_wrapped", sa.LargeBinary(), nullable=True))
    op.create_table(
        "recovery_kit",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("shares", sa.SmallInteger(), nullable=False),
        sa.Column("threshold", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_kit")),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    kept = op.get_bind().execute(sa.text("SELECT count(*) FROM root_keys WHERE purpose <> 'root'"))
    if kept.scalar_one():
        raise RuntimeError(
            "the keyring keeps audit keys of removed root keys, which the older schema cannot "
            "hold; downgrading would leave older audit events unverifiable"
        )
    op.drop_table("leases")
    op.drop_table("recovery_kit")
    with op.batch_alter_table("root_keys") as batch:
        batch.drop_column("recovery_wrapped")
        batch.drop_column("purpose")
