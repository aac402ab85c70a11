"""Training data for train.py: which sources, in what proportions, which documents, in what order.

This is the file the agent edits in the `data` program; the model and the training loop
(train.py) are frozen. train.py calls `batches(data_dir, batch_size, seq_len, device, seed)` and
trains on the (x, y) batches it yields, y being x shifted by one token. The evaluator scores
val_bpb on a fixed validation mix of the same sources that this file never sees.

The prepared training data ($AUTORESEARCH_DATA, i.e. .autoresearch/data/train):
    train.bin   uint16 tokens: every source's training documents, one source after the other, each
                document preceded by the separator token (meta["separator"])
    meta.json   meta["sources"][name] = {"start", "end", "documents", "bytes", "tokens"}: where each
                source's block of train.bin is; meta["token_bytes"][id] = bytes a token stands for

Seeded: a fixed seed gives the same batches. Anything outside $AUTORESEARCH_DATA is off limits
(the held-out splits beside it are refused to this process, and a run that tries is rejected).
"""

import json
import os

import numpy as np
import torch

# ----------------------------------------------------------------------------
# The mixture: each batch row comes from one source, drawn with these shares

SIZE_POWER = 1.0        # a source's share of the training tokens grows as (its size) ** SIZE_POWER: 1 = as prepared, 0 = equal
WEIGHTS = {}            # source name -> extra weight on its share (1.0 when not listed), e.g. {"stdlib": 0.5}

# ----------------------------------------------------------------------------
# Filtering and deduplication of documents

MIN_DOC_TOKENS = 0      # drop documents shorter than this
MAX_DOC_TOKENS = 0      # keep only the first this many tokens of each document (0: all of it)
DEDUP_PREFIX = 0        # drop a document whose first this many tokens repeat an earlier one's (0: off)


def keep(source, tokens):
    """Whether to train on a document (its tokens, without the separator). A quality filter goes here."""
    return True


# ----------------------------------------------------------------------------
# Order (curriculum): how each source's documents are read

ORDER = "random"        # "random": windows in random order each epoch; "short_first": documents by length, read in order


def documents(tokens, separator):
    """(start, end) of every document in a block of tokens: from after its separator to the next one."""
    starts = np.flatnonzero(tokens == separator) + 1
    ends = np.append(starts[1:] - 1, len(tokens))
    return list(zip(starts.tolist(), ends.tolist()))


def stream(source, tokens, separator, rng):
    """A source's kept documents joined into one token stream, each after a separator, in ORDER."""
    kept, seen = [], set()
    for start, end in documents(tokens, separator):
        doc = tokens[start:end]
        if len(doc) < MIN_DOC_TOKENS or not keep(source, doc):
            continue
        if DEDUP_PREFIX:
            prefix = doc[:DEDUP_PREFIX].tobytes()
            if prefix in seen:
                continue
            seen.add(prefix)
        kept.append(doc[:MAX_DOC_TOKENS] if MAX_DOC_TOKENS else doc)
    if ORDER == "short_first":
        kept.sort(key=len)
    elif ORDER == "random":
        rng.shuffle(kept)
    else:
        raise ValueError(f"ORDER must be 'random' or 'short_first', not {ORDER!r}")
    sep = np.array([separator], dtype=np.uint16)
    return np.concatenate([part for doc in kept for part in (sep, doc)]) if kept else sep[:0]


def windows(data, seq_len, rng):
    """Windows of seq_len + 1 tokens of a stream, forever: each epoch at a random offset, in ORDER."""
    while True:
        offset = int(rng.integers(seq_len))
        starts = np.arange(offset, len(data) - seq_len - 1, seq_len)
        if ORDER == "random":
            rng.shuffle(starts)
        for s in starts:
            yield data[s:s + seq_len + 1]


def batches(data_dir, batch_size, seq_len, device, seed):
    """Yield (x, y) batches of shape [batch_size, seq_len] forever."""
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    tokens = np.memmap(os.path.join(data_dir, "train.bin"), dtype=np.uint16, mode="r")
    blocks = meta.get("sources") or {meta["source"]: {"start": 0, "end": len(tokens)}}
    unknown = sorted(set(WEIGHTS) - set(blocks))
    if unknown:
        raise ValueError(f"WEIGHTS names {', '.join(unknown)}; the prepared sources are {', '.join(blocks)}")
    rng = np.random.default_rng(seed)
    names, streams, shares = [], [], []
    for name, block in blocks.items():
        data = stream(name, np.asarray(tokens[block["start"]:block["end"]]), meta["separator"], rng)
        share = WEIGHTS.get(name, 1.0) * float(len(data)) ** SIZE_POWER
        if len(data) > seq_len + 1 and share > 0:
            names.append(name)
            streams.append(windows(data, seq_len, rng))
            shares.append(share)
    if not names:
        raise ValueError("no source has a share above 0 and more than one window of tokens left after filtering")
    shares = np.array(shares) / sum(shares)
    print("sampler: " + ", ".join(f"{n} {p:.1%}" for n, p in zip(names, shares)), flush=True)
    pin = torch.device(device).type == "cuda"
    while True:
        picks = rng.choice(len(names), size=batch_size, p=shares)
        rows = np.stack([next(streams[i]) for i in picks])
        chunk = torch.from_numpy(rows.astype(np.int64))
        if pin:
            chunk = chunk.pin_memory()
        chunk = chunk.to(device, non_blocking=pin)
        yield chunk[:, :-1], chunk[:, 1:]
