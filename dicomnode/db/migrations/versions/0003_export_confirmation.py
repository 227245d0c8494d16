"""export confirmation: committed_at, check_at, confirm_attempts

Revision ID: 0003_export_confirmation
Revises: 0002_job_backoff
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003_export_confirmation'
down_revision = '0002_job_backoff'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('exports') as batch:
        batch.add_column(sa.Column('committed_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('check_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('confirm_attempts', sa.Integer(), nullable=False,
                                   server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('exports') as batch:
        batch.drop_column('confirm_attempts')
        batch.drop_column('check_at')
        batch.drop_column('committed_at')
