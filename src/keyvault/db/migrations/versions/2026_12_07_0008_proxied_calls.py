"""proxied calls: audit events of calls through the provider proxy name the allowed path, the
provider's status, the duration and the body bytes each way

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("path", "upstream_status", "duration_ms", "request_bytes", "response_bytes")


def upgrade() -> None:
    # Nullable, no default: the events already chained were linked without these fields, and
    # their links still verify because an empty field is left out of what is hashed.
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("path", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("upstream_status", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("duration_ms", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("request_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("response_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # Events of proxied calls are chained with these fields: dropping them would break the chain.
    connection = op.get_bind()
    filled = " OR ".join(f"{column} IS NOT NULL" for column in COLUMNS)
    newer_events = connection.execute(
        sa.text(f"SELECT count(*) FROM audit_events WHERE {filled}")
    ).scalar_one()
    if newer_events:
        raise RuntimeError(
            f"cannot downgrade below proxied calls: {newer_events} audit events record calls"
            " through the provider proxy, which the older release cannot chain"
        )
    with op.batch_alter_table("audit_events") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column)
