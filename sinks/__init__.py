"""The Sink contract and its implementations (PostgreSQL fast path, SQLAlchemy targets)."""
