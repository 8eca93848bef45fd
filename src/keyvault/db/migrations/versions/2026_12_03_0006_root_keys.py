"""root keys: the keyring, each root key wrapped by its seal (NULL for a master key's derived key)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "root_keys",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("seal", sa.String(length=16), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_root_keys")),
    )
    # Every master key the deployment has had is an entry under the env seal, active or retired
    # as its verifier is: the keyring starts out as exactly what unlocking accepted before.
    op.execute(
        "INSERT INTO root_keys (key_id, seal, wrapped, created_at, retired_at) "
        "SELECT key_id, 'env', NULL, created_at, retired_at FROM master_key_verifiers"
    )


def downgrade() -> None:
    # The verifiers still describe every env entry; a wrapped root key exists nowhere else.
    wrapped = op.get_bind().execute(
        sa.text("SELECT count(*) FROM root_keys WHERE wrapped IS NOT NULL")
    )
    if wrapped.scalar_one():
        raise RuntimeError(
            "the keyring holds wrapped root keys, which the older schema cannot keep; "
            "downgrading would lose every record sealed under them"
        )
    op.drop_table("root_keys")
