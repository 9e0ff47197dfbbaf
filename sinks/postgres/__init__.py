"""PostgreSQL fast-path sink (psycopg 3, COPY + set-based version-guarded upserts)."""
