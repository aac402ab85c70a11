"""Pretraining corpora from the Hugging Face hub: list a dataset's parquet shards, download them, read their text.

Downloads run in parallel, continue a `.part` file with a Range request after an interruption, retry
with backoff on connection errors, 5xx and 429, and check the size and sha256 that the hub lists
before the file gets its final name. HTTP is the standard library's urllib; reading parquet needs
pyarrow (`pip install 'autoresearch[hub]'`). `HF_ENDPOINT` and `HF_TOKEN` work as in huggingface_hub.

    paths = fetch_corpus("climbmix", Path("cache"), shards=2)
    for text in iter_texts(paths, max_bytes=100_000_000): ...
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Optional

DEFAULT_ENDPOINT = "https://huggingface.co"  # used when neither `endpoint` nor HF_ENDPOINT is given
TRIES = 4                       # attempts per request before giving up
BACKOFF = 1.0                   # seconds before the first retry, doubled for each one after
TIMEOUT = 60                    # seconds a connection may stay silent
CHUNK = 1 << 20                 # bytes read and written at a time

OFFLINE_HINT = ("autoresearch needs network access for this data source (or a cache already filled by an "
                "earlier run); without it, try --data shakespeare or --data stdlib.")


class HubError(Exception):
    """A hub problem with a message meant for the user (unreachable, refused, corrupt download)."""


@dataclass(frozen=True)
class HubDataset:
    """A dataset repository on the hub and where in it the parquet shards are."""

    repo: str                   # "owner/name"
    pattern: str = "*.parquet"  # glob on the file name
    column: str = "text"        # the column that holds the documents
    revision: str = "main"      # branch, tag or ref; may contain slashes
    subdir: str = ""            # folder of the shards inside the repo ("" is the root)


@dataclass(frozen=True)
class RemoteFile:
    path: str                   # path inside the repo
    size: int                   # bytes
    sha256: Optional[str] = None  # known for LFS files


CORPORA = {
    "climbmix": HubDataset("karpathy/climbmix-400b-shuffle"),
    "fineweb-edu": HubDataset("HuggingFaceFW/fineweb-edu", subdir="sample/10BT"),
    # TinyStories ships .txt files; the hub's parquet conversion lives on a ref of its own.
    "tinystories": HubDataset("roneneldan/TinyStories", revision="refs/convert/parquet", subdir="default/train"),
}


# -----------------------------------------------------------------------------
# HTTP: the only place this module talks to the network


class _Redirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never send the token to another host (the hub redirects downloads to a CDN)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_Redirect)
_TRANSIENT = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def _endpoint(endpoint: Optional[str]) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _open(url: str, headers: Optional[dict] = None):
    headers = dict(headers or {})
    if os.environ.get("HF_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
    return _OPENER.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)


def _retrying(url: str, action: Callable):
    """Run `action()`, trying again after transient failures; anything else becomes a HubError at once."""
    for attempt in range(TRIES):
        if attempt:
            time.sleep(BACKOFF * 2 ** (attempt - 1))
        try:
            return action()
        except urllib.error.HTTPError as error:
            error.close()
            if error.code != 429 and error.code < 500:
                hint = "; set HF_TOKEN if the dataset is gated or private" if error.code in (401, 403, 404) else ""
                raise HubError(f"{url}: HTTP {error.code} {error.reason}{hint}") from None
            last = error
        except _TRANSIENT as error:
            last = error
    if isinstance(last, urllib.error.HTTPError):
        raise HubError(f"{url}: HTTP {last.code} {last.reason} after {TRIES} tries; "
                       "the hub is busy or down, try again later") from None
    raise HubError(f"could not reach {url} ({getattr(last, 'reason', None) or last}).\n{OFFLINE_HINT}") from None


# -----------------------------------------------------------------------------
# Listing


def _quote(text: str, safe: str = "/") -> str:
    return urllib.parse.quote(text, safe=safe)


def list_files(dataset: HubDataset, endpoint: Optional[str] = None) -> list[RemoteFile]:
    """The files in the dataset's folder whose name matches its pattern, sorted by path."""
    url = f"{_endpoint(endpoint)}/api/datasets/{dataset.repo}/tree/{_quote(dataset.revision, safe='')}"
    if dataset.subdir.strip("/"):
        url += "/" + _quote(dataset.subdir.strip("/"))
    files = []
    while url:
        entries, url = _retrying(url, lambda url=url: _tree_page(url))
        for entry in entries:
            if entry.get("type") == "file" and fnmatch(PurePosixPath(entry["path"]).name, dataset.pattern):
                lfs = entry.get("lfs") or {}
                files.append(RemoteFile(entry["path"], int(entry["size"]), lfs.get("oid")))
    return sorted(files, key=lambda file: file.path)


def _tree_page(url: str) -> tuple[list[dict], Optional[str]]:
    """One page of the tree API, and the URL of the next page from the `Link` header (None on the last)."""
    with _open(url) as response:
        entries = json.load(response)
        next_page = re.search(r'<([^>]+)>\s*;\s*rel="next"', response.headers.get("Link", ""))
    return entries, urllib.parse.urljoin(url, next_page.group(1)) if next_page else None


# -----------------------------------------------------------------------------
# Downloading


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(dataset: HubDataset, files: Iterable[RemoteFile], dest_dir: Path | str, *, workers: int = 4,
             endpoint: Optional[str] = None, progress: bool = True) -> list[Path]:
    """Download `files` of `dataset` into `dest_dir` (by file name), skipping the complete ones; their local paths."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    files, dest_dir = list(files), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    base = f"{_endpoint(endpoint)}/datasets/{dataset.repo}/resolve/{_quote(dataset.revision, safe='')}/"
    console = Console(stderr=True)
    bar = Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                   console=console, disable=not (progress and console.is_terminal))
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task(f"{dataset.repo} ({len(files)} files)", total=sum(file.size for file in files))
        stop = threading.Event()    # set on the first failure or Ctrl-C: the other downloads end within a chunk

        def advance(n: int) -> None:
            if stop.is_set():
                raise HubError("download stopped")
            bar.advance(task, n)

        futures = [pool.submit(_download_one, base + _quote(file.path), file,
                               dest_dir / PurePosixPath(file.path).name, advance) for file in files]
        try:
            return [future.result() for future in futures]
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise


def _download_one(url: str, file: RemoteFile, target: Path, advance: Callable[[int], None]) -> Path:
    stamp = target.with_name(target.name + ".sha256")
    if target.exists() and target.stat().st_size == file.size and not _complete(target, file):
        if sha256_of(target) == file.sha256:    # checked once; from now on the stamp says so
            stamp.write_text(file.sha256 + "\n")
    if _complete(target, file):
        advance(file.size)
        return target
    target.unlink(missing_ok=True)
    stamp.unlink(missing_ok=True)

    part = target.with_name(target.name + ".part")
    if part.exists() and part.stat().st_size > file.size:
        part.unlink()
    advance(part.stat().st_size if part.exists() else 0)
    if not part.exists() or part.stat().st_size < file.size:
        _retrying(url, lambda: _fetch(url, part, file, advance))

    size = part.stat().st_size
    if size != file.size:
        part.unlink()
        raise HubError(f"{file.path}: size mismatch, expected {file.size} bytes, got {size}; "
                       "the download was deleted")
    if file.sha256:
        actual = sha256_of(part)
        if actual != file.sha256:
            part.unlink()
            raise HubError(f"{file.path}: sha256 mismatch, expected {file.sha256}, got {actual}; "
                           "the download was deleted")
    os.replace(part, target)
    if file.sha256:
        stamp.write_text(file.sha256 + "\n")
    return target


def _fetch(url: str, part: Path, file: RemoteFile, advance: Callable[[int], None]) -> None:
    """One attempt to bring `part` up to the file's size, continuing from what it holds when the server can."""
    have = part.stat().st_size if part.exists() else 0
    with _open(url, {"Range": f"bytes={have}-"} if have else {}) as response:
        resumed = response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            part.unlink()
            raise ConnectionError(f"the server answered a different range: {response.headers.get('Content-Range')}")
        if not resumed:             # the server sends the whole file: start over
            advance(-have)
            have = 0
        length = response.headers.get("Content-Length")
        if length is not None and have + int(length) != file.size:
            part.unlink(missing_ok=True)
            raise HubError(f"{file.path}: size mismatch, expected {file.size} bytes, "
                           f"the server has {have + int(length)}")
        with open(part, "ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                advance(len(chunk))
    got = part.stat().st_size
    if got < file.size:
        raise ConnectionError(f"connection closed after {got} of {file.size} bytes")


# -----------------------------------------------------------------------------
# Reading and the whole fetch


def iter_texts(paths: Iterable[Path | str], column: str = "text", max_bytes: Optional[int] = None) -> Iterator[str]:
    """The documents in `column` of parquet files, a batch at a time; stops before max_bytes of UTF-8 is passed."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise HubError("reading hub corpora needs pyarrow: pip install 'autoresearch[hub]'") from None
    total = 0
    for path in paths:
        with pq.ParquetFile(path) as parquet:
            if column not in parquet.schema_arrow.names:
                raise HubError(f"{path}: no column {column!r}; it has {', '.join(parquet.schema_arrow.names)}")
            for batch in parquet.iter_batches(columns=[column]):
                for text in batch.column(0).to_pylist():
                    if not text:
                        continue
                    total += len(text.encode("utf-8"))
                    if max_bytes is not None and total > max_bytes:
                        return
                    yield text


def fetch_corpus(name_or_dataset: str | HubDataset, cache_dir: Path | str, *, shards: int, workers: int = 4,
                 endpoint: Optional[str] = None, progress: bool = True) -> list[Path]:
    """The first `shards` files of a corpus, downloaded into `cache_dir/hub/<owner>--<name>/<revision>/<subdir>/`.

    The listing is kept there too, so a later call that finds its shards complete needs no network."""
    if isinstance(name_or_dataset, HubDataset):
        dataset = name_or_dataset
    elif name_or_dataset in CORPORA:
        dataset = CORPORA[name_or_dataset]
    else:
        raise HubError(f"unknown hub corpus {name_or_dataset!r}; known: {', '.join(sorted(CORPORA))}")
    dest = Path(cache_dir, "hub", dataset.repo.replace("/", "--"), _quote(dataset.revision, safe=""), dataset.subdir)
    listing = dest / "files.json"
    local = lambda file: dest / PurePosixPath(file.path).name  # noqa: E731

    if listing.exists():
        saved = json.loads(listing.read_text())
        files = [RemoteFile(**entry) for entry in saved["files"]][:shards]
        if saved["pattern"] == dataset.pattern and len(files) == shards and all(_complete(local(f), f) for f in files):
            return [local(file) for file in files]
    everything = list_files(dataset, endpoint)
    if len(everything) < shards:
        raise HubError(f"{dataset.repo} has {len(everything)} files matching {dataset.pattern!r} "
                       f"in {dataset.subdir or 'its root'}, asked for {shards}")
    dest.mkdir(parents=True, exist_ok=True)
    listing.write_text(json.dumps({"pattern": dataset.pattern, "files": [asdict(file) for file in everything]}))
    return download(dataset, everything[:shards], dest, workers=workers, endpoint=endpoint, progress=progress)


def _complete(path: Path, file: RemoteFile) -> bool:
    """Downloaded and checked: the right size, and a sha256 stamp when the hash is known."""
    stamp = path.with_name(path.name + ".sha256")
    return (path.exists() and path.stat().st_size == file.size
            and (not file.sha256 or (stamp.exists() and stamp.read_text().strip() == file.sha256)))
