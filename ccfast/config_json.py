"""JSON round trip for the config dataclasses (`RefineConfig`, `TrainConfig`, the benchmarks' settings).

Kept free of torch so that reading a config never imports it.
"""

from __future__ import annotations

import dataclasses
import json

from .errors import CCFastError


class JsonConfig:
    """Mixin for dataclasses: `replace`, `to_dict`/`from_dict`, `to_json`/`from_json`; unknown keys are an error."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict):
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        unknown = set(d) - set(types)
        if unknown:
            raise CCFastError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        # JSON has no tuples: a tuple-typed field written by to_json comes back as a list; restore the tuple.
        d = {k: tuple(v) if isinstance(v, list) and types[k].lower().startswith("tuple") else v for k, v in d.items()}
        return cls(**d)  # keys absent from an older file take their defaults

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))
