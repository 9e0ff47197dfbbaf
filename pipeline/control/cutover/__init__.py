"""The cutover of a pipeline from its source to its target: gate, write fence, drain to the
fence LSN, final verification, sequence sync and (with ``--reverse``) the rollback direction,
with a durable state in the target's control schema so a crash can be aborted safely."""
