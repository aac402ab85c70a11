"""
Pretrain a small GPT on the prepared training split under a fixed budget; evaluate.py then scores the saved
model (it imports build_model from here). By hand:

    AUTORESEARCH_BUDGET_SECONDS=60 python train.py   # data from .autoresearch/data/train

Importing this file only defines things. With AUTORESEARCH_CHECKPOINTS=N (the speedrun program) the model is also
saved at every 1/N of the budget. Plain PyTorch: autograd computes every gradient; speed comes from PyTorch's
kernels (F.scaled_dot_product_attention) and torch.compile.
"""

import json
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from sampler import batches

# ----------------------------------------------------------------------------
# Hyperparameters. A value, or a {device type: value} dict for what depends on the machine.

DEPTH = {"cpu": 2, "mps": 4, "cuda": 8}       # transformer layers: the one complexity dial
ASPECT = 64               # model width = DEPTH * ASPECT, rounded up to a multiple of HEAD_DIM
HEAD_DIM = {"cpu": 32, "mps": 64, "cuda": 128}    # channels per attention head
SEQ_LEN = {"cpu": 128, "mps": 256, "cuda": 2048}  # context length in tokens (also used by the evaluator)
BATCH_SIZE = {"cpu": 16, "mps": 32, "cuda": 64}   # sequences per optimizer step
MICRO_BATCH = {"cpu": 16, "mps": 32, "cuda": 64}  # sequences per forward pass: lower it (not BATCH_SIZE) if the GPU
                                                  # runs out of memory; the passes' gradients add up to the same step
SOFTCAP = 15.0            # logits are squashed into (-SOFTCAP, SOFTCAP) with tanh
WINDOW_PATTERN = "L"      # attention span per layer, cycled over the depth: L the whole context, S a sliding window of
                          # the last SHORT_WINDOW tokens; the last layer is always L
SHORT_WINDOW = {"cpu": 32, "mps": 64, "cuda": 512}  # tokens an S layer attends to, itself included

MATRIX_LR = 0.04          # Muon learning rate for the 2D weights inside the blocks
EMBEDDING_LR = 0.3        # AdamW learning rate for the token embedding (at width 768)
UNEMBEDDING_LR = 0.004    # AdamW learning rate for the output head (at width 768)
SCALAR_LR = 0.5           # AdamW learning rate for the per-layer scalars
WEIGHT_DECAY = 0.0        # decoupled weight decay of the Muon matrices
ADAM_BETAS = (0.8, 0.95)  # AdamW betas
MUON_MOMENTUM = 0.95      # Muon momentum (ramped up from 0.85 over the first 300 steps)
WARMUP_FRAC = 0.0         # fraction of the budget spent ramping the learning rates up
WARMDOWN_FRAC = 0.5       # fraction of the budget at the end spent decaying them to FINAL_LR_FRAC
FINAL_LR_FRAC = 0.0       # learning-rate multiplier at the very end

COMPILE = {"cpu": False, "mps": False, "cuda": True}  # torch.compile the model (in the untimed steps)
UNTIMED_STEPS = {"cpu": 2, "mps": 5, "cuda": 10}      # first steps not counted against a seconds budget

# ----------------------------------------------------------------------------
# Model: rotary attention with QK-norm, ReLU^2 MLP, RMSNorm, untied embeddings, soft-capped logits


def norm(x):
    """RMSNorm without a learnable gain: each vector divided by its root mean square."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base=10000.0):
    """cos and sin [T, head_dim] of each position's angles: channel pair (i, i + D/2) turns at base^(-2i/D)."""
    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs).repeat(1, 2)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """Rotary embedding of x [..., T, D]: each channel pair turned by its position's angle, so that a query-key dot
    product depends on how far apart they are."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, dim, n_head, window):
        super().__init__()
        self.n_head, self.window = n_head, window  # window: None (the whole context) or how many latest tokens
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        # one matmul for q, k and v (their weights stay separate matrices for Muon)
        qkv = F.linear(x, torch.cat([self.q.weight, self.k.weight, self.v.weight]))
        q, k, v = qkv.view(B, T, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, D]
        q, k = rotate(norm(q), cos, sin), rotate(norm(k), cos, sin)  # QK-norm keeps the attention logits bounded
        if self.window is None or self.window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window(T, self.window, x.device))
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def sliding_window(seq_len, window, device):
    """[T, T] bool: query i attends to key j when j <= i (causal) and i - j < window."""
    i = torch.arange(seq_len, device=device)
    distance = i[:, None] - i[None, :]
    return (distance >= 0) & (distance < window)


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())  # ReLU^2: sparse like ReLU, smooth enough to train fast


class Block(nn.Module):
    def __init__(self, dim, n_head, window):
        super().__init__()
        self.attn = Attention(dim, n_head, window)
        self.mlp = MLP(dim)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, sequence_len, depth, model_dim, n_head, softcap, windows=None):
        super().__init__()
        self.softcap = softcap
        self.wte = nn.Embedding(vocab_size, model_dim)
        self.blocks = nn.ModuleList(Block(model_dim, n_head, window) for window in windows or [None] * depth)
        self.x0_gates = nn.Parameter(torch.zeros(depth))  # how much of the embedding each layer re-reads
        self.lm_head = nn.Linear(model_dim, vocab_size, bias=False)  # untied from the input embedding
        cos, sin = rotary_tables(sequence_len, model_dim // n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.q, block.attn.k, block.attn.v, block.mlp.fc):
                bound = (3 / lin.in_features) ** 0.5  # uniform with unit-variance outputs
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)

    def forward(self, idx):
        T = idx.size(1)
        cos, sin = self.cos[:T], self.sin[:T]
        x = x0 = norm(self.wte(idx))
        for gate, block in zip(self.x0_gates, self.blocks):
            x = block(x + gate * x0, cos, sin)
        logits = self.lm_head(norm(x))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 under autocast: cap it in fp32
        return self.softcap * torch.tanh(logits / self.softcap)  # soft cap: no logit runs away early in training


def build_model(**model_args):
    return GPT(**model_args)


def layer_windows(pattern, depth, short_window):
    """Each layer's attention window: None (the whole context) for L, short_window for S."""
    if not pattern or set(pattern) - {"S", "L"}:
        sys.exit(f"train.py: WINDOW_PATTERN must be letters S and L, got {pattern!r}")
    windows = [short_window if pattern[i % len(pattern)] == "S" else None for i in range(depth)]
    return windows[:-1] + [None]  # the last layer sees the whole context


# ----------------------------------------------------------------------------
# Optimizer: Muon for the 2D matrices inside the blocks, AdamW for everything else


def orthogonalize(g, steps=5):
    """Newton-Schulz iteration driving the singular values of each matrix in g (batch, rows, cols) towards 1: the
    update keeps the gradient's directions but gives them all the same size. Each step is x <- p(s) x with
    p(s) = a + b s + c s^2, s = x x^T. For a wide fp32 matrix it runs on the small Gram matrix (s <- p s p, since the
    p's commute) and applies the product of the p's once: 40% fewer flops for the MLP's 1:4 matrices (in bf16 the
    Gram matrix's rounding would swamp the small singular values)."""
    a, b, c = 3.4445, -4.7750, 2.0315  # quintic coefficients tuned for fast convergence near 0
    x = g.bfloat16() if g.device.type == "cuda" else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    if x.dtype == torch.float32 and x.size(-1) >= 2 * x.size(-2):
        s, q = x @ x.mT, None
        for i in range(steps):
            p = torch.baddbmm(s, s, s, beta=b, alpha=c)
            p.diagonal(dim1=-2, dim2=-1).add_(a)
            q = p if q is None else p @ q
            if i < steps - 1:
                s = p @ s @ p
        x = q @ x
    else:
        for _ in range(steps):  # as two fused multiply-adds
            s = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(s, s, s, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).to(g.dtype)


class Muon:
    """SGD with Nesterov momentum, its update orthogonalized; same-shape matrices as one batch (fewer matmuls)."""

    def __init__(self, params, lr, momentum, weight_decay):
        self.param_groups = [dict(params=list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)]
        self.momentum = {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                grads = [p.grad for p in params]
                bufs = [self.momentum.setdefault(p, torch.zeros_like(p)) for p in params]
                torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
                update = orthogonalize(torch.stack(grads).lerp_(torch.stack(bufs), group["momentum"]))
                if group["weight_decay"]:
                    torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
                torch._foreach_add_(params, list(update.unbind(0)),
                                    alpha=-group["lr"] * max(1, shape[-2] / shape[-1]) ** 0.5)


class AdamW:
    """Adam with bias correction, without weight decay (not torch.optim's: it imports torch._dynamo, 2 s a run)."""

    def __init__(self, groups, betas, eps):
        self.param_groups, self.betas, self.eps, self.steps = [dict(g) for g in groups], betas, eps, 0
        self.moments = {}  # parameter -> (first moment, second moment)

    @torch.no_grad()
    def step(self):
        self.steps += 1
        beta1, beta2 = self.betas
        for group in self.param_groups:
            for p in group["params"]:
                m, v = self.moments.setdefault(p, (torch.zeros_like(p), torch.zeros_like(p)))
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denominator = (v / (1 - beta2 ** self.steps)).sqrt_().add_(self.eps)
                p.addcdiv_(m, denominator, value=-group["lr"] / (1 - beta1 ** self.steps))


def make_optimizers(model, model_dim):
    scale = (model_dim / 768) ** -0.5  # AdamW learning rates are set for width 768
    adamw = AdamW([
        dict(params=[model.wte.weight], lr=EMBEDDING_LR * scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * scale),
        dict(params=[model.x0_gates], lr=SCALAR_LR),
    ], betas=ADAM_BETAS, eps=1e-10)
    muon = Muon([p for p in model.blocks.parameters() if p.ndim == 2], lr=MATRIX_LR,
                momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
    optimizers = [adamw, muon]
    assert sum(len(g["params"]) for o in optimizers for g in o.param_groups) == len(list(model.parameters()))
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    if progress < WARMUP_FRAC:
        return (progress + 1e-8) / WARMUP_FRAC
    if progress < 1 - WARMDOWN_FRAC:
        return 1.0
    return FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * (1 - progress) / WARMDOWN_FRAC


# ----------------------------------------------------------------------------
# Setup: device, budget, data


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(name)


def read_budget():
    found = {kind: float(os.environ[f"AUTORESEARCH_BUDGET_{kind}"]) for kind in ("SECONDS", "STEPS", "TOKENS")
             if os.environ.get(f"AUTORESEARCH_BUDGET_{kind}")}
    if len(found) > 1:
        sys.exit(f"train.py: set only one of AUTORESEARCH_BUDGET_SECONDS/_STEPS/_TOKENS, got {sorted(found)}")
    return next(iter(found.items())) if found else ("SECONDS", 60.0)


def peak_flops(device):
    """Dense bf16 peak of the GPU, for MFU; 0 where unknown (CPU, MPS, unlisted GPUs)."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    table = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12, "3090": 71e12}
    return next((flops for key, flops in table.items() if key in name), 0.0)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # peak RSS: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def main():
    t_start = time.time()
    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data", "train")
    out_dir = os.environ.get("AUTORESEARCH_OUT") or os.path.join(".autoresearch", "out")
    seed = int(os.environ.get("AUTORESEARCH_SEED") or 0)
    device = pick_device(os.environ.get("AUTORESEARCH_DEVICE") or "auto")
    if device.type == "cpu" and os.environ.get("AUTORESEARCH_THREADS"):
        torch.set_num_threads(int(os.environ["AUTORESEARCH_THREADS"]))
    torch.set_flush_denormal(True)  # tiny floats are very slow on x86 CPUs
    budget_kind, budget = read_budget()
    preset = lambda value: value[device.type] if isinstance(value, dict) else value
    depth, head_dim, seq_len, batch_size = preset(DEPTH), preset(HEAD_DIM), preset(SEQ_LEN), preset(BATCH_SIZE)
    micro_batch = max(n for n in range(1, min(preset(MICRO_BATCH), batch_size) + 1) if batch_size % n == 0)
    accumulation = batch_size // micro_batch
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    with open(os.path.join(data_dir, "meta.json")) as f:
        vocab_size = json.load(f)["vocab_size"]
    model_dim = math.ceil(depth * ASPECT / head_dim) * head_dim
    model_args = dict(vocab_size=vocab_size, sequence_len=seq_len, depth=depth, model_dim=model_dim,
                      n_head=model_dim // head_dim, softcap=SOFTCAP,
                      windows=layer_windows(WINDOW_PATTERN, depth, preset(SHORT_WINDOW)))
    raw_model = build_model(**model_args).to(device)
    model = torch.compile(raw_model) if preset(COMPILE) else raw_model
    adamw, muon = optimizers = make_optimizers(raw_model, model_dim)
    num_params = sum(p.numel() for p in raw_model.parameters())
    matrix_params = sum(p.numel() for p in raw_model.blocks.parameters())
    flops_per_token = 6 * matrix_params + 6 * vocab_size * model_dim + 12 * depth * model_dim * seq_len
    data = batches(data_dir, micro_batch, seq_len, device, seed)
    tokens_per_step = batch_size * seq_len
    print(f"device: {device} | budget: {budget:g} {budget_kind.lower()} | params: {num_params / 1e6:.2f}M | "
          f"depth {depth} width {model_dim} | batch {batch_size} x {seq_len} tokens"
          + (f" in {accumulation} passes of {micro_batch}" if accumulation > 1 else ""))

    # ----------------------------------------------------------------------------
    # Training loop: runs until the budget is spent; the schedule follows the fraction used

    os.makedirs(out_dir, exist_ok=True)
    def save(name):  # written aside, then renamed: the harness copies checkpoints as they appear
        path = os.path.join(out_dir, name)
        torch.save({"model_args": model_args, "state_dict": raw_model.state_dict()}, path + ".tmp")
        os.replace(path + ".tmp", path)
    checkpoints = int(os.environ.get("AUTORESEARCH_CHECKPOINTS") or 0)  # the speedrun program scores them
    step, tokens, training_time, smooth_loss, logged, saved = 0, 0, 0.0, 0.0, -1, 0
    x, y = next(data)
    while True:
        used = {"SECONDS": training_time, "STEPS": step, "TOKENS": tokens}[budget_kind]
        progress = used / budget
        while saved < checkpoints and progress >= (saved + 1) / checkpoints:
            saved += 1
            save(f"checkpoint-{saved:03d}.pt")
        if progress >= 1:
            break
        t0 = time.time()
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * lr_multiplier(progress)
        muon.param_groups[0]["momentum"] = 0.85 + (MUON_MOMENTUM - 0.85) * min(step / 300, 1)
        loss = 0.0
        for _ in range(accumulation):
            with autocast:
                logits = model(x)
            part = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)) / accumulation
            part.backward()
            loss += part.detach()
            x, y = next(data)  # fetch the next batch while the device works
        for opt in optimizers:
            opt.step()
        raw_model.zero_grad(set_to_none=True)
        loss_f = loss.item()
        if not math.isfinite(loss_f) or loss_f > 3 * math.log(vocab_size):
            sys.exit(f"train.py: training diverged at step {step} (loss {loss_f}); lower the learning rates")
        dt = time.time() - t0
        if step >= preset(UNTIMED_STEPS):
            training_time += dt
        step, tokens = step + 1, tokens + tokens_per_step
        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_f
        if int(progress * 20) > logged or step == 1:
            logged = int(progress * 20)
            print(f"step {step:5d} | {100 * progress:5.1f}% | loss {smooth_loss / (1 - 0.9 ** step):.4f} | "
                  f"lr x{lr_multiplier(progress):.2f} | {tokens_per_step / dt:,.0f} tok/s", flush=True)

    # ----------------------------------------------------------------------------
    # Save the weights and a summary; the evaluator takes it from here

    save("model.pt")
    timed_tokens = tokens - min(step, preset(UNTIMED_STEPS)) * tokens_per_step
    tokens_per_second = timed_tokens / max(training_time, 1e-9)
    peak = peak_flops(device)
    summary = {
        "training_seconds": round(training_time, 2),
        "total_seconds": round(time.time() - t_start, 2),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "mfu_percent": round(100 * flops_per_token * tokens_per_second / peak, 2) if peak else 0.0,
        "total_tokens_M": round(tokens / 1e6, 3),
        "tokens_per_second": round(tokens_per_second),
        "flops_per_token": flops_per_token,  # the model's matmul FLOPs per training token (forward and backward)
        "num_steps": step,
        "num_params_M": round(num_params / 1e6, 3),
        "depth": depth,
        "train_loss": round(smooth_loss / (1 - 0.9 ** max(step, 1)), 4),
        "device": str(device),
    }
    with open(os.path.join(out_dir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("---")
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    try:
        main()
    except torch.OutOfMemoryError:
        sys.exit("train.py: out of GPU memory; lower MICRO_BATCH (the same training in more passes)")
