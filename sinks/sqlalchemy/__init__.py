"""The SQLAlchemy 2 Core sink: MariaDB/MySQL (PyMySQL) and SQLite targets with the same
guarantees as the PostgreSQL fast path. See ``docs/targets.md``."""
