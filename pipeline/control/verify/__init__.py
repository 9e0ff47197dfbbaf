"""Source-vs-target verification for a safe cutover: row counts and checksums of key-ordered
chunks over a canonical text of each row, computed by the target's side of the ``Target`` seam
(:meth:`sinks.base.Target.verification`); catch-up, cutover readiness and repair. The design is
in ``docs/design/verify.md``."""
