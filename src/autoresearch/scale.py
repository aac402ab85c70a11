"""A larger (or smaller) model: one constant of the editable files changed, written NAME=+N, NAME=-N, NAME=xF or
NAME=V. Used by `verify --scale` and by the transfer; parsed when the configuration is read, so it imports nothing
of ours."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SCALE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([+\-x*]?)\s*(-?[0-9.]+(?:e-?\d+)?)$")


class ScaleError(ValueError):
    pass


@dataclass(frozen=True)
class Scale:
    """One constant changed for a scaled comparison: NAME=+N, NAME=-N, NAME=xF or NAME=V."""

    name: str
    op: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> "Scale":
        match = _SCALE.match(text.strip())
        if not match:
            raise ScaleError(f"--scale {text!r}: expected NAME=+N, NAME=-N, NAME=xF or NAME=VALUE (e.g. depth=+2)")
        name, op, amount = match.groups()
        return cls(name.upper(), "x" if op == "*" else op, float(amount))

    def apply(self, value):
        if isinstance(value, dict):
            return {key: self.apply(v) for key, v in value.items()}
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ScaleError(f"{self.name} is {value!r}, not a number")
        new = {"+": value + self.amount, "-": value - self.amount, "x": value * self.amount, "": self.amount}[self.op]
        return int(round(new)) if isinstance(value, int) else float(new)

    def __str__(self) -> str:
        amount = f"{self.amount:g}"
        return f"{self.name.lower()}={self.op}{amount}"
