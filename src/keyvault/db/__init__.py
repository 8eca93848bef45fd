"""The database: the async engine with its timeouts, the session scope that commits in one place,
the tables, the group-commit queue, and the Alembic migrations shipped with the package.
"""
