"""Training-data sampling for train.py: which tokens of the train split each step sees, in what order.

The train split is one stream of uint16 tokens, each document preceded by a separator token.
Every epoch cuts it into non-overlapping windows at a random offset and visits them in a random
order; batches are (x, y) int64 tensors with y = x shifted by one token. Seeded, so a fixed seed
gives the same batches. Only $AUTORESEARCH_DATA/train.bin is read.
"""

import os

import numpy as np
import torch


def batches(data_dir, batch_size, seq_len, device, seed):
    """Yield (x, y) batches of shape [batch_size, seq_len] forever."""
    data = np.memmap(os.path.join(data_dir, "train.bin"), dtype=np.uint16, mode="r")
    if len(data) < batch_size * (seq_len + 1):
        raise ValueError(f"train.bin has {len(data):,} tokens, fewer than one batch of "
                         f"{batch_size} x {seq_len + 1}")
    rng = np.random.default_rng(seed)
    pin = torch.device(device).type == "cuda"
    while True:
        offset = int(rng.integers(seq_len))
        starts = np.arange(offset, len(data) - seq_len - 1, seq_len)
        rng.shuffle(starts)
        for i in range(0, len(starts) - batch_size + 1, batch_size):
            rows = np.stack([data[s:s + seq_len + 1] for s in starts[i:i + batch_size]])
            chunk = torch.from_numpy(rows.astype(np.int64))
            if pin:
                chunk = chunk.pin_memory()
            chunk = chunk.to(device, non_blocking=pin)
            yield chunk[:, :-1], chunk[:, 1:]
