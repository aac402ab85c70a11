"""A plain nanoGPT-style GPT, trained under the same contract as the built-in target's train.py.

The baseline that benchmarks/vs_nanogpt.py races the built-in target against: LayerNorm with
bias, GELU MLP, learned absolute positions, tied embeddings, AdamW with weight decay on the
matrices, linear warmup then cosine decay, gradient clipping, no dropout. Written for this
project in the manner of nanoGPT, not copied from it.

It is the same size as the built-in model on the same device: depth, width, heads, sequence
length, batch size and micro-batch are read from the built-in train.py (`reference_train.py` beside this file
when present, else the template installed with autoresearch), resolved for the device, so the
two stay matched when that file changes. Run it as a target's train.py, next to sampler.py:

    cp benchmarks/nanogpt_train.py mytree/train.py && cd mytree && AUTORESEARCH_BUDGET_SECONDS=60 python train.py

It reads the same AUTORESEARCH_* variables, samples batches with the same sampler.py, defines
`build_model(**model_args)` and writes model.pt and train_summary.json in the same form, so the
target's evaluate.py scores it unchanged.
"""

import importlib.util
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------
# Hyperparameters. The model's size is not here: it comes from the built-in train.py.

LEARNING_RATE = {"cpu": 3e-3, "mps": 1e-3, "cuda": 6e-4}  # peak AdamW learning rate. CPU: best of 1e-3 / 3e-3 / 6e-3,
    # shakespeare, 700 steps (2e-3 is steadier across seeds but worse on most; some seeds stall at 3e-3).
    # CUDA: the larger model stalls at 3e-3 (train loss 2.44 after 60 s on an H100)
MIN_LR_FRAC = 0.1         # the cosine decays to this fraction of the peak, as nanoGPT does
WARMUP_FRAC = 0.02        # fraction of the budget spent warming up linearly
WEIGHT_DECAY = 0.1        # AdamW weight decay on the 2D parameters (matrices and embeddings)
ADAM_BETAS = (0.9, 0.99)  # nanoGPT's choice for small models with few tokens per step
GRAD_CLIP = 1.0           # clip the global gradient norm to this
INIT_STD = 0.02           # normal init of every weight; residual projections get INIT_STD / sqrt(2 * depth)

# ----------------------------------------------------------------------------
# Model: pre-LayerNorm blocks, causal self-attention, GELU MLP, learned positions, tied embeddings


class SelfAttention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim)
        self.proj = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_head)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, sequence_len, depth, model_dim, n_head):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, model_dim)
        self.wpe = nn.Embedding(sequence_len, model_dim)
        self.blocks = nn.ModuleList(Block(model_dim, n_head) for _ in range(depth))
        self.ln_f = nn.LayerNorm(model_dim)
        self.lm_head = nn.Linear(model_dim, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings
        self.init_weights(depth)

    @torch.no_grad()
    def init_weights(self, depth):
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:  # scale down what each block adds to the residual stream
            for lin in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(lin.weight, std=INIT_STD / math.sqrt(2 * depth))

    def forward(self, idx):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x)).float()


def build_model(**model_args):
    return GPT(**model_args)


# ----------------------------------------------------------------------------
# Optimizer and schedule


def make_optimizer(model, device, lr):
    params = list(model.parameters())  # the tied weight appears once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([dict(params=decay, weight_decay=WEIGHT_DECAY), dict(params=no_decay, weight_decay=0.0)],
                             lr=lr, betas=ADAM_BETAS, fused=device.type == "cuda")


def lr_at(progress, peak):
    if progress < WARMUP_FRAC:
        return peak * (progress + 1e-8) / WARMUP_FRAC
    decay = (progress - WARMUP_FRAC) / (1 - WARMUP_FRAC)
    return peak * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * min(decay, 1.0))))


# ----------------------------------------------------------------------------
# The built-in train.py: the model size to match, and the helpers that make both runs alike


def load_reference():
    """The built-in train.py as a module: beside this file, else the template shipped with autoresearch."""
    here = Path(__file__).resolve().parent
    path = here / "reference_train.py"
    if not path.exists():
        import autoresearch
        path = Path(autoresearch.__file__).parent / "templates" / "gpt" / "train.py"
        sys.path.insert(0, str(path.parent))  # for its `from sampler import batches` when run outside a target
    spec = importlib.util.spec_from_file_location("reference_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    ref = load_reference()
    from sampler import batches

    t_start = time.time()
    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data", "train")
    out_dir = os.environ.get("AUTORESEARCH_OUT") or os.path.join(".autoresearch", "out")
    seed = int(os.environ.get("AUTORESEARCH_SEED") or 0)
    device = ref.pick_device(os.environ.get("AUTORESEARCH_DEVICE") or "auto")
    if device.type == "cpu" and os.environ.get("AUTORESEARCH_THREADS"):
        torch.set_num_threads(int(os.environ["AUTORESEARCH_THREADS"]))
    torch.set_flush_denormal(True)
    budget_kind, budget = ref.read_budget()
    preset = lambda value: value[device.type] if isinstance(value, dict) else value
    depth, head_dim = preset(ref.DEPTH), preset(ref.HEAD_DIM)
    seq_len, batch_size, untimed_steps = preset(ref.SEQ_LEN), preset(ref.BATCH_SIZE), preset(ref.UNTIMED_STEPS)
    micro_batch = min(preset(getattr(ref, "MICRO_BATCH", batch_size)), batch_size)
    accumulation = batch_size // micro_batch
    model_dim = math.ceil(depth * ref.ASPECT / head_dim) * head_dim  # as the built-in train.py sizes its model
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    with open(os.path.join(data_dir, "meta.json")) as f:
        vocab_size = json.load(f)["vocab_size"]
    model_args = dict(vocab_size=vocab_size, sequence_len=seq_len, depth=depth, model_dim=model_dim,
                      n_head=model_dim // head_dim)
    raw_model = build_model(**model_args).to(device)
    model = torch.compile(raw_model) if preset(ref.COMPILE) else raw_model
    peak_lr = preset(LEARNING_RATE)
    optimizer = make_optimizer(raw_model, device, peak_lr)
    num_params = sum(p.numel() for p in raw_model.parameters())  # the tied weight counted once
    matrix_params = sum(m.weight.numel() for m in raw_model.blocks.modules() if isinstance(m, nn.Linear))
    flops_per_token = 6 * matrix_params + 6 * vocab_size * model_dim + 12 * depth * model_dim * seq_len
    data = batches(data_dir, micro_batch, seq_len, device, seed)
    tokens_per_step = batch_size * seq_len
    print(f"device: {device} | budget: {budget:g} {budget_kind.lower()} | params: {num_params / 1e6:.2f}M | "
          f"depth {depth} width {model_dim} | batch {batch_size} x {seq_len} tokens | nanoGPT-style")

    # ----------------------------------------------------------------------------
    # Training loop: the same budget accounting as the built-in train.py

    step, tokens, training_time, smooth_loss, logged = 0, 0, 0.0, 0.0, -1
    x, y = next(data)
    while True:
        used = {"SECONDS": training_time, "STEPS": step, "TOKENS": tokens}[budget_kind]
        progress = used / budget
        if progress >= 1:
            break
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress, peak_lr)
        loss = 0.0
        for _ in range(accumulation):
            with autocast:
                logits = model(x)
            part = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)) / accumulation
            part.backward()
            loss += part.detach()
            x, y = next(data)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_f = loss.item()
        if not math.isfinite(loss_f) or loss_f > 3 * math.log(vocab_size):
            sys.exit(f"train.py: training diverged at step {step}: loss {loss_f}; lower LEARNING_RATE")
        dt = time.time() - t0
        if step >= untimed_steps:
            training_time += dt
        step, tokens = step + 1, tokens + tokens_per_step
        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_f
        if int(progress * 20) > logged or step == 1:
            logged = int(progress * 20)
            print(f"step {step:5d} | {100 * progress:5.1f}% | loss {smooth_loss / (1 - 0.9 ** step):.4f} | "
                  f"lr {lr_at(progress, peak_lr):.2e} | {tokens_per_step / dt:,.0f} tok/s", flush=True)

    # ----------------------------------------------------------------------------
    # Save the weights and a summary with the built-in train.py's keys

    os.makedirs(out_dir, exist_ok=True)
    torch.save({"model_args": model_args, "state_dict": raw_model.state_dict()}, os.path.join(out_dir, "model.pt"))
    timed_tokens = tokens - min(step, untimed_steps) * tokens_per_step
    tokens_per_second = timed_tokens / max(training_time, 1e-9)
    peak = ref.peak_flops(device)
    summary = {
        "training_seconds": round(training_time, 2),
        "total_seconds": round(time.time() - t_start, 2),
        "peak_memory_mb": round(ref.peak_memory_mb(device), 1),
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
    main()
