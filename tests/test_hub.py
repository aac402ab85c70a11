"""hub.py against a fake hub on 127.0.0.1: real parquet files, the tree API, Range requests, and faults on demand."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from autoresearch import hub
from autoresearch.hub import CORPORA, HubDataset, HubError, RemoteFile, download, fetch_corpus, iter_texts, list_files

import pyarrow as pa  # a test dependency: missing, these tests fail
import pyarrow.parquet as pq

DATASET = HubDataset("org/corpus")


@dataclass
class Seen:
    path: str       # raw, as sent (still URL-encoded)
    headers: dict


@dataclass
class FakeHub:
    """Serves the files under `root` as the repo org/corpus (any revision). `faults` is consumed one per
    request: 503 or 429 (answer that status), "cut" (send half the body, then close), "wrong" (same size,
    wrong bytes), "ignore-range" (answer 200 with the whole file), "redirect" (send the client to the same
    URL on host `localhost`)."""

    root: Path
    endpoint: str = ""
    faults: list = field(default_factory=list)
    page_size: int = 1000           # tree entries per page
    delay: float = 0.0              # seconds each download takes to start
    lie_size: dict = field(default_factory=dict)   # path -> size the listing claims
    seen: list = field(default_factory=list)
    active: int = 0
    most_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, data: bytes) -> bytes:
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_bytes(data)
        return data

    def downloads(self) -> list[Seen]:
        return [s for s in self.seen if "/resolve/" in s.path]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        fake: FakeHub = self.server.fake
        with fake.lock:
            fake.seen.append(Seen(self.path, dict(self.headers)))
            fault = fake.faults.pop(0) if fake.faults else None
        if fault in (503, 429):
            return self.send_error(fault)
        if fault == "redirect":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_port}{self.path}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        if segments[:4] == ["api", "datasets", "org", "corpus"] and segments[4] == "tree":
            return self.tree("/".join(segments[6:]), int(parse_qs(url.query).get("cursor", ["0"])[0]))
        if segments[:4] == ["datasets", "org", "corpus", "resolve"]:
            return self.resolve(fake.root / "/".join(segments[5:]), fault)
        self.send_error(404)

    def tree(self, folder: str, cursor: int):
        fake: FakeHub = self.server.fake
        entries = []
        for path in sorted((fake.root / folder).iterdir(), reverse=True):   # not sorted the way list_files sorts
            name = path.relative_to(fake.root).as_posix()
            if path.is_dir():
                entries.append({"type": "directory", "path": name})
            elif path.suffix == ".parquet":
                data = path.read_bytes()
                size = fake.lie_size.get(name, len(data))
                entries.append({"type": "file", "path": name, "size": size,
                                "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": size}})
            else:
                entries.append({"type": "file", "path": name, "size": path.stat().st_size})
        page = entries[cursor:cursor + fake.page_size]
        self.send_response(200)
        if cursor + fake.page_size < len(entries):
            self.send_header("Link", f'<{fake.endpoint}{self.path.split("?")[0]}?cursor={cursor + fake.page_size}>; '
                                     'rel="next"')
        self.send_body(json.dumps(page).encode())

    def resolve(self, path: Path, fault):
        fake: FakeHub = self.server.fake
        with fake.lock:
            fake.active += 1
            fake.most_active = max(fake.most_active, fake.active)
        time.sleep(fake.delay)
        with fake.lock:
            fake.active -= 1
        data = path.read_bytes()
        if fault == "wrong":
            data = bytes(255 - b for b in data)
        ranged = "Range" in self.headers and fault != "ignore-range"
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if ranged else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        if fault == "cut":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
            return
        self.send_body(body)

    def send_body(self, body: bytes):
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(autouse=True)
def quick_and_clean(monkeypatch):
    monkeypatch.setattr(hub, "BACKOFF", 0.01)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture
def fake(tmp_path):
    fake = FakeHub(tmp_path / "remote")
    fake.root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.fake = fake
    fake.endpoint = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def parquet(texts: list, row_group_size: int = 2) -> bytes:
    """A real parquet file (several row groups) with a text column and another one."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), sink, row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def shards(fake: FakeHub, count: int, folder: str = "") -> dict[str, bytes]:
    prefix = f"{folder}/" if folder else ""
    return {f"{prefix}shard_{i:05d}.parquet": fake.add(f"{prefix}shard_{i:05d}.parquet",
                                                       parquet([f"document {i}.{j} " * 50 for j in range(5)]))
            for i in range(count)}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -----------------------------------------------------------------------------
# Listing


def test_list_files_keeps_matching_files_sorted_with_their_sha256(fake):
    data = shards(fake, 3)
    fake.add("README.md", b"# corpus\n")
    fake.add("sub/shard_99999.parquet", b"not at the root")
    files = list_files(DATASET, fake.endpoint)
    assert files == [RemoteFile(path, len(body), hashlib.sha256(body).hexdigest()) for path, body in data.items()]


def test_list_files_follows_the_next_link_over_pages(fake):
    shards(fake, 3)
    fake.page_size = 2
    assert [f.path for f in list_files(DATASET, fake.endpoint)] == [f"shard_{i:05d}.parquet" for i in range(3)]
    assert len(fake.seen) == 2


def test_list_files_looks_in_the_subdir(fake):
    shards(fake, 1)
    data = shards(fake, 2, folder="sample/10BT")
    files = list_files(HubDataset("org/corpus", subdir="sample/10BT"), fake.endpoint)
    assert [f.path for f in files] == list(data)


def test_revision_with_slashes_is_url_encoded(fake, tmp_path):
    shards(fake, 1, folder="default/train")
    dataset = HubDataset("org/corpus", revision=CORPORA["tinystories"].revision, subdir="default/train")
    download(dataset, list_files(dataset, fake.endpoint), tmp_path / "out", endpoint=fake.endpoint, progress=False)
    assert [s.path for s in fake.seen] == [
        "/api/datasets/org/corpus/tree/refs%2Fconvert%2Fparquet/default/train",
        "/datasets/org/corpus/resolve/refs%2Fconvert%2Fparquet/default/train/shard_00000.parquet"]


def test_hf_endpoint_variable_picks_the_server(fake, monkeypatch):
    shards(fake, 1)
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint + "/")
    assert len(list_files(DATASET)) == 1


def test_hf_token_is_sent_as_a_bearer_header(fake, monkeypatch, tmp_path):
    shards(fake, 1)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    download(DATASET, list_files(DATASET, fake.endpoint), tmp_path / "out", endpoint=fake.endpoint, progress=False)
    assert [s.headers.get("Authorization") for s in fake.seen] == ["Bearer hf_secret"] * 2


def test_token_is_not_sent_on_to_another_host(fake, monkeypatch, tmp_path):
    shards(fake, 1)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    files = list_files(DATASET, fake.endpoint)
    fake.faults = ["redirect"]
    [path] = download(DATASET, files, tmp_path / "out", endpoint=fake.endpoint, progress=False)
    first, second = fake.downloads()
    assert first.headers["Authorization"] == "Bearer hf_secret" and "Authorization" not in second.headers
    assert second.headers["Host"].startswith("localhost:") and path.stat().st_size == files[0].size


def test_missing_repo_is_an_error_at_once_with_a_hint(fake):
    with pytest.raises(HubError, match=r"HTTP 404.*HF_TOKEN"):
        list_files(HubDataset("org/nothing"), fake.endpoint)
    assert len(fake.seen) == 1


# -----------------------------------------------------------------------------
# Downloading


def test_download_fetches_shards_in_parallel_with_the_right_content(fake, tmp_path):
    data = shards(fake, 4)
    fake.delay = 0.2
    paths = download(DATASET, list_files(DATASET, fake.endpoint), tmp_path / "out", workers=4,
                     endpoint=fake.endpoint, progress=False)
    assert [p.read_bytes() for p in paths] == list(data.values())
    assert fake.most_active > 1
    assert list((tmp_path / "out").glob("*.part")) == []


def test_cut_off_download_resumes_with_a_range_request(fake, tmp_path):
    data = shards(fake, 1)["shard_00000.parquet"]
    files = list_files(DATASET, fake.endpoint)
    fake.faults = ["cut"]
    [path] = download(DATASET, files, tmp_path / "out", endpoint=fake.endpoint, progress=False)
    first, second = fake.downloads()
    assert "Range" not in first.headers and second.headers["Range"] == f"bytes={len(data) // 2}-"
    assert path.read_bytes() == data and not path.with_name(path.name + ".part").exists()


def test_a_server_that_ignores_range_makes_the_file_start_over(fake, tmp_path):
    data = shards(fake, 1)["shard_00000.parquet"]
    files = list_files(DATASET, fake.endpoint)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "shard_00000.parquet.part").write_bytes(b"junk")
    fake.faults = ["ignore-range"]
    [path] = download(DATASET, files, tmp_path / "out", endpoint=fake.endpoint, progress=False)
    assert fake.downloads()[0].headers["Range"] == "bytes=4-" and path.read_bytes() == data


def test_503_and_429_are_retried(fake, tmp_path):
    data = shards(fake, 1)["shard_00000.parquet"]
    files = list_files(DATASET, fake.endpoint)
    fake.faults = [503, 429]
    [path] = download(DATASET, files, tmp_path / "out", endpoint=fake.endpoint, progress=False)
    assert path.read_bytes() == data and len(fake.downloads()) == 3


def test_a_hub_that_keeps_failing_gives_up_with_a_clear_error(fake):
    fake.faults = [503] * hub.TRIES
    with pytest.raises(HubError, match=rf"HTTP 503 .* after {hub.TRIES} tries.*try again later"):
        list_files(DATASET, fake.endpoint)


def test_checksum_mismatch_deletes_the_download_and_names_the_file(fake, tmp_path):
    shards(fake, 1)
    [file] = list_files(DATASET, fake.endpoint)
    fake.faults = ["wrong"]
    with pytest.raises(HubError) as error:
        download(DATASET, [file], tmp_path / "out", endpoint=fake.endpoint, progress=False)
    message = str(error.value)
    actual = hashlib.sha256(bytes(255 - b for b in (fake.root / file.path).read_bytes())).hexdigest()
    assert file.path in message and "sha256 mismatch" in message and file.sha256 in message and actual in message
    assert list((tmp_path / "out").iterdir()) == []


def test_size_mismatch_deletes_the_download_and_names_the_file(fake, tmp_path):
    data = shards(fake, 1)["shard_00000.parquet"]
    fake.lie_size["shard_00000.parquet"] = len(data) + 10
    with pytest.raises(HubError, match=rf"shard_00000.parquet: size mismatch, expected {len(data) + 10} bytes"):
        download(DATASET, list_files(DATASET, fake.endpoint), tmp_path / "out", endpoint=fake.endpoint,
                 progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_complete_files_are_not_downloaded_again(fake, tmp_path):
    shards(fake, 3)
    files = list_files(DATASET, fake.endpoint)
    first = download(DATASET, files, tmp_path / "out", endpoint=fake.endpoint, progress=False)
    second = download(DATASET, files, tmp_path / "out", endpoint=fake.endpoint, progress=False)
    assert first == second and len(fake.downloads()) == 3
    assert all(p.with_name(p.name + ".sha256").read_text().strip() == f.sha256 for p, f in zip(first, files))


def test_a_complete_file_without_stamp_is_checked_once_and_a_corrupt_one_replaced(fake, tmp_path):
    data = shards(fake, 2)
    files = list_files(DATASET, fake.endpoint)
    out = tmp_path / "out"
    out.mkdir()
    (out / files[0].path).write_bytes(data[files[0].path])                          # copied in by hand
    (out / files[1].path).write_bytes(bytes(255 - b for b in data[files[1].path]))  # right size, wrong bytes
    paths = download(DATASET, files, out, endpoint=fake.endpoint, progress=False)
    assert [p.read_bytes() for p in paths] == list(data.values())
    assert [s.path.rsplit("/", 1)[1] for s in fake.downloads()] == [files[1].path]
    assert (out / (files[0].path + ".sha256")).exists()


def test_unreachable_hub_says_what_to_do(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(HubError) as error:
        list_files(DATASET, endpoint)
    message = str(error.value)
    assert f"could not reach {endpoint}/api/datasets/org/corpus/tree/main" in message
    assert "network access" in message and "--data shakespeare" in message and "--data stdlib" in message
    assert error.value.__suppress_context__


# -----------------------------------------------------------------------------
# Reading and the whole fetch


def test_iter_texts_yields_the_documents_of_every_row_group_and_file(tmp_path):
    (tmp_path / "a.parquet").write_bytes(parquet(["one", "two", None, "three"]))
    (tmp_path / "b.parquet").write_bytes(parquet(["four", ""]))
    assert list(iter_texts([tmp_path / "a.parquet", tmp_path / "b.parquet"])) == ["one", "two", "three", "four"]


def test_iter_texts_stops_before_max_bytes(tmp_path):
    (tmp_path / "a.parquet").write_bytes(parquet(["aaaa", "ééé", "cccc", "dddd"]))   # 4, 6, 4, 4 bytes
    assert list(iter_texts([tmp_path / "a.parquet"], max_bytes=13)) == ["aaaa", "ééé"]


def test_iter_texts_names_a_missing_column(tmp_path):
    (tmp_path / "a.parquet").write_bytes(parquet(["one"]))
    with pytest.raises(HubError, match="no column 'content'; it has id, text"):
        list(iter_texts([tmp_path / "a.parquet"], column="content"))


def test_iter_texts_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(HubError, match=r"needs pyarrow: pip install 'autoresearch\[hub\]'"):
        next(iter_texts([tmp_path / "a.parquet"]))


def test_fetch_corpus_caches_shards_and_then_needs_no_network(fake, tmp_path):
    data = shards(fake, 3)
    paths = fetch_corpus(DATASET, tmp_path / "cache", shards=2, endpoint=fake.endpoint, progress=False)
    assert paths == [tmp_path / "cache/hub/org--corpus/main" / name for name in list(data)[:2]]
    offline = f"http://127.0.0.1:{closed_port()}"
    assert fetch_corpus(DATASET, tmp_path / "cache", shards=2, endpoint=offline, progress=False) == paths
    with pytest.raises(HubError, match="could not reach"):
        fetch_corpus(DATASET, tmp_path / "cache", shards=3, endpoint=offline, progress=False)


def test_fetch_corpus_knows_its_corpora_by_name(tmp_path):
    with pytest.raises(HubError, match="unknown hub corpus 'nope'; known: climbmix, fineweb-edu, tinystories"):
        fetch_corpus("nope", tmp_path, shards=1)
