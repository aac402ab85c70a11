"""autoresearch.guard: a training script run under it cannot open held-out data from Python, and the harness
learns that it tried."""

import json
import subprocess
import sys

import pytest

from autoresearch import guard

SCRIPT = '''\
import os, shutil, sys
data, out = os.environ["AUTORESEARCH_DATA"], os.environ["AUTORESEARCH_OUT"]
print("train:", open(os.path.join(data, "train.bin")).read().strip())
for name, attempt in [
    ("relative", lambda: open(os.path.join(data, "..", "val.bin")).read()),
    ("numpy", lambda: __import__("numpy").fromfile(os.path.join(data, "..", "test.bin"), dtype="uint8")),
    ("symlink", lambda: os.symlink(os.path.join(data, "..", "val.bin"), os.path.join(out, "v"))),
    ("copy", lambda: shutil.copyfile(os.path.join(data, "..", "meta.json"), os.path.join(out, "m"))),
    ("erase the record", lambda: os.remove(os.path.join(out, "guard.json"))),
    ("overwrite the record", lambda: open(os.path.join(out, "guard.json"), "w")),
    ("remove the output", lambda: shutil.rmtree(out)),
]:
    try:
        attempt()
        print(name, "allowed")
    except PermissionError:
        print(name, "refused")
print("argv:", sys.argv[1:], "main:", __name__)
'''


@pytest.fixture
def layout(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "train.bin").write_text("train text\n")
    for name in ("val.bin", "test.bin", "meta.json"):
        (data / name).write_text("held out\n")
    (tmp_path / "script.py").write_text(SCRIPT)
    return tmp_path


def guarded(layout, *args):
    env = {"AUTORESEARCH_DATA": str(layout / "data" / "train"), "AUTORESEARCH_OUT": str(layout / "out"),
           "PATH": "/usr/bin:/bin"}
    import os

    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return subprocess.run([sys.executable, "-m", "autoresearch.guard", "script.py", *args], cwd=layout, env=env,
                          capture_output=True, text=True, timeout=60)


def test_training_data_is_readable_and_held_out_data_is_not(layout):
    result = guarded(layout, "--flag")
    assert result.returncode == 0, result.stderr
    assert "train: train text" in result.stdout
    for name in ("relative", "numpy", "symlink", "copy", "erase the record", "overwrite the record",
                 "remove the output"):
        assert f"{name} refused" in result.stdout, result.stdout
    assert "argv: ['--flag'] main: __main__" in result.stdout  # the script runs as itself
    assert "autoresearch guard: refused open" in result.stderr


def test_the_refusals_are_recorded_for_the_harness(layout):
    guarded(layout)
    found = guard.refusals(layout / "out")
    assert found[0].startswith("open ") and "val.bin" in found[0] and "held-out data" in found[0]
    assert any("guard's record" in item for item in found)
    assert json.loads((layout / "out" / "guard.json").read_text())["refused"] == found


def test_a_run_that_reads_nothing_held_out_leaves_no_record(layout):
    (layout / "script.py").write_text("import os\nprint(open(os.path.join(os.environ['AUTORESEARCH_DATA'], "
                                      "'train.bin')).read())\n")
    assert guarded(layout).returncode == 0
    assert guard.refusals(layout / "out") == [] and not (layout / "out" / "guard.json").exists()
