"""The built-in gpt target: model properties, and train.py -> evaluate.py end to end.

End-to-end tests copy the template into a temporary worktree and shrink the model by editing the
constants of train.py textually, as an agent would, then run it on a small stdlib corpus.
"""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autoresearch import datasets

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt"
TINY = {"DEPTH": "1", "ASPECT": "64", "HEAD_DIM": "32", "SEQ_LEN": "32", "BATCH_SIZE": "4"}
SUMMARY_KEYS = ["training_seconds", "total_seconds", "peak_memory_mb", "mfu_percent", "total_tokens_M",
                "num_steps", "num_params_M", "depth"]


def load_module(path, name):
    sys.path.insert(0, str(path.parent))  # train.py imports sampler.py from beside it
    sys.dont_write_bytecode, before = True, sys.dont_write_bytecode  # keep __pycache__ out of the template
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))
        sys.dont_write_bytecode = before


def set_constants(path, **values):
    source = path.read_text()
    for name, value in values.items():
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", source, flags=re.MULTILINE)
        assert n == 1, f"no constant {name} in {path}"
    path.write_text(source)


def tiny_model(seq_len=16):
    train = load_module(TEMPLATE / "train.py", "gpt_train")
    torch.manual_seed(0)
    return train.build_model(vocab_size=257, sequence_len=seq_len, depth=2, model_dim=64, n_head=2, softcap=15.0)


def perturbed(model):
    """At init the blocks are the identity (zero output projections): perturb every weight so that all of it counts."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    datasets.prepare(path, source=datasets.Stdlib(max_bytes=300_000), log=lambda m: None)
    return path


@pytest.fixture
def worktree(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(TEMPLATE, tree)
    set_constants(tree / "train.py", **TINY)
    return tree


def run(tree, script, data, out, budget=("STEPS", "3"), seed=0, split="val"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_DATA=str(data / "train" if script == "train.py" else data), AUTORESEARCH_OUT=str(out),
               AUTORESEARCH_SEED=str(seed), AUTORESEARCH_DEVICE="cpu", AUTORESEARCH_THREADS="2",
               AUTORESEARCH_SPLIT=split, **{f"AUTORESEARCH_BUDGET_{budget[0]}": budget[1]})
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, script], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def train_and_evaluate(tree, data, out, **kwargs):
    trained = run(tree, "train.py", data, out, **kwargs)
    assert trained.returncode == 0, trained.stderr
    evaluated = run(tree, "evaluate.py", data, out)
    assert evaluated.returncode == 0, evaluated.stderr
    return trained, evaluated


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    tree = tmp_path_factory.mktemp("tree") / "gpt"
    shutil.copytree(TEMPLATE, tree)
    set_constants(tree / "train.py", **TINY)
    out = tmp_path_factory.mktemp("out")
    train_result, eval_result = train_and_evaluate(tree, data_dir, out)
    return tree, out, train_result, eval_result


# ----------------------------------------------------------------------------
# The model


def test_model_is_causal():
    model = perturbed(tiny_model()).eval()
    idx = torch.randint(0, 257, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 257, (2, 7))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :9], b[:, :9]) or torch.allclose(a[:, :9], b[:, :9], atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_model_output_shape_and_dtype_on_cpu():
    model = tiny_model()
    for length in (16, 5):
        logits = model(torch.randint(0, 257, (3, length)))
        assert logits.shape == (3, length, 257) and logits.dtype == torch.float32
        assert torch.isfinite(logits).all() and logits.abs().max() <= 15.0


def test_importing_train_py_only_defines_things(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data here: importing must not try to train
    train = load_module(TEMPLATE / "train.py", "gpt_train_import")
    assert callable(train.build_model) and not list(tmp_path.iterdir())


def test_gradients_through_the_whole_model_match_a_float64_reference():
    """Autograd's gradients of the fp32 model against the same model in float64, whose own gradients are checked
    against finite differences: the change of the loss along a random direction of each parameter."""
    train = load_module(TEMPLATE / "train.py", "gpt_train_grads")
    torch.manual_seed(0)
    model = perturbed(train.build_model(vocab_size=31, sequence_len=8, depth=2, model_dim=16, n_head=2, softcap=5.0,
                                        windows=[3, None]))  # a sliding-window layer too
    idx = torch.randint(0, 31, (2, 8))
    names = [name for name, _ in model.named_parameters()]

    def loss(params):
        logits = torch.func.functional_call(model, dict(zip(names, params)), (idx,))
        return torch.nn.functional.cross_entropy(logits.view(-1, 31), idx.roll(-1, 1).view(-1))

    params32 = [p.detach().clone().requires_grad_() for p in model.parameters()]
    grads32 = torch.autograd.grad(loss(params32), params32)
    model.double()
    params64 = [p.detach().double().requires_grad_() for p in params32]
    grads64 = torch.autograd.grad(loss(params64), params64)
    eps = 1e-6
    with torch.no_grad():
        for i, name in enumerate(names):
            assert grads32[i].abs().max() > 0, f"no gradient reaches {name}"
            assert torch.allclose(grads32[i].double(), grads64[i], rtol=1e-3, atol=1e-6), name
            direction = torch.randn_like(params64[i])
            moved = lambda sign: loss([p + sign * eps * direction if j == i else p for j, p in enumerate(params64)])
            numeric = (moved(1) - moved(-1)) / (2 * eps)
            assert torch.isclose(numeric, (grads64[i] * direction).sum(), rtol=1e-5, atol=1e-8), name


def test_a_sliding_window_hides_older_tokens():
    train = load_module(TEMPLATE / "train.py", "gpt_train_window")
    torch.manual_seed(0)
    T = 40
    cos, sin = train.rotary_tables(T, 8)
    for window in (10, None):
        attention = perturbed(train.Attention(16, 2, window))
        x = torch.randn(1, T, 16)
        changed = x.clone()
        changed[:, : T - 10] = torch.randn(1, T - 10, 16)  # everything but the last 10 tokens
        with torch.no_grad():
            a, b = attention(x, cos, sin), attention(changed, cos, sin)
        assert torch.allclose(a[:, -1], b[:, -1], atol=1e-5) == (window == 10)  # the last query sees 10 tokens
        assert not torch.allclose(a[:, -11], b[:, -11])
    attention.window = T  # a window as long as the context is the whole context
    with torch.no_grad():
        wide = attention(x, cos, sin)
        attention.window = None
        assert torch.allclose(wide, attention(x, cos, sin), atol=1e-6)


def test_rotary_embedding_turns_channel_pairs_and_keeps_lengths():
    train = load_module(TEMPLATE / "train.py", "gpt_train_rotary")
    cos, sin = train.rotary_tables(5, 8)
    x = torch.randn(2, 3, 5, 8)  # [B, H, T, D]
    y = train.rotate(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(y[:, :, 0], x[:, :, 0])  # position 0 is not turned
    # the dot product of a rotated query and key depends only on how far apart they are
    q, k = torch.randn(8), torch.randn(8)
    at = lambda t, v: train.rotate(v.expand(1, 1, 5, 8), cos, sin)[0, 0, t]
    assert torch.allclose(at(3, q) @ at(1, k), at(4, q) @ at(2, k), atol=1e-5)


def test_window_pattern_cycles_over_the_layers_and_the_last_sees_everything(monkeypatch):
    train = load_module(TEMPLATE / "train.py", "gpt_train_pattern")
    assert train.layer_windows("L", 3, 32) == [None, None, None]
    assert train.layer_windows("SSL", 5, 32) == [32, 32, None, 32, None]
    assert train.layer_windows("S", 2, 16) == [16, None]
    with pytest.raises(SystemExit, match="WINDOW_PATTERN"):
        train.layer_windows("SX", 2, 16)
    model = train.build_model(vocab_size=257, sequence_len=16, depth=2, model_dim=32, n_head=2, softcap=15.0,
                              windows=[4, None])
    assert [block.attn.window for block in model.blocks] == [4, None]


def assert_compiled_matches_eager(model, idx, atol, rtol=1e-5):
    """The compiled model's logits and gradients are the eager model's."""
    results = []
    for forward in (model, torch.compile(model)):
        model.zero_grad()
        logits = forward(idx)
        logits.square().mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager, eager_grads), (compiled, compiled_grads) = results
    assert torch.allclose(eager, compiled, atol=atol, rtol=rtol)
    assert all(torch.allclose(a, b, atol=atol, rtol=rtol) for a, b in zip(eager_grads, compiled_grads))


@pytest.mark.slow
def test_the_model_compiles_on_a_cpu_and_matches_eager():
    """COMPILE is a preset an agent or a user may turn on for the CPU too."""
    assert_compiled_matches_eager(perturbed(tiny_model()), torch.randint(0, 257, (2, 16)), atol=1e-5)


def test_newton_schulz_brings_every_singular_value_near_one():
    train = load_module(TEMPLATE / "train.py", "gpt_train_muon")
    torch.manual_seed(0)
    g = torch.randn(3, 16, 64) * torch.logspace(-3, 1, 64)  # singular values spread over four decades
    for matrices in (g, g.mT):  # wide, and tall (transposed inside)
        out = train.orthogonalize(matrices)
        assert out.shape == matrices.shape
        singular = torch.linalg.svdvals(out)
        assert singular.min() > 0.5 and singular.max() < 1.3, singular
        assert torch.allclose(out[1], train.orthogonalize(matrices[1:2])[0], atol=1e-5)  # a batch is its matrices


def test_newton_schulz_on_the_gram_matrix_matches_the_direct_iteration():
    train = load_module(TEMPLATE / "train.py", "gpt_train_gram")
    torch.manual_seed(0)
    g = torch.randn(3, 16, 64, dtype=torch.float64)
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / g.norm(dim=(-2, -1), keepdim=True)
    for _ in range(5):
        x = a * x + (b * (x @ x.mT) + c * (x @ x.mT) @ (x @ x.mT)) @ x
    for wide in (g.float(), g.mT.float()):  # wide, and tall (transposed inside)
        assert torch.allclose(train.orthogonalize(wide), (x if wide.size(-1) > wide.size(-2) else x.mT).float(),
                              atol=1e-5)


def test_the_template_is_plain_pytorch_and_small():
    """What the agent edits: autograd owns every gradient (no hand-written backward), and the file stays short
    enough that every proposal can afford to read it."""
    source = (TEMPLATE / "train.py").read_text()
    assert "autograd.Function" not in source and "def backward" not in source
    assert source.count("scaled_dot_product_attention(") == 2 and len(source) <= 21_000


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_model():
    train = load_module(TEMPLATE / "train.py", "gpt_train_cuda")
    torch.manual_seed(0)
    return perturbed(train.build_model(vocab_size=257, sequence_len=64, depth=2, model_dim=128, n_head=2,
                                       softcap=15.0, windows=[16, None])).cuda()  # a sliding-window layer too


@needs_cuda
def test_model_trains_a_step_on_cuda_in_bf16():
    model = cuda_model()
    idx = torch.randint(0, 257, (4, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(idx)
    assert logits.shape == (4, 64, 257) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits.view(-1, 257), idx.view(-1)).backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().max() > 0 for p in model.parameters())


@needs_cuda
def test_the_model_compiles_on_cuda_and_matches_eager():
    assert_compiled_matches_eager(cuda_model(), torch.randint(0, 257, (4, 64), device="cuda"), atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------
# train.py -> evaluate.py end to end, as subprocesses (marked slow: a few seconds each)


@pytest.mark.slow
def test_train_prints_the_summary_block_and_saves_the_model(trained):
    tree, out, train_result, _ = trained
    printed = dict(re.findall(r"^(\w+): (.+)$", train_result.stdout, flags=re.MULTILINE))
    assert all(key in printed for key in SUMMARY_KEYS) and printed["num_steps"] == "3"
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["model_args"]["sequence_len"] == 32 and checkpoint["state_dict"]
    summary = json.loads((out / "train_summary.json").read_text())
    assert all(key in summary for key in SUMMARY_KEYS)


@pytest.mark.slow
def test_evaluate_writes_a_finite_val_bpb(trained):
    _, out, _, eval_result = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["val_bpb"]) and 0 < metrics["val_bpb"] < 20
    assert metrics["num_steps"] == 3 and re.search(r"^val_bpb: [\d.]+$", eval_result.stdout, flags=re.MULTILINE)
    assert re.search(r"^eval_seconds: [\d.]+$", eval_result.stdout, flags=re.MULTILINE)


@pytest.mark.slow
def test_evaluate_on_the_test_split_writes_test_bpb(trained, data_dir, tmp_path):
    tree, out, _, _ = trained
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    result = run(tree, "evaluate.py", data_dir, copy, split="test")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((copy / "metrics.json").read_text())
    assert math.isfinite(metrics["test_bpb"]) and "val_bpb" not in metrics and "test_bpb:" in result.stdout


@pytest.mark.slow
def test_training_is_deterministic_for_a_steps_budget(trained, data_dir, tmp_path):
    tree, out, _, _ = trained
    train_and_evaluate(tree, data_dir, tmp_path / "again")
    first = json.loads((out / "metrics.json").read_text())["val_bpb"]
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["val_bpb"] == first


@pytest.mark.slow
def test_micro_batches_add_up_to_the_batch(worktree, data_dir, tmp_path):
    weights, losses = [], []
    for micro in ("4", "2"):  # BATCH_SIZE 4: in one pass, then in two
        set_constants(worktree / "train.py", MICRO_BATCH=micro)
        result = run(worktree, "train.py", data_dir, tmp_path / micro, budget=("STEPS", "1"))
        assert result.returncode == 0, result.stderr
        assert ("in 2 passes of 2" in result.stdout) == (micro == "2")
        losses.append(float(re.search(r"loss (\S+)", result.stdout).group(1)))
        weights.append(torch.load(tmp_path / micro / "model.pt")["state_dict"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the same four sequences
    for name, weight in weights[0].items():  # Muon's step from the same gradient, summed in another order
        if name.startswith("blocks."):
            assert torch.allclose(weights[1][name], weight, atol=1e-4), name

    set_constants(worktree / "train.py", MICRO_BATCH="3")  # not a divisor of BATCH_SIZE: the largest one below it
    result = run(worktree, "train.py", data_dir, tmp_path / "3", budget=("STEPS", "1"))
    assert result.returncode == 0 and "in 2 passes of 2" in result.stdout


@pytest.mark.slow
def test_tokens_budget_rounds_up_to_whole_steps(worktree, data_dir, tmp_path):
    result = run(worktree, "train.py", data_dir, tmp_path / "out", budget=("TOKENS", "300"))  # 4 x 32 tokens a step
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text())["num_steps"] == 3


@pytest.mark.slow
def test_seconds_budget_stops_on_time(worktree, data_dir, tmp_path):
    result = run(worktree, "train.py", data_dir, tmp_path / "out", budget=("SECONDS", "1.5"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert 1.5 <= summary["training_seconds"] < 10 and summary["num_steps"] >= 3  # the 2 untimed steps do not count


@pytest.mark.slow
def test_diverging_run_fails_fast_with_a_clear_message(worktree, data_dir, tmp_path):
    set_constants(worktree / "train.py", UNEMBEDDING_LR="1e6", EMBEDDING_LR="1e6")
    started = time.time()
    result = run(worktree, "train.py", data_dir, tmp_path / "out", budget=("STEPS", "1000"))
    assert result.returncode != 0 and "training diverged" in result.stderr
    assert time.time() - started < 60 and not (tmp_path / "out" / "model.pt").exists()


@pytest.mark.slow
def test_evaluate_rejects_a_model_that_sees_the_future(worktree, data_dir, tmp_path):
    train_py = worktree / "train.py"
    source = train_py.read_text()
    assert source.count("is_causal=True") == 1
    train_py.write_text(source.replace("is_causal=True", "is_causal=False"))  # every key, later ones too
    train_result = run(worktree, "train.py", data_dir, tmp_path / "out", budget=("STEPS", "10"))
    assert train_result.returncode == 0, train_result.stderr
    result = run(worktree, "evaluate.py", data_dir, tmp_path / "out")
    assert result.returncode != 0 and "not causal" in result.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_evaluate_without_a_model_fails_clearly(worktree, data_dir, tmp_path):
    result = run(worktree, "evaluate.py", data_dir, tmp_path / "empty")
    assert result.returncode != 0 and "model.pt not found" in result.stderr
