"""The document cache (lmlab/data/doc_cache.py): the file-backed sources' documents are written once
into a memory-mapped Arrow dataset and opened memory-mapped later -- the same documents, in the same
order, with the same read report as the old whole-file, in-memory path; a damaged entry is rebuilt
naming its path; an edited source file invalidates it; two processes building at once build once."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import datasets
import pytest

from lmlab.data.corpus import split_documents
from lmlab.data.sources import base
from lmlab.data.sources import text as text_source
from lmlab.data.sources.base import DataError, ReadReport, finish, read_text_file
from lmlab.data.sources.text import TextConfig, TextFiles, split_paragraphs

# paragraphs across piece boundaries, CRLF and lone CR endings (one split by a boundary), runs of
# 3-5 newlines, multi-byte characters and invalid bytes (one sequence cut by a boundary), a long
# paragraph spanning many pieces
RAW = (b"First para\r\nstill first.\r\n\r\nSecond \xc3\xa9t\xc3\xa9\n\n\n\nThird\rline\r\r"
       b"bad \xff\xfe bytes\n\n\n" + "caf\u00e9 \u20ac ".encode() * 40 + b"\n\n\xe2\x82 cut\n\n\n\n\nlast")


def old_docs(paths, cfg):
    """The old path: whole files read into memory, split, and turned into an in-memory Dataset."""
    report, texts = ReadReport(), []
    for p in map(Path, paths):
        t = read_text_file(p, cfg.strict_utf8, report)
        if t is not None:
            texts.extend(split_paragraphs(t) if cfg.split == "paragraph" else [t])
    return list(finish(texts, cfg, report, "x")["text"]), report


def write_corpus(d: Path) -> list[Path]:
    (d / "a.txt").write_bytes(RAW)
    (d / "b.txt").write_bytes(b" \n\n ")  # whitespace only: empty, counted
    (d / "c.txt").write_bytes(RAW[::-1].replace(b"\xfe\xff", b"ok"))
    return [d / "a.txt", d / "b.txt", d / "c.txt"]


def load(paths, cache, **kw):
    src = TextFiles(TextConfig(paths=[str(p) for p in paths], **kw))
    return src, src.load(str(cache))


@pytest.mark.parametrize("split", ["paragraph", "file"])
@pytest.mark.parametrize("piece", [3, 7, 1 << 20])
def test_same_documents_and_report_as_the_in_memory_path_and_memory_mapped(tmp_path, monkeypatch, split, piece):
    monkeypatch.setattr(base, "CHUNK_BYTES", piece)
    paths = write_corpus(tmp_path)
    want, want_report = old_docs(paths, TextConfig(paths=list(map(str, paths)), split=split))
    src, ds = load(paths, tmp_path / "cache", split=split)
    assert list(ds["text"]) == want and len(want) > (7 if split == "paragraph" else 1)
    got = src.report
    assert (got.files, got.empty_files, got.replaced_utf8, got.short_docs, got.docs, got.chars) == (
        want_report.files, want_report.empty_files, want_report.replaced_utf8, want_report.short_docs,
        want_report.docs, want_report.chars)
    assert got.replaced_utf8 == 2 and got.empty_files == [str(paths[1])]
    # memory-mapped from the lmlab cache, not an in-memory table
    assert ds.cache_files and all(str(tmp_path / "cache" / "corpora" / "docs") in f["filename"] for f in ds.cache_files)
    assert ds._fingerprint.startswith("text-")

    # a later start opens the entry without reading any source file, with the same report
    def no_read(*a, **k):
        raise AssertionError("a source file was read although the cache entry is intact")

    monkeypatch.setattr(text_source, "read_text_chunks", no_read)
    src2, ds2 = load(paths, tmp_path / "cache", split=split)
    assert list(ds2["text"]) == want and src2.report.lines() == got.lines() and not src2.report.notes
    assert ds2._fingerprint == ds._fingerprint


def test_strict_utf8_names_the_file_offset_across_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "CHUNK_BYTES", 5)
    p = tmp_path / "bad.txt"
    p.write_bytes("caf\u00e9 ok \u20ac\n".encode() * 3 + b"x\xe2\x82y")
    offset = len("caf\u00e9 ok \u20ac\n".encode() * 3) + 1
    with pytest.raises(DataError, match=rf"^{p}: invalid UTF-8 at byte offset {offset} \(data.strict_utf8=true\)$"):
        load([p], tmp_path / "cache", strict_utf8=True)
    with pytest.raises(DataError, match=rf"byte offset {offset} "):
        read_text_file(p, True, ReadReport())  # the whole-file reader agrees
    assert not list((tmp_path / "cache").rglob("manifest-*.json"))  # a failed build leaves no entry


def test_split_is_hf_train_test_split():
    ds = datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(101)]})
    train, val = split_documents(ds, 7, seed=3)
    ref = ds.train_test_split(test_size=7, seed=3, shuffle=True)
    assert list(train["text"]) == list(ref["train"]["text"]) and list(val["text"]) == list(ref["test"]["text"])
    assert train._fingerprint != val._fingerprint
    sub = ds.select([i for i in range(101) if i % 3])  # a dataset that already has an indices mapping
    train, val = split_documents(sub, 5, seed=1)
    ref = sub.train_test_split(test_size=5, seed=1, shuffle=True)
    assert list(train["text"]) == list(ref["train"]["text"]) and list(val["text"]) == list(ref["test"]["text"])


def _entry(cache: Path) -> Path:
    (entry,) = (cache / "corpora" / "docs").iterdir()
    return entry


def _arrow(cache):
    return next(_entry(cache).rglob("*.arrow"))


def _truncate(cache):
    f = _arrow(cache)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f


def _extend(cache):
    f = _arrow(cache)
    with open(f, "ab") as fh:
        fh.write(b"\0" * 64)
    return f


def _drop_manifest(cache):
    m = next(_entry(cache).glob("manifest-*.json"))
    m.unlink()
    return m


def _garble_manifest(cache):
    m = next(_entry(cache).glob("manifest-*.json"))
    m.write_text("{not json")
    return m


@pytest.mark.parametrize("damage", [_truncate, _extend, _drop_manifest, _garble_manifest])
def test_damaged_entry_is_rebuilt_with_one_line_naming_the_path(tmp_path, damage):
    paths = write_corpus(tmp_path)
    _, ds = load(paths, tmp_path / "cache", split="paragraph")
    want = list(ds["text"])
    where = damage(tmp_path / "cache")
    src, again = load(paths, tmp_path / "cache", split="paragraph")
    assert list(again["text"]) == want
    assert len(src.report.notes) == 1 and "\n" not in src.report.notes[0]
    assert str(where) in src.report.notes[0] and "rebuilding it" in src.report.notes[0]
    assert src.report.notes[0] in src.report.lines()
    src, third = load(paths, tmp_path / "cache", split="paragraph")  # the rebuilt entry is intact
    assert not src.report.notes and list(third["text"]) == want


def test_edited_source_file_invalidates_the_entry(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one paragraph\n\ntwo paragraphs\n")
    _, ds = load([p], tmp_path / "cache", split="paragraph")
    assert list(ds["text"]) == ["one paragraph\n", "two paragraphs\n"]
    p.write_text("one paragraph\n\ntwo paragraphs\n\nthree\n")  # size changes
    _, ds = load([p], tmp_path / "cache", split="paragraph")
    assert list(ds["text"]) == ["one paragraph\n", "two paragraphs\n", "three\n"]
    fp = ds._fingerprint
    p.write_text("ONE paragraph\n\ntwo paragraphs\n\nthree\n")  # same size, new mtime
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, ds = load([p], tmp_path / "cache", split="paragraph")
    assert list(ds["text"])[0] == "ONE paragraph\n" and ds._fingerprint != fp
    # the stale versions are gone: one version of the entry, one manifest
    entry = _entry(tmp_path / "cache")
    assert len(list((entry / "generator").iterdir())) == 1 and len(list(entry.glob("manifest-*.json"))) == 1
    # another setting is another entry
    _, by_file = load([p], tmp_path / "cache", split="file")
    assert list(by_file["text"]) == [p.read_text()]


def _load_in_child(paths, cache, out):
    src, ds = load(paths, cache, split="paragraph")
    Path(out).write_text(json.dumps({"texts": list(ds["text"]), "notes": src.report.notes}))


def test_two_processes_building_at_once_build_once(tmp_path, monkeypatch):
    paths = write_corpus(tmp_path)
    builds = tmp_path / "builds"
    builds.mkdir()
    real = text_source.split_paragraphs_stream

    def slow(pieces):  # a build that takes a second, so the second process arrives during it
        (builds / str(os.getpid())).write_text("")
        time.sleep(1.0)
        yield from real(pieces)

    monkeypatch.setattr(text_source, "split_paragraphs_stream", slow)
    ctx = mp.get_context("fork")  # the children inherit the patch
    procs = [ctx.Process(target=_load_in_child, args=(paths, tmp_path / "cache", tmp_path / f"out{i}.json"))
             for i in range(2)]
    procs[0].start()
    deadline = time.time() + 60
    while not any(builds.iterdir()) and time.time() < deadline:
        time.sleep(0.02)
    # the second starts while the first is building: it finds a half-made entry (no manifest yet),
    # which it must neither use nor delete, but wait for
    procs[1].start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    want, _ = old_docs(paths, TextConfig(paths=list(map(str, paths)), split="paragraph"))
    for i in range(2):
        res = json.loads((tmp_path / f"out{i}.json").read_text())
        assert res["texts"] == want and res["notes"] == []
    assert len(list(builds.iterdir())) == 1  # one process built, the other waited and opened it
    monkeypatch.setattr(text_source, "split_paragraphs_stream", real)
    src, ds = load(paths, tmp_path / "cache", split="paragraph")
    assert not src.report.notes and list(ds["text"]) == want


def test_source_error_during_the_build_is_the_sources_one_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "one"}\n{"text": 2}\n')
    with pytest.raises(DataError, match=r"^\S*d.jsonl:2: no string field 'text' \(set data.text_field\)$"):
        load([p], tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("manifest-*.json"))


def test_hf_save_to_disk_dir_splits_memory_mapped_and_is_not_written_to(compose, tmp_path):
    """data=hf on a save_to_disk directory: ``train_test_split(keep_in_memory=True)`` refused a
    memory-mapped dataset (datasets 5.2); the split keeps its index lists in memory instead."""
    from lmlab.data.corpus import load_corpus

    docs = [f"document number {i} " * 5 for i in range(50)]
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "ds"))
    before = sorted(p.name for p in (tmp_path / "ds").iterdir())
    corpus = load_corpus(compose(["data=hf", f"data.path={tmp_path / 'ds'}", f"cache_dir={tmp_path / 'cache'}"]))
    assert sorted(list(corpus.train["text"]) + list(corpus.val["text"])) == sorted(docs) and len(corpus.val) == 2
    assert corpus.train.cache_files and sorted(p.name for p in (tmp_path / "ds").iterdir()) == before
