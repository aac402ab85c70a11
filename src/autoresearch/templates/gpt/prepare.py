"""Prepare the data directory for train.py and evaluate.py. Protected: the agent cannot edit it.

    python prepare.py [--data NAME] [--vocab N] [--shards N] [--max-bytes N]

--data: shakespeare, stdlib (no download), or a hub corpus: climbmix, fineweb-edu, tinystories
(default: 1 shard, at most 200M bytes of text; --shards 4 --max-bytes 2G for more).
--vocab: leave out for the byte tokenizer (257 tokens); 512..65536 trains a byte-level BPE on the
train split.

Writes $AUTORESEARCH_DATA (default .autoresearch/data): train/train.bin and train/meta.json for
training, val.bin and test.bin beside them for the evaluator, and meta.json describing it all.
Downloads go to $AUTORESEARCH_CACHE (default ~/.cache/autoresearch). Running it again with the
same arguments does nothing; different arguments rebuild.
"""

import argparse
import os
import sys

from autoresearch import datasets


def size(text: str) -> int:
    """A byte count, optionally with a k, M or G suffix: "200M"."""
    scale = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 200000000 or 200M") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shakespeare", help=f"one of: {', '.join(sorted(datasets.SOURCES))}")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size: 257 is bytes, more trains a BPE")
    parser.add_argument("--shards", type=int, default=None, help="hub corpora: parquet files to download (default 1)")
    parser.add_argument("--max-bytes", type=size, default=None, help="text to read at most, e.g. 200M")
    args = parser.parse_args()
    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data")
    cache_dir = os.environ.get("AUTORESEARCH_CACHE") or os.path.join("~", ".cache", "autoresearch")
    try:
        datasets.prepare(data_dir, source=args.data, vocab=args.vocab, cache_dir=cache_dir,
                         shards=args.shards, max_bytes=args.max_bytes)
    except datasets.DataError as e:
        sys.exit(f"prepare.py: {e}")


if __name__ == "__main__":
    main()
