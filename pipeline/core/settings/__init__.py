"""Typed, frozen settings of cdc-pipeline: the pydantic models (:mod:`.models`, :mod:`.root`), loading from
YAML plus environment overrides (:mod:`.loading`), masked dumps (:mod:`.masking`) and the generated reference
(:mod:`.reference`). Importers import each name from the submodule that defines it."""
