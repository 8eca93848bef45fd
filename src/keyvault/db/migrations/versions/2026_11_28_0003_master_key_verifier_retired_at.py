"""master-key verifiers: retired_at, set when a rotation replaces the key

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: every existing verifier is the deployment's one active key.
    with op.batch_alter_table("master_key_verifiers") as batch:
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("master_key_verifiers") as batch:
        batch.drop_column("retired_at")
