"""Prepare the data directory for train.py and evaluate.py. Protected: the agent cannot edit it.

    python prepare.py [--data shakespeare|stdlib] [--vocab N]

Writes $AUTORESEARCH_DATA (default .autoresearch/data): train/train.bin and train/meta.json for
training, val.bin and test.bin beside them for the evaluator, and meta.json describing it all.
Downloads go to $AUTORESEARCH_CACHE (default ~/.cache/autoresearch). Running it again with the
same arguments does nothing; different arguments rebuild.
"""

import argparse
import os
import sys

from autoresearch import datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shakespeare", help=f"one of: {', '.join(sorted(datasets.SOURCES))}")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size (the byte tokenizer has 257)")
    args = parser.parse_args()
    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data")
    cache_dir = os.environ.get("AUTORESEARCH_CACHE") or os.path.join("~", ".cache", "autoresearch")
    try:
        datasets.prepare(data_dir, source=args.data, vocab=args.vocab, cache_dir=cache_dir)
    except datasets.DataError as e:
        sys.exit(f"prepare.py: {e}")


if __name__ == "__main__":
    main()
