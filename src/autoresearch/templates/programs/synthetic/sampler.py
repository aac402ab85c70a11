"""Training-data sampling for train.py in the `synthetic` program: real text mixed with synthetic documents.

Protected. Each row of each batch is, with probability synthetic.RATIO, a window of synthetic
documents (synthetic.generate, tokenized with the prepared tokenizer, each after the separator
token like real documents), else a window of the train split ($AUTORESEARCH_DATA/train.bin, cut
into non-overlapping windows at a random offset each epoch, visited in random order). Documents
are generated lazily, when a batch needs them, so generation time falls inside the training
loop's timed steps. Seeded: a fixed seed gives the same batches.
"""

import os
import time

import numpy as np
import torch

import synthetic
from autoresearch.tokenizer import load


def real_windows(data, seq_len, rng):
    """Windows of seq_len + 1 tokens of the train split, forever, in a new random order each epoch."""
    while True:
        offset = int(rng.integers(seq_len))
        starts = np.arange(offset, len(data) - seq_len - 1, seq_len)
        rng.shuffle(starts)
        for s in starts:
            yield data[s:s + seq_len + 1]


def synthetic_windows(tokenizer, seq_len, rng, stats):
    """Windows of seq_len + 1 tokens of generated documents, forever."""
    separator = np.array([tokenizer.separator], dtype=np.uint16)
    buffer = separator[:0]
    while True:
        while len(buffer) < seq_len + 1:
            started = time.perf_counter()
            text = synthetic.generate(rng)
            if not isinstance(text, str):
                raise TypeError(f"synthetic.generate returned {type(text).__name__}, not a str")
            buffer = np.concatenate([buffer, separator, tokenizer.encode(text)])
            stats["seconds"] += time.perf_counter() - started
            stats["documents"] += 1
        yield buffer[:seq_len + 1]
        buffer = buffer[seq_len + 1:]


def batches(data_dir, batch_size, seq_len, device, seed):
    """Yield (x, y) batches of shape [batch_size, seq_len] forever."""
    data = np.memmap(os.path.join(data_dir, "train.bin"), dtype=np.uint16, mode="r")
    if len(data) < batch_size * (seq_len + 1):
        raise ValueError(f"train.bin has {len(data):,} tokens, fewer than one batch of "
                         f"{batch_size} x {seq_len + 1}")
    ratio = float(synthetic.RATIO)
    if not 0 <= ratio <= 1:
        raise ValueError(f"synthetic.RATIO must be between 0 and 1, not {ratio}")
    rng, synthetic_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    stats = {"seconds": 0.0, "documents": 0}
    real = real_windows(data, seq_len, rng)
    made = synthetic_windows(load(data_dir), seq_len, synthetic_rng, stats) if ratio > 0 else None
    print(f"sampler: {ratio:.1%} of the rows synthetic", flush=True)
    pin = torch.device(device).type == "cuda"
    step = 0
    while True:
        picks = rng.random(batch_size) < ratio
        rows = np.stack([next(made) if pick else next(real) for pick in picks])
        chunk = torch.from_numpy(rows.astype(np.int64))
        if pin:
            chunk = chunk.pin_memory()
        chunk = chunk.to(device, non_blocking=pin)
        step += 1
        if made is not None and (step & (step - 1)) == 0:  # at batches 1, 2, 4, 8, ...: what generation costs
            print(f"sampler: batch {step}: {stats['documents']} synthetic documents, "
                  f"{stats['seconds']:.2f}s generating", flush=True)
        yield chunk[:, :-1], chunk[:, 1:]
