"""The GPU check kit (bench/gpu*.py): its dry run on CPU, its checks' oracles, its bundle's pieces."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from platypus_ray.bench import gpu
from platypus_ray.bench.gpu_embed import float64_decisions_differ, planted_vectors


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~2 min on 2 idle cores; far longer when the box is shared
@pytest.mark.skipif(
    not gpu.SHARED_DATA.is_dir(), reason=f"the dry run reads the shared Alpaca sample at {gpu.SHARED_DATA}"
)
def test_dry_run_runs_every_step_and_their_checks_hold(ray_session, tmp_path, capsys):
    """All four steps on CPU at tiny sizes, in this process, on the session's Ray."""
    assert gpu.main(["--dry-run", "--in-process", "--out", str(tmp_path)]) == 0
    lines = {x["step"]: x for x in map(json.loads, (tmp_path / "gpu-steps.jsonl").read_text().splitlines())}
    assert list(lines) == ["embed", "tiles", "train", "attention"]
    assert all(x["status"] == "ok" for x in lines.values()), lines
    embed = lines["embed"]
    assert embed["rows"] == 48 and embed["probes"] == 24 and embed["bare_encode_fp32_rows_per_s"] > 0
    for precision in ("float16", "bfloat16"):
        assert embed[precision]["stage_rows_per_s_steady"] > 0
        assert 0 < embed[precision]["max_abs_cos_diff"] < 0.05  # other rounding, same model
        assert 0 <= embed[precision]["kept_differs"] <= 48 and 0 <= embed[precision]["flags_differ"] <= 48
    tiles = lines["tiles"]
    assert tiles["removed"] > 0 and tiles["sample_removed"] > 0  # the planted copies were found
    assert tiles["decisions_differ"] == 0
    runs = {r["run"]: r for r in lines["train"]["runs"]}
    assert set(runs) == {"tiny-packed", "tiny-unpacked"}
    for run in runs.values():
        assert run["status"] == "ok" and run["tokens_per_s"] > 0 and run["mfu"] > 0
        assert run["adapter_tensors"] > 0 and run["adapter_reloads"] is True
    assert runs["tiny-packed"]["packing_efficiency"] > runs["tiny-unpacked"]["packing_efficiency"]
    impls = lines["attention"]["impls"]
    assert set(impls) == {"eager", "sdpa"} and all(x["within_1e-3"] and x["rows"] > 4 for x in impls.values())
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"step"')]
    assert [x["step"] for x in printed] == list(lines)  # one JSON line per step on stdout too


def test_a_step_runs_in_its_own_process_and_one_past_its_limit_is_killed(tmp_path, capsys):
    """The GPU machine's path: each step a child process printing one marked line; a step over
    its limit is killed with its process group and reported as a timeout."""
    from platypus_ray.bench.gpu_env import StepSettings

    assert gpu.main(["--dry-run", "--only", "attention", "--out", str(tmp_path)]) == 0
    line = json.loads((tmp_path / "gpu-steps.jsonl").read_text())
    assert line["step"] == "attention" and line["status"] == "ok" and line["impls"]["sdpa"]["within_1e-3"]
    assert capsys.readouterr().out.splitlines()[-1].startswith('{"step": "attention", "status": "ok"')
    settings = StepSettings(True, str(gpu.SHARED_DATA), None, str(tmp_path), ("1b",), 2)
    late = gpu.run_step("train", settings, in_process=False, limit_s=3, env=dict(os.environ))
    assert late["status"] == "timeout" and late["error"] == "over its 3 s limit" and late["finished_parts"] == []


def test_float64_check_finds_a_wrong_decision():
    from platypus_ray.devtools.dedup_reference import greedy_reference

    vectors = planted_vectors(600, 384, seed=3)
    keep = greedy_reference(vectors, np.arange(600), 0.8)
    sample = np.arange(600)
    assert (~keep).sum() > 0 and float64_decisions_differ(vectors, keep, sample, chunk=128) == 0
    wrong = keep.copy()
    wrong[np.flatnonzero(~keep)[0]] = True
    assert float64_decisions_differ(vectors, wrong, sample, chunk=128) >= 1


def test_planted_copies_straddle_the_threshold():
    vectors = planted_vectors(5000, 384, seed=0)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    best = sims.max(axis=1)
    assert ((best > 0.75) & (best < 0.8)).sum() > 5 and ((best >= 0.8) & (best < 0.96)).sum() > 5


def test_bad_input_is_one_error_line_exit_2(tmp_path, capsys):
    assert gpu.main(["--dry-run", "--only", "embed,warp", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "platypus-ray gpu: error: --skip/--only: unknown step(s) ['warp']; the steps are embed, tiles, train, attention"
    ]
    with pytest.raises(gpu.KitError, match="manifest.json not found; build it with scripts/gpu-bundle"):
        gpu.verify(tmp_path)
    (tmp_path / "piece.bin").write_bytes(b"abc")
    piece = {"path": "piece.bin", "bytes": 3, "sha256": "0" * 64}  # the right size, another checksum
    (tmp_path / "manifest.json").write_text(json.dumps({"pieces": [piece]}))
    with pytest.raises(gpu.KitError, match="piece.bin: missing or not the file the manifest names"):
        gpu.verify(tmp_path)


def test_no_gpu_without_dry_run_says_so(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu.main(["--out", str(tmp_path)]) == 2
    assert "platypus-ray gpu: error: no CUDA device visible" in capsys.readouterr().err


def test_bundle_refuses_to_replace_a_foreign_folder(tmp_path):
    from platypus_ray.bench.gpu_bundle import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["--out", str(tmp_path)]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_carried_minilm_keeps_vectors_and_refuses_other_tokens(tmp_path):
    """fp16 storage with unused vocabulary rows zeroed: the carried texts' vectors stay within
    fp16 rounding of the fp32 model's; a text with another token is refused."""
    from platypus_ray.bench.gpu_minilm import check_tokens, pack, source_folder, unpack
    from platypus_ray.core.errors import UserError
    from platypus_ray.embedding.encoders import EncoderSpec, load_encoder

    texts = ["Give three tips for staying healthy.", "What is the capital of France?", "Sort these numbers: 3 1 2"]
    info = pack(texts, tmp_path / "model.tar.xz")
    assert info["vocabulary_rows"] == 30522 and 10 < info["vocabulary_rows_kept"] < 60
    folder = unpack(tmp_path / "model.tar.xz", tmp_path)
    check_tokens(folder, texts)
    ref = load_encoder(EncoderSpec(str(source_folder()), "torch")).encode(texts)
    got = load_encoder(EncoderSpec(str(folder), "torch")).encode(texts)
    assert 0 < np.abs(ref - got).max() < 1e-3
    with pytest.raises(UserError, match="not in the carried MiniLM vocabulary"):
        check_tokens(folder, ["zebra quantum"])


def test_generation_check_compares_strings_per_document():
    from platypus_ray.bench.gpu_generate import compare

    ours = compare({0: "4", 1: "7 #### 7", 2: "x"}, {0: "4", 1: "7 #### 8", 2: "x"})
    assert ours == {
        "documents": 3,
        "equal": 2,
        "differing": [{"doc_id": 1, "transformers": "7 #### 7", "vllm": "7 #### 8"}],
    }
    assert compare({0: "a"}, {})["equal"] == 0  # a document vLLM did not return is a difference


def test_generation_check_without_gpu_or_vllm_says_so(capsys):
    from platypus_ray.bench import gpu_generate

    assert gpu_generate.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_generate: error: ") and (
        "no CUDA device visible" in err or "vllm is not installed" in err
    )


@pytest.mark.slow
def test_generation_check_dry_run_runs_the_transformers_side(ray_session, tiny_model, tmp_path, capsys):
    from platypus_ray.bench import gpu_generate

    argv = ["--dry-run", "--model", tiny_model, "--limit", "2", "--out", str(tmp_path)]
    assert gpu_generate.main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        line["device"] == "cpu"
        and line["vllm"].startswith("not run")
        and "exact_match,strict-match" in line["transformers"]
    )
    assert (tmp_path / "transformers" / "items.parquet").is_file()
