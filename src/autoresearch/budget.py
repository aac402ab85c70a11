"""Budgets: how much compute one run gets, as seconds of training, optimizer steps or tokens.

`Budget.parse("300s")`, `Budget.parse("500steps")`, `Budget.parse("2Mtok")`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"s": "seconds", "sec": "seconds", "secs": "seconds", "seconds": "seconds",
          "m": "minutes", "min": "minutes", "h": "hours",
          "step": "steps", "steps": "steps", "tok": "tokens", "tokens": "tokens"}
_SCALE = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKMG]?)\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Budget:
    kind: str  # "seconds" | "steps" | "tokens"
    value: float

    @classmethod
    def parse(cls, spec: str) -> "Budget":
        match = _PATTERN.match(str(spec))
        unit = _UNITS.get(match.group(3)) if match else None
        if match is None or unit is None:
            raise ValueError(f"budget {spec!r} is not understood: expected e.g. '300s', '5min', '500steps', '2Mtok'")
        value = float(match.group(1)) * _SCALE[match.group(2)]
        if unit == "minutes":
            unit, value = "seconds", value * 60
        elif unit == "hours":
            unit, value = "seconds", value * 3600
        if unit in ("steps", "tokens"):
            value = float(int(value))
        if value <= 0:
            raise ValueError(f"budget {spec!r} must be positive")
        return cls(unit, value)

    def __str__(self) -> str:
        if self.kind == "seconds":
            return f"{self.value:g}s"
        if self.kind == "steps":
            return f"{int(self.value)}steps"
        return f"{int(self.value)}tok"

    def env(self) -> dict[str, str]:
        """The variables a run reads its budget from (see docs/target-contract.md)."""
        number = f"{self.value:g}" if self.kind == "seconds" else str(int(self.value))
        return {"AUTORESEARCH_BUDGET": str(self), f"AUTORESEARCH_BUDGET_{self.kind.upper()}": number}
