"""Read and set numeric knobs: UPPERCASE module-level constants in an editable Python file.

Edits go through the parser, never a blind regex: the constant's value expression is located by
the AST and replaced in the source text, so comments and layout survive, and the result must
parse again.
"""

from __future__ import annotations

import ast
from typing import Any

from . import pyast


class KnobError(ValueError):
    pass


def _assignment(tree: ast.Module, name: str) -> ast.expr:
    """The value expression of the last top-level `NAME = value` (or `NAME: type = value`)."""
    found = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            found = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name \
                and node.value is not None:
            found = node.value
    if found is None:
        raise KnobError(f"no top-level assignment to {name}")
    return found


def read(source: str, name: str) -> Any:
    """The literal value of constant `name` (arithmetic of literals such as `2**-4` is evaluated)."""
    node = _assignment(pyast.parse(source), name)
    try:
        return _evaluate(node)
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise KnobError(f"{name} is not a literal value: {ast.unparse(node)}") from exc


def read_all(source: str, names: list[str]) -> dict[str, Any]:
    """Values of the named constants that the source defines as literals; others are left out."""
    values = {}
    for name in names:
        try:
            values[name] = read(source, name)
        except (KnobError, SyntaxError):
            pass
    return values


def set_value(source: str, name: str, value: Any) -> str:
    """`source` with constant `name` set to `value`; everything else byte for byte the same."""
    node = _assignment(pyast.parse(source), name)
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()))
    data = source.encode()
    start = offsets[node.lineno - 1] + node.col_offset
    end = offsets[node.end_lineno - 1] + node.end_col_offset
    text = format_value(value)
    edited = (data[:start] + text.encode() + data[end:]).decode()
    pyast.parse(edited)  # must still be valid Python
    if read(edited, name) != pyast.literal_eval(text):
        raise KnobError(f"setting {name} to {text} did not take")
    return edited


def format_value(value: Any) -> str:
    """Python source for `value`; floats keep 4 significant digits, enough for any search."""
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".en") else text + ".0"
    return repr(value)


def _evaluate(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _evaluate(node.operand)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b, ast.FloorDiv: lambda a, b: a // b}
        if type(node.op) in ops and all(isinstance(v, (int, float)) for v in (left, right)):
            return ops[type(node.op)](left, right)
    if isinstance(node, ast.Dict) and None not in node.keys:  # a per-device preset: {"cpu": 2, "cuda": 6}
        return {_evaluate(key): _evaluate(value) for key, value in zip(node.keys, node.values)}
    raise ValueError("not a literal")
