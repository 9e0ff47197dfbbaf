"""Cutover and rollback: the gate, the fence of the source, the drain to the fence LSN, the final
verification, the sequence sync, the reverse direction of the rollback window and ``finish``."""
