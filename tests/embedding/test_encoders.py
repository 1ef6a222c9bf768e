"""Embedding backends on real runtimes (ONNX Runtime, OpenVINO, model2vec), exported once per module.

Each backend: unit vectors, agreement with torch fp32 on planted duplicates, and the
decisions refine makes from them. Plus the calibration behind ``auto``, a corrupt and a
partial export, and the fp16/bf16 code path of the torch backend (run on CPU here).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from platypus_ray.core.errors import UserError
from platypus_ray.embedding.calibrate import Agreement, calibrate, choose, compare, recorded_choice, spread
from platypus_ray.embedding.encoders import EncoderSpec, load_encoder, token_batches
from platypus_ray.embedding.export import ensure_export, model_folder
from platypus_ray.embedding.manifest import MANIFEST, verify_export
from tests.refine.test_refine_e2e import make_config, write_corpus
from tests.refine.test_refine_e2e import test_every_planted_row_lands_where_expected as check_planted_rows

# Two planted paraphrase pairs (cosine ~0.9+ under MiniLM) among unrelated texts.
TEXTS = [
    "What is the capital city of Australia?",
    "Which city is the capital of Australia?",
    "Write a haiku about autumn leaves.",
    "How do I bake sourdough bread at home?",
    "Give me a recipe for baking sourdough bread at home.",
    "Explain photosynthesis to a child.",
    "List three prime numbers greater than ten.",
    "Translate 'good morning' into French.",
]
PLANTED = [(0, 1), (3, 4)]
WORDS = sorted({w.strip("?.,'").lower() for t in TEXTS for w in t.split()} | {"capital", "bread"})


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """ONNX fp32 and int8 exported once; a static model distilled over a 40-word vocabulary (the
    full 30k-token distillation takes a minute)."""
    from platypus_ray.embedding.distill import DistillConfig, run

    root = tmp_path_factory.mktemp("exports")
    for kind in ("onnx", "onnx-int8"):
        ensure_export("all-MiniLM-L6-v2", kind, root)
    keep = "|".join(WORDS + [r"\[UNK\]", r"\[PAD\]", r"\[CLS\]", r"\[SEP\]"])
    run(DistillConfig(out=str(root / "static-tiny"), token_remove_pattern=rf"^(?!(?:{keep})$).*", pca_dims=None))
    return root


def _spec(export_dir, backend, **kw) -> EncoderSpec:
    return EncoderSpec(
        "all-MiniLM-L6-v2",
        backend,
        batch_size=3,
        threads=1,
        export_dir=str(export_dir),
        static_model=str(export_dir / "static-tiny"),
        **kw,
    )


@pytest.fixture(scope="module")
def torch_vectors(export_dir):
    return load_encoder(_spec(export_dir, "torch")).encode(TEXTS)


@pytest.mark.parametrize(
    "backend, max_diff", [("onnx", 1e-5), ("openvino", 1e-5), ("onnx-int8", 0.1), ("static", None)]
)
def test_backend_gives_unit_vectors_and_finds_the_planted_duplicates(export_dir, torch_vectors, backend, max_diff):
    encoder = load_encoder(_spec(export_dir, backend))
    vectors = encoder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape[0] == len(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    for i, j in PLANTED:  # each planted pair is the other's nearest neighbour
        assert np.argmax(np.where(np.eye(len(TEXTS), dtype=bool), -1, sims)[i]) == j
    diff, kept_differs, flags_differ = compare(torch_vectors, vectors, 0.8, 0.8)
    if max_diff is not None:  # same vector space: cosines within tolerance, same decisions here
        assert diff < max_diff and kept_differs == 0 and flags_differ == 0, (diff, kept_differs, flags_differ)
    assert backend.split("-")[0] in encoder.version or "model2vec" in encoder.version


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_order_and_batching_do_not_change_vectors(export_dir, backend):
    """Length sorting and passes of at most batch_tokens are internal: each row's vector is the one it gets alone."""
    encoder = load_encoder(_spec(export_dir, backend, batch_tokens=24))  # ~2 of these rows a pass
    together = encoder.encode(TEXTS)
    alone = np.stack([encoder.encode([t])[0] for t in TEXTS[:3]])
    np.testing.assert_allclose(together[:3], alone, atol=1e-5)


def test_int8_export_keeps_the_feed_forward_output_projections_in_fp32(export_dir):
    import onnx

    from platypus_ray.embedding.export import kind_folder

    graph = onnx.load(str(model_folder(export_dir, "all-MiniLM-L6-v2") / kind_folder("onnx-int8") / "model.onnx")).graph
    float_matmuls = {n.name for n in graph.node if n.op_type == "MatMul" and "/dense/" in n.name}
    assert float_matmuls == {f"/st/st.0/encoder/layer.{i}/output/dense/MatMul" for i in range(6)}
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) == 6 * 5  # q, k, v, attention out, ffn in


def test_token_batches_cover_every_row_once_longest_first_within_budget():
    lengths = np.array([5, 40, 3, 40, 12, 1, 300])
    passes = token_batches(lengths, max_tokens=64, max_rows=3)
    # 300 alone (over the budget, still a pass of its own), 40 (64 // 40 = 1 row), 40, then 3 rows
    # of 12 (36 tokens; the row cap stops it), then the last row.
    assert [lengths[rows].tolist() for rows in passes] == [[300], [40], [40], [12, 5, 3], [1]]
    assert sorted(np.concatenate(passes).tolist()) == list(range(len(lengths)))


def test_calibration_picks_an_identical_backend_and_is_recorded(export_dir, tmp_path):
    base = _spec(export_dir, "torch")
    results = calibrate(TEXTS, base, 0.8, 0.8, ("torch", "onnx", "onnx-int8"))
    assert [r.name for r in results] == ["torch", "onnx", "onnx-int8"] and results[0].ratio_vs_torch == 1.0
    assert results[1].identical and results[1].max_abs_cos_diff < 1e-5
    assert choose(results).name in {"torch", "onnx"} or choose(results).identical

    record = recorded_choice(
        spread(TEXTS), len(TEXTS), base, 0.8, 0.8, wanted_rows=4, backends=("torch", "onnx"), record_dir=tmp_path
    )
    assert record["reused"] is False and record["rows"] == 4 and record["chosen"] in {"torch", "onnx"}
    again = recorded_choice(
        spread(TEXTS), len(TEXTS), base, 0.8, 0.8, wanted_rows=4, backends=("torch", "onnx"), record_dir=tmp_path
    )
    assert again["reused"] is True and again["measured"] == record["measured"]
    # a small run never pays for a calibration: no record, no measurement
    assert (
        recorded_choice(
            spread(TEXTS),
            len(TEXTS),
            base,
            0.8,
            0.8,
            wanted_rows=100,
            backends=("torch", "openvino"),
            record_dir=tmp_path,
            measure_small=False,
        )
        is None
    )


def test_choose_prefers_the_fastest_identical_backend_never_an_approximate_one():
    row = {"version": "v", "rows": 8, "max_abs_cos_diff": 0.0, "flags_differ": 0}
    results = [
        Agreement("torch", rows_per_s=100, ratio_vs_torch=1.0, kept_differs=0, **row),
        Agreement("onnx", rows_per_s=140, ratio_vs_torch=1.4, kept_differs=0, **row),
        Agreement("openvino", rows_per_s=300, ratio_vs_torch=3.0, kept_differs=1, **row),
    ]
    assert choose(results).name == "onnx"


def test_corrupt_and_partial_exports_fail_with_the_folder_to_delete(export_dir, tmp_path):
    good = model_folder(export_dir, "all-MiniLM-L6-v2") / "onnx"
    broken = tmp_path / "onnx"
    shutil.copytree(good, broken)
    with open(broken / "model.onnx", "r+b") as handle:  # truncated copy
        handle.truncate(1000)
    with pytest.raises(UserError, match=r"does not match the checksum .* delete .*onnx and run again"):
        verify_export(broken)
    (broken / MANIFEST).unlink()
    with pytest.raises(UserError, match=r"is a partial export \(no export.json\)"):
        verify_export(broken)
    # a corrupt file whose manifest was rewritten to match still cannot load: ONNX Runtime's error, same fix
    info = json.loads((good / MANIFEST).read_text())
    from platypus_ray.core.checksum import sha256 as _sha256

    (broken / MANIFEST).write_text(json.dumps(info | {"sha256": _sha256(broken / "model.onnx")}))
    root = tmp_path / "root"
    shutil.copytree(broken, model_folder(root, "all-MiniLM-L6-v2") / "onnx")
    with pytest.raises(UserError, match="ONNX Runtime cannot load .* delete .* to re-export it"):
        load_encoder(EncoderSpec("all-MiniLM-L6-v2", "onnx", export_dir=str(root)))


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_torch_half_precision_path_runs_and_stays_close(export_dir, torch_vectors, precision):
    """The CUDA fp16/bf16 code path, exercised on CPU (slow there, and not what CUDA computes bit for bit)."""
    vectors = load_encoder(_spec(export_dir, "torch", precision=precision)).encode(TEXTS)
    assert vectors.dtype == np.float32
    assert np.abs(vectors @ vectors.T - torch_vectors @ torch_vectors.T).max() < 0.05


def test_distill_embedder_command_names_the_key_on_a_bad_model(tmp_path, capsys):
    from platypus_ray.cli import main

    assert main(["distill-embedder", "--model", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("platypus-ray distill-embedder: error: model: ")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.slow
def test_refine_with_auto_backend_calibrates_records_and_decides_as_torch(ray_session, export_dir, corpus, tmp_path):
    """A whole refine run with `auto` (calibrated on 16 of its texts): the planted outcomes of the
    torch end-to-end test hold, and stats.json and report.html name the backend and its agreement."""
    from platypus_ray.refine import run

    cfg = make_config(corpus, tmp_path / "out")
    cfg = cfg.model_copy(
        update={
            "embedding": cfg.embedding.model_copy(
                update={"backend": "auto", "calibration_rows": 16, "export_dir": str(export_dir)}
            )
        }
    )
    run(cfg)
    check_planted_rows((None, tmp_path / "out"))
    embedding = json.loads((tmp_path / "out" / "stats.json").read_text())["embedding"]
    record = embedding["calibration"]
    assert record["rows"] == 16 and [b["name"] for b in record["backends"]] == ["torch", "onnx", "openvino"]
    assert embedding["backend"] == record["chosen"] and embedding["agreement"]["kept_differs"] == 0
    assert embedding["requested"] == "auto" and not embedding["approximate"] and embedding["version"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Embedding backend" in html and "dedup threshold 0.8" in html and "kept differs" in html


def test_cuda_settings_resolve_without_a_gpu():
    """What runs on CUDA actors, decided on the driver: fp16 by default, exported backends refused."""
    from platypus_ray.embedding import EmbeddingConfig
    from platypus_ray.embedding.encoders import resolve_precision
    from platypus_ray.embedding.pool import choose_backend

    assert resolve_precision("auto", "cuda") == "float16" and resolve_precision("auto", "cpu") == "float32"
    with pytest.raises(UserError, match="embedding.backend: 'onnx' runs on CPU actors only"):
        choose_backend(EmbeddingConfig(backend="onnx"), "cuda", spread(TEXTS), len(TEXTS), (0.8, 0.8))
    choice = choose_backend(EmbeddingConfig(backend="auto"), "cuda", spread(TEXTS), len(TEXTS), (0.8, 0.8))
    assert choice.spec.backend == "torch" and choice.spec.precision == "float16" and choice.calibration is None
