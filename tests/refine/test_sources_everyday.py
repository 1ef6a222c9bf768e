"""The sources people point refine at: compressed files, http(s), the Hugging Face hub, and JSON
files that keep their records under a key (``{"train": [...]}``)."""

from __future__ import annotations

import bz2
import functools
import gzip
import http.server
import json
import lzma
import threading

import pandas as pd
import pyarrow as pa
import pytest

from platypus_ray.cli import main
from platypus_ray.core.errors import InputError
from platypus_ray.core.paths import expand_files, open_input
from platypus_ray.refine.config import SOURCE_EXTENSIONS, ColumnMapping
from platypus_ray.refine.sources import SourceFile, _infer_format, parse_source_file

LINES = [
    json.dumps({"instruction": "Name a river.", "output": "The Nile."}),
    "{broken",
    "",
    json.dumps({"instruction": "Name a bird.", "output": "A wren."}),
    json.dumps({"instruction": 3, "output": "x"}),
]
JSONL = ("\n".join(LINES) + "\n").encode()
CSV = b"instruction,input,output\nName a river.,,The Nile.\nragged\nName a bird.,,A wren.\n"


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zst": _zstd}


def _parse(path, fmt=None, field=None):
    fmt = fmt or _infer_format(str(path))
    return parse_source_file(SourceFile("s", str(path), 0, fmt, ColumnMapping().model_dump(), field)).to_pylist()


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
@pytest.mark.parametrize(
    "name,data",
    [
        ("rows.jsonl", JSONL),
        ("rows.csv", CSV),
        ("rows.json", json.dumps([json.loads(LINES[0]), json.loads(LINES[3])]).encode()),
    ],
)
def test_a_compressed_file_reads_as_its_plain_twin_with_the_same_line_numbers(tmp_path, suffix, name, data):
    plain, packed = tmp_path / name, tmp_path / (name + suffix)
    plain.write_bytes(data)
    packed.write_bytes(COMPRESS[suffix](data))
    assert _infer_format(str(packed)) == name.rsplit(".", 1)[1]
    expected = [{k: v for k, v in row.items() if k != "file"} for row in _parse(plain)]
    assert [{k: v for k, v in row.items() if k != "file"} for row in _parse(packed)] == expected
    assert expand_files(str(tmp_path), SOURCE_EXTENSIONS) == sorted([str(plain), str(packed)])
    if name.endswith(".jsonl"):  # the detail names the line a person finds in the uncompressed file
        assert [r["detail"].split(":")[0] for r in expected if not r["valid"]] == ["line 2", "line 5"]


def test_a_stream_broken_midway_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(JSONL * 50)[:-40])
    with pytest.raises(InputError, match="cannot read .*cut.jsonl.gz"):
        _parse(path)


def test_jsonl_is_streamed_in_chunks_not_read_whole(tmp_path):
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress(JSONL * 20_000))  # 2.6 MB plain: more than two 1 MiB chunks
    reads = []
    stream = open_input(str(path))
    original = stream.read
    stream.read = lambda n=-1: reads.append(n) or original(n)
    from platypus_ray.core.readers import read_records

    assert sum(1 for _ in read_records(stream, "jsonl", str(path))) == 4 * 20_000
    assert reads and all(0 < n <= 1 << 20 for n in reads)


def test_field_selects_the_records_under_a_top_level_key(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [json.loads(LINES[0]), json.loads(LINES[3])], "meta": {"v": 1}}))
    rows = _parse(path, field="train")
    assert [r["instruction"] for r in rows] == ["Name a river.", "Name a bird."]
    assert [r["detail"] for r in rows] == ["", ""]
    with pytest.raises(InputError, match=r"lists of records under 'train' \(2 records\); set `field: train`"):
        _parse(path)
    with pytest.raises(InputError, match="has no top-level key 'test'; its keys: 'train', 'meta'"):
        _parse(path, field="test")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over http://127.0.0.1:PORT/ by a real HTTP server, stopped afterwards."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.mark.slow
def test_refine_reads_jsonl_over_http(ray_session, http_folder, tmp_path_factory):
    folder, url = http_folder
    (folder / "rows.jsonl.gz").write_bytes(gzip.compress(JSONL))
    output = tmp_path_factory.mktemp("http") / "out"
    code = main(
        [
            "refine",
            "--set",
            f"sources=[{{path: '{url}/rows.jsonl.gz', name: web}}]",
            "--set",
            f"output={output}",
            "--set",
            "embedding.actors=1",
        ]
    )
    assert code == 0
    ledger = pd.read_parquet(output / "ledger")
    assert len(ledger) == 4 and ledger.file.iloc[0] == f"{url}/rows.jsonl.gz"
    assert sorted(ledger.status) == ["invalid", "invalid", "kept", "kept"]
    assert set(ledger.detail[ledger.status == "invalid"].str.split(":").str[0]) == {"line 2", "line 5"}


@pytest.mark.parametrize(
    "uri,expected",
    [
        ("hf://datasets/tatsu-lab/alpaca/data/train.parquet", "the Hugging Face hub is off here (HF_HUB_OFFLINE=1)"),
        ("http://127.0.0.1:9/rows.jsonl", "check the address and the network"),
    ],
)
@pytest.mark.parametrize("where", ["source", "benchmark"])
def test_an_unreachable_uri_is_one_error_line_before_ray_starts(tmp_path, capsys, monkeypatch, uri, expected, where):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("platypus_ray.refine.stage.init_ray", lambda: pytest.fail("Ray started"))
    local = tmp_path / "rows.jsonl"
    local.write_bytes(JSONL)
    source = uri if where == "source" else str(local)
    bench = (
        f"--set=benchmarks=[{{path: '{uri}', format: questions}}]" if where == "benchmark" else "--set=benchmarks=[]"
    )
    code = main(["refine", "--set", f"sources=[{{path: '{source}'}}]", "--set", f"output={tmp_path / 'out'}", bench])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert (
        err[0].startswith("platypus-ray refine: error: ") and f"cannot reach '{uri}'" in err[0] and expected in err[0]
    )
