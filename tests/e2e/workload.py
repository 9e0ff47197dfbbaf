"""A concurrent source workload: inserts, updates, deletes and primary-key changes on
``public.items``, and inserts into the keyless ``public.history`` (like pgbench_history)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg

DDL = [
    "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, qty int)",
    "CREATE TABLE public.history (item int, delta int, at timestamptz DEFAULT now())",
    "ALTER TABLE public.history REPLICA IDENTITY FULL",
    "INSERT INTO public.items SELECT g, 'seed', 0 FROM generate_series(1, 300) g",
]
TABLES = ["public.items", "public.history"]


class Workload:
    """Runs ``clients`` threads of small transactions until ``stop()``; counts transactions."""

    def __init__(self, dsn: str, clients: int = 3, seed: int = 7) -> None:
        self._dsn = dsn
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(seed + i,), daemon=True) for i in range(clients)]
        self.transactions = 0
        self.errors = 0

    def start(self) -> Workload:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(self._dsn, autocommit=False) as conn:
            while not self._stop.is_set():
                self._one(conn, rng)
                time.sleep(0.002)

    def _one(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """One :func:`one_transaction`, counted in ``transactions`` or ``errors``."""
        if one_transaction(conn, rng):
            self.transactions += 1
        else:
            self.errors += 1


def one_transaction(conn: psycopg.Connection[Any], rng: random.Random) -> bool:
    """One random small transaction on a random key of 1..400: an upsert (40%), a delete (20%),
    a primary-key change to key + 1000 (10%) or an update (30%) of ``public.items``, plus an
    insert into the keyless ``public.history``. Returns False when it lost a race with another
    client (unique violation or deadlock; rolled back), True when it committed."""
    key = rng.randint(1, 400)
    try:
        with conn.transaction():
            choice = rng.random()
            if choice < 0.4:
                conn.execute(
                    "INSERT INTO public.items VALUES (%s, 'w', 1) ON CONFLICT (id)"
                    " DO UPDATE SET qty = public.items.qty + 1, name = 'u'",
                    (key,),
                )
            elif choice < 0.6:
                conn.execute("DELETE FROM public.items WHERE id = %s", (key,))
            elif choice < 0.7:
                conn.execute(
                    "UPDATE public.items SET id = %s WHERE id = %s AND NOT EXISTS"
                    " (SELECT 1 FROM public.items WHERE id = %s)",
                    (key + 1000, key, key + 1000),
                )
            else:
                conn.execute("UPDATE public.items SET qty = qty - 1 WHERE id = %s", (key,))
            conn.execute("INSERT INTO public.history (item, delta) VALUES (%s, %s)", (key, rng.randint(-5, 5)))
    except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
        return False
    return True
