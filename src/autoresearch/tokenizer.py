"""Tokenizers for prepared data: raw UTF-8 bytes, or a byte-level BPE trained on the train split.

Both reserve one token, the document separator, that stands for no text, and both say how many
bytes of text every token id stands for (`token_bytes()`): the evaluator divides by those bytes,
so bits per byte compare fairly across tokenizers and vocabulary sizes.

    tok = train_tokenizer(4096, train_texts)    # None or 257: the byte tokenizer
    ids = tok.encode("héllo")                   # uint16 numpy array
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

BYTE_VOCAB = 257                # 256 bytes and the separator
MAX_VOCAB = 65536               # token ids are stored as uint16
SEPARATOR = "<|separator|>"     # the BPE's one special token (id 0); never produced from document text
TRAIN_BYTES = 50_000_000        # the BPE learns its merges from at most this much text (the first documents)
ENCODE_BATCH_CHARS = 2_000_000  # text handed to the Rust encoder at once: bounds the memory of its Encodings


def check_vocab(vocab: int | None) -> str:
    """The tokenizer a vocabulary size asks for: "bytes" (None or 257) or "bpe"; ValueError if no tokenizer fits."""
    if vocab in (None, BYTE_VOCAB):
        return "bytes"
    if vocab < BYTE_VOCAB:
        raise ValueError(f"--vocab {vocab}: a byte-level vocabulary needs at least {BYTE_VOCAB} tokens "
                         f"(256 bytes and the document separator)")
    if vocab > MAX_VOCAB:
        raise ValueError(f"--vocab {vocab}: token ids are stored as uint16, so the vocabulary is at most {MAX_VOCAB}")
    return "bpe"


def train_tokenizer(vocab: int | None, texts: Iterable[str]) -> ByteTokenizer | BPETokenizer:
    """The byte tokenizer for vocab None or 257 (`texts` unread), else a BPE of that size trained on the first
    TRAIN_BYTES of `texts`."""
    return ByteTokenizer() if check_vocab(vocab) == "bytes" else BPETokenizer.train(texts, vocab)


def chunks(texts: list[str], max_chars: int) -> Iterator[list[str]]:
    """Consecutive runs of `texts` holding about max_chars characters each (at least one text per run)."""
    run, size = [], 0
    for text in texts:
        run.append(text)
        size += len(text)
        if size >= max_chars:
            yield run
            run, size = [], 0
    if run:
        yield run


def capped(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """The texts until max_bytes of UTF-8 would be passed (always the first one)."""
    total = 0
    for i, text in enumerate(texts):
        total += len(text.encode("utf-8"))
        if i and total > max_bytes:
            return
        yield text


# -----------------------------------------------------------------------------
# Bytes


class ByteTokenizer:
    """Token ids 0..255 are the UTF-8 bytes of the text; 256 separates documents and stands for no bytes."""

    name = "bytes"
    vocab_size = BYTE_VOCAB
    separator = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(text) for text in texts]

    def decode(self, ids) -> str:
        data = bytes(int(i) for i in ids if int(i) != self.separator)
        return data.decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        """How many bytes of text each token id stands for (0 for the separator)."""
        return [1] * 256 + [0]

    def save(self, path: Path) -> None:
        """Nothing to save: the byte tokenizer is fully described by its name."""


# -----------------------------------------------------------------------------
# Byte-level BPE


def byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> character table in which byte-level BPE vocabularies (GPT-2's) are written.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves;
    the other 68 bytes (controls, space, soft hyphen...) take chr(256), chr(257), ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


UNICODE_TO_BYTE = {char: byte for byte, char in byte_to_unicode().items()}


class BPETokenizer:
    """A byte-level BPE (Hugging Face `tokenizers`): every string round-trips, and id 0 is the separator.

    `vocab_size` is the size asked for; when the training text runs out of merges first, the ids
    above the trained ones are never produced and stand for 0 bytes."""

    name = "bpe"

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer = tokenizer
        self.tokenizer.encode_special_tokens = True     # a literal "<|separator|>" in a document is just text
        self.vocab_size = vocab_size
        self.separator = tokenizer.token_to_id(SEPARATOR)
        self.trained_size = tokenizer.get_vocab_size()
        if self.separator is None or self.trained_size > vocab_size:
            raise ValueError(f"not a byte-level BPE of at most {vocab_size} tokens with {SEPARATOR}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, max_bytes: int = TRAIN_BYTES) -> BPETokenizer:
        """Learn merges from the first max_bytes of `texts` until the vocabulary has vocab_size tokens."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SEPARATOR], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # every byte, seen or not
        tokenizer.train_from_iterator(capped(texts, max_bytes), trainer)
        return cls(tokenizer, vocab_size)

    @classmethod
    def load(cls, path: Path | str, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), vocab_size)

    def save(self, path: Path) -> None:
        self.tokenizer.save(str(path))

    def encode(self, text: str) -> np.ndarray:
        return np.array(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.uint16)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Encode many texts in parallel (Rust threads), a bounded slice of text at a time."""
        out = []
        for run in chunks(texts, ENCODE_BATCH_CHARS):
            encodings = self.tokenizer.encode_batch(run, add_special_tokens=False)
            out += [np.array(encoding.ids, dtype=np.uint16) for encoding in encodings]
        return out

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_bytes(self) -> list[int]:
        """How many bytes of text each token id stands for: the length of its vocabulary string mapped back
        through the byte table (0 for the separator and for ids the training never reached)."""
        counts = [0] * self.vocab_size
        for piece, token_id in self.tokenizer.get_vocab().items():
            if token_id != self.separator:
                counts[token_id] = len(bytes(UNICODE_TO_BYTE[char] for char in piece))
        return counts



def load(data_dir: Path | str) -> ByteTokenizer | BPETokenizer:
    """The tokenizer a prepared data directory was made with (its meta.json, and tokenizer.json for a BPE).

    Training code that makes text of its own (synthetic documents) encodes it with this."""
    import json

    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "meta.json").read_text())
    if meta["tokenizer"] == ByteTokenizer.name:
        return ByteTokenizer()
    return BPETokenizer.load(data_dir / "tokenizer.json", meta["vocab_size"])
