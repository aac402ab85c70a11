"""Read and set knobs: the values the search tunes, wherever the target keeps them.

A Python constant (`MATRIX_LR = 0.04`, or `learning_rate = 6e-4` in a Python config file), a
command-line flag in a script (`--learning-rate 5e-4`), or a key of a JSON, YAML or TOML config
file (`get`, `put`). Edits change the value's text only, so comments and layout survive, and
the edited file is read back with its own parser: a Python value is located by the AST, a
JSON or YAML one by YAML's composer, a TOML one through tomlkit.
"""

from __future__ import annotations

import ast
import json
import math
import re
import sys
from typing import Any

from . import pyast

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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


# ---------------------------------------------------------------------------- knobs in any editable file
#
# A knob's value lives in one editable file (`[[knobs]] file`), in one of these forms:
#   python  a top-level assignment `NAME = value` (an UPPERCASE constant, or `key` in a Python config file)
#   flag    `--flag VALUE` or `--flag=VALUE` in a script or any text file (the command line that trains)
#   json, yaml, toml  the value at `key`, a dotted path (`optimizer.lr`), in a config file
# Every edit changes the value's text only, and is read back with the format's own parser before it is used.

FORMATS = {".py": "python", ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}


def form(knob) -> str:
    """Where `knob` keeps its value: python, flag, json, yaml or toml (from `flag` and the file's extension)."""
    if getattr(knob, "flag", None):
        return "flag"
    suffix = "." + knob.file.rpartition(".")[2].lower() if "." in knob.file else ""
    if suffix not in FORMATS:
        raise KnobError(f"cannot tell the format of {knob.file!r}: a knob's file is Python (.py), JSON, YAML "
                        "(.yaml, .yml) or TOML (.toml), or a script holding a command-line flag (set `flag`)")
    return FORMATS[suffix]


def key_of(knob) -> str:
    return getattr(knob, "key", None) or knob.name


def get(knob, text: str) -> Any:
    """The knob's value in `text`, the content of its file."""
    kind = form(knob)
    if kind == "python":
        return read(text, key_of(knob))
    if kind == "flag":
        return _flag_value(_flag_match(text, knob.flag).group(2))
    data = _load(kind, text, knob.file)
    for part in key_of(knob).split("."):
        if not isinstance(data, dict) or part not in data:
            raise KnobError(f"{knob.file} has no key {key_of(knob)!r}")
        data = data[part]
    if isinstance(data, (dict, list)) or data is None:
        raise KnobError(f"{knob.file}: {key_of(knob)} is not a single value: {data!r}")
    return data


def put(knob, text: str, value: Any) -> str:
    """`text` with the knob set to `value`; everything else as it was."""
    kind = form(knob)
    if kind == "python":
        return set_value(text, key_of(knob), value)
    if kind == "flag":
        match = _flag_match(text, knob.flag)
        edited = text[:match.start(2)] + _flag_text(value) + text[match.end(2):]
    elif kind == "toml":
        import tomlkit

        document = tomlkit.parse(text)
        *path, last = key_of(knob).split(".")
        table = document
        for part in path:
            table = table[part]
        table[last] = value
        edited = tomlkit.dumps(document)
    else:
        start, end = _scalar_span(text, key_of(knob), knob.file)
        edited = text[:start] + _literal(kind, value) + text[end:]
    if not _same(get(knob, edited), value):
        raise KnobError(f"setting {knob.name} to {value!r} in {knob.file} did not take")
    return edited


def _same(read_back: Any, value: Any) -> bool:
    if isinstance(value, float) and isinstance(read_back, (int, float)):
        return math.isclose(read_back, value, rel_tol=1e-9)
    return read_back == value


def _flag_match(text: str, flag: str) -> "re.Match":
    pattern = re.compile(rf"(?<![\w-])({re.escape(flag)})(?:=|[ \t]+)([^\s\"';&|]+)")
    found = list(pattern.finditer(text))
    if len(found) != 1:
        raise KnobError(f"{flag} with a value {'appears ' + str(len(found)) + ' times' if found else 'is not'} in "
                        "the file (it must appear exactly once)")
    return found[0]


def _flag_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _flag_text(value: Any) -> str:
    return format_value(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _load(kind: str, text: str, path: str) -> Any:
    try:
        if kind == "json":
            return json.loads(text)
        if kind == "toml":
            return tomllib.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # each parser has its own error class
        raise KnobError(f"{path} is not valid {kind.upper()}: {exc}") from None


def _scalar_span(text: str, key: str, path: str) -> tuple[int, int]:
    """Where the scalar at dotted `key` is written in a JSON or YAML document (YAML's composer knows positions,
    and JSON is YAML for this purpose)."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise KnobError(f"{path}: cannot locate {key}: {exc}") from None
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            raise KnobError(f"{path} has no key {key!r}")
        node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        if node is None:
            raise KnobError(f"{path} has no key {key!r}")
    if not isinstance(node, yaml.ScalarNode):
        raise KnobError(f"{path}: {key} is not a single value")
    return node.start_mark.index, node.end_mark.index


def _literal(kind: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    text = format_value(value)
    if kind == "yaml" and isinstance(value, float) and "." not in text and "e" in text:
        mantissa, _, exponent = text.partition("e")  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a number
        text = f"{mantissa}.0e{exponent}"
    return text


def current(knobs: list, files: dict[str, str]) -> dict[str, Any]:
    """The values of `knobs` in `files` (path -> text); a knob whose file or value is missing is left out."""
    values = {}
    for knob in knobs:
        if knob.file in files:
            try:
                values[knob.name] = get(knob, files[knob.file])
            except (KnobError, SyntaxError):
                pass
    return values
