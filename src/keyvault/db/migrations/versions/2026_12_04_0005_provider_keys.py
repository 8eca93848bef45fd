"""provider keys: a key per user per provider, with a label and an expiry; audit events name both
the provider and what it said of a key checked on save

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every key stored before is the user's one key, which the openai routes serve (crypto.records
# opens those format v2 records as the openai key).
EXISTING_KEYS_PROVIDER = "openai"


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column(
                "provider",
                sa.String(length=32),
                nullable=False,
                server_default=EXISTING_KEYS_PROVIDER,
            )
        )
        batch.add_column(sa.Column("label", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("pk_api_keys", type_="primary")
        batch.create_primary_key("pk_api_keys", ["sub", "provider"])
    # The default only filled the rows already there: every write names its provider.
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("provider", existing_type=sa.String(length=32), server_default=None)
    # Nullable, no default: the events already chained were linked without these fields, and
    # their links still verify because an empty field is left out of what is hashed.
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("provider", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("validation", sa.String(length=16), nullable=True))


def downgrade() -> None:
    # The older schema holds one key per user, in format v2, and chains events without these
    # fields: going back would lose keys or break the chain, so it is refused once either exists.
    connection = op.get_bind()
    newer_keys = connection.execute(
        sa.text("SELECT count(*) FROM api_keys WHERE provider != :provider OR format_version != 2"),
        {"provider": EXISTING_KEYS_PROVIDER},
    ).scalar_one()
    newer_events = connection.execute(
        sa.text(
            "SELECT count(*) FROM audit_events WHERE provider IS NOT NULL OR validation IS NOT NULL"
        )
    ).scalar_one()
    if newer_keys or newer_events:
        raise RuntimeError(
            f"cannot downgrade below provider keys: {newer_keys} key records and {newer_events}"
            " audit events were written by this release, which the older one cannot read"
        )
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("validation")
        batch.drop_column("provider")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("pk_api_keys", type_="primary")
        batch.create_primary_key("pk_api_keys", ["sub"])
        batch.drop_column("expires_at")
        batch.drop_column("label")
        batch.drop_column("provider")
