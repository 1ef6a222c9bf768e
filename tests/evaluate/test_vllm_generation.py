"""The vLLM generation path, as far as a machine without vllm or a GPU runs it: the request and
result mappings against the transformers path's own handling of the same requests, the engine
choice and its errors, and Ray Data LLM's processor built (not run: its engine actor imports vllm)
from the config."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from platypus_ray.core.errors import EnvironmentFailure, UserError
from platypus_ray.evaluate.config import InferenceSettings, ModelRef
from platypus_ray.evaluate.engines import choose_engine, vllm_installed
from platypus_ray.evaluate.generation import encode_left_padded, generate_texts, generation_plan
from platypus_ray.evaluate.pool import GenerationError
from platypus_ray.evaluate.vllm_generation import (
    ERROR_COLUMN,
    output_text,
    processor_config,
    request_rows,
    same_params_groups,
    sampling_plan,
)

SAMPLE_TASKS = Path(__file__).resolve().parents[2] / "platypus_ray" / "samples" / "tasks"
SUMS_KWARGS = {"until": ["Question:", "</s>"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 24}


@pytest.fixture(scope="module")
def hf(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def test_greedy_task_maps_to_temperature_zero_its_stops_and_max_tokens():
    params, until, max_context = sampling_plan(SUMS_KWARGS, eos_text="<eos>", max_length=128)
    assert params == {
        "temperature": 0.0,
        "max_tokens": 24,
        "stop": ["Question:", "</s>", "<eos>"],  # handle_stop_sequences adds the EOS text
        "skip_special_tokens": True,
    }
    assert until == ["Question:", "</s>", "<eos>"] and max_context == 128 - 24


def test_unset_sampling_is_greedy_and_sampling_keeps_its_kwargs():
    # no do_sample, no temperature: greedy (vLLM's own default temperature, 1.0, would sample); default length
    params, _, _ = sampling_plan({"until": "\n\n"}, eos_text="</s>", max_length=1024)
    assert params["temperature"] == 0.0 and params["max_tokens"] == 256 and params["stop"] == ["\n\n", "</s>"]
    assert "do_sample" not in params  # vLLM's SamplingParams has no such field
    params, _, _ = sampling_plan({"do_sample": True, "temperature": 0.7, "top_p": 0.9}, eos_text="</s>", max_length=512)
    assert (params["temperature"], params["top_p"]) == (0.7, 0.9)
    with pytest.raises(ValueError, match="leaves no room"):
        sampling_plan({"max_gen_toks": 64}, eos_text="</s>", max_length=64)


@pytest.mark.parametrize(
    "gen_kwargs",
    [SUMS_KWARGS, {"until": "\n\n"}, {"until": ["A:"], "max_gen_toks": 7, "do_sample": False}, {}],
)
def test_stops_lengths_and_context_room_are_the_transformers_paths(gen_kwargs):
    params, until, max_context = sampling_plan(gen_kwargs, eos_text="</s>", max_length=300)
    hf_kwargs, hf_until, hf_max_gen, hf_context = generation_plan(gen_kwargs, "</s>", 300)
    assert until == hf_until == params["stop"]
    assert params["max_tokens"] == hf_max_gen and max_context == hf_context
    assert hf_kwargs.get("do_sample") is False and params["temperature"] == 0.0  # greedy on both sides


def test_request_rows_carry_the_transformers_token_ids(hf):
    _, tokenizer = hf
    plain = "Question: 2 plus 3?\nAnswer:"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": plain}], tokenize=False, add_generation_prompt=True
    )
    long = "one two three " * 200
    rows = pd.DataFrame({"context": [plain, chat, long], "gen_kwargs": [SUMS_KWARGS] * 3})
    out = request_rows(rows, tokenizer, max_length=128)
    assert [r["request"] for r in out] == [0, 1, 2]
    bos = tokenizer.bos_token_id
    assert chat.startswith(tokenizer.bos_token)
    assert out[0]["tokenized_prompt"] == tokenizer(plain)["input_ids"] and out[0]["tokenized_prompt"][0] == bos
    assert out[1]["tokenized_prompt"][:2] != [bos, bos]  # the template's BOS is not doubled
    assert out[1]["tokenized_prompt"] == tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert out[2]["tokenized_prompt"] == tokenizer(long)["input_ids"][-(128 - 24) :]  # left-truncated
    for row, context in zip(out, rows["context"]):  # the transformers path's own encoding, batch of one
        assert row["tokenized_prompt"] == encode_left_padded(tokenizer, [context], 128 - 24)[0][0].tolist()
        assert row["sampling_params"]["stop"] == row["until"] == ["Question:", "</s>"]
    unpadded = copy.deepcopy(tokenizer)
    unpadded.pad_token = None  # LLaMA-2's tokenizer, as the driver loads it: no pad token
    assert request_rows(rows, unpadded, max_length=128) == out


def test_stop_strings_cut_the_text_where_the_transformers_path_cuts_it(hf):
    """Ray's detokenize stage decodes the engine's new tokens without special tokens, then the
    postprocess cuts at the first stop string; the transformers path, given the same stop strings,
    must return the same text (its generate stops early on them, then cuts the same way)."""
    import torch

    model, tokenizer = hf
    context = "Question: Tom has 3 apples and buys 4 more. How many?\nAnswer:"
    ids = tokenizer(context, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    raw = tokenizer.decode(new[0, ids.shape[1] :].tolist(), skip_special_tokens=True)  # what the engine side has
    stop = raw[len(raw) // 2 : len(raw) // 2 + 3]
    assert stop.strip() and raw.index(stop) > 0  # a stop string the untrained model does meet, mid-text
    gen_kwargs = {"until": [stop], "do_sample": False, "max_gen_toks": 24}
    row = request_rows(pd.DataFrame({"context": [context], "gen_kwargs": [gen_kwargs]}), tokenizer, 256)[0]
    ours = output_text(row | {"generated_text": raw})
    theirs = generate_texts(model, tokenizer, [context], gen_kwargs, 256)[0]
    assert ours == {"request": 0, "text": theirs} and len(theirs) < len(raw)


def test_results_land_in_request_order_whatever_order_ray_returns_them(ray_session):
    """Shuffled processor outputs (one failed row keeping its input columns, as Ray Data LLM returns
    it) through the real Ray Data map and bounded wait: texts in request order, and the failure names
    its task and document."""
    from platypus_ray.evaluate.pool import collect_texts
    from platypus_ray.evaluate.vllm_generation import _outcomes

    n = 12
    rows = pd.DataFrame({"context": [f"c{i}" for i in range(n)], "task": "sample_sums", "doc_id": range(100, 100 + n)})
    done = [{"request": i, "text": f"text {i}", ERROR_COLUMN: ""} for i in range(n)]
    random.Random(0).shuffle(done)
    texts: list[str | None] = [None] * n
    collect_texts(_outcomes(ray_session.data.from_items(done, override_num_blocks=4), 60), rows, texts)
    assert texts == [f"text {i}" for i in range(n)]

    failed = {"request": 5, "tokenized_prompt": [1, 2], "until": ["x"], ERROR_COLUMN: "ValueError: bad top_k"}
    with pytest.raises(GenerationError, match=r"task 'sample_sums', doc 105 \(request 5, .*ValueError: bad top_k"):
        outputs = ray_session.data.from_items([failed] + done[:3])
        collect_texts(_outcomes(outputs, 60), rows, [None] * n)


def test_requests_with_different_sampling_keys_go_in_different_runs():
    requests = [
        {"request": 0, "sampling_params": {"temperature": 0.0, "stop": ["a"]}},
        {"request": 1, "sampling_params": {"temperature": 0.7, "top_p": 0.9, "stop": ["a"]}},
        {"request": 2, "sampling_params": {"stop": ["b"], "temperature": 0.0}},
    ]
    assert [[r["request"] for r in g] for g in same_params_groups(requests)] == [[0, 2], [1]]


def test_auto_generates_with_transformers_here_and_vllm_only_when_it_can():
    model, adapted = ModelRef(name_or_path="m"), ModelRef(name_or_path="m", adapter="a")
    assert not vllm_installed()  # this machine: the test below is the auto path it takes
    assert choose_engine("auto", "cuda", vllm_installed(), [model]) == "transformers"
    assert choose_engine("auto", "cuda", True, [model]) == "vllm"
    assert choose_engine("auto", "cpu", True, [model]) == "transformers"
    assert choose_engine("auto", "cuda", True, [model, adapted]) == "transformers"
    assert choose_engine("transformers", "cuda", True, [model]) == "transformers"
    assert choose_engine("vllm", "cuda", True, [model]) == "vllm"


@pytest.mark.parametrize(
    ("device", "has_vllm", "models", "error", "fix"),
    [
        ("cuda", False, [ModelRef(name_or_path="m")], EnvironmentFailure, "pip install vllm"),
        ("cpu", True, [ModelRef(name_or_path="m")], UserError, "inference.device is cpu"),
        ("auto", True, [ModelRef(name_or_path="m", adapter="a")], UserError, "platypus-ray merge"),
    ],
)
def test_explicit_vllm_that_cannot_run_is_one_line_naming_the_key(device, has_vllm, models, error, fix):
    with pytest.raises(error) as caught:
        choose_engine("vllm", device, has_vllm, models)
    message = str(caught.value)
    assert message.startswith("evaluate.inference.engine: vllm") and fix in message and "\n" not in message


def test_cli_vllm_without_vllm_is_exit_2_before_ray(tiny_model, tmp_path):
    path = tmp_path / "eval.yaml"
    entry = {"task": "sample_sums", "include_path": str(SAMPLE_TASKS)}
    path.write_text(json.dumps({"model": tiny_model, "output": str(tmp_path / "out"), "benchmarks": [entry]}))
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "HF_HUB_OFFLINE": "1"}  # nothing listens: Ray unreached
    proc = subprocess.run(
        [sys.executable, "-m", "platypus_ray", "evaluate", "--config", str(path), "--set", "inference.engine=vllm"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "error: evaluate.inference.engine: vllm, but vllm is not installed" in errors[0]
    assert "Traceback" not in proc.stderr


def test_processor_is_built_from_the_config(ray_session, tiny_model):
    """Ray Data LLM's own builder (importable without vllm): no chat-template or tokenize stage (the
    prompts go in as lm-eval built them), the engine with this config's settings, then detokenize."""
    from ray.data.llm import build_processor

    inference = InferenceSettings(
        actors=2, batch_size=16, vllm={"tensor_parallel_size": 1, "gpu_memory_utilization": 0.5}
    )
    config = processor_config(ModelRef(name_or_path=tiny_model), inference, max_length=512, seed=7)
    assert config.model_source == tiny_model and config.batch_size == 16 and config.concurrency == 2
    assert config.should_continue_on_error
    processor = build_processor(config, postprocess=output_text)
    assert processor.list_stage_names() == ["vLLMEngineStage", "DetokenizeStage"]
    engine = processor.get_stage_by_name("vLLMEngineStage")
    kwargs = engine.fn_constructor_kwargs["engine_kwargs"]
    assert (kwargs["tensor_parallel_size"], kwargs["gpu_memory_utilization"]) == (1, 0.5)
    assert (kwargs["max_model_len"], kwargs["dtype"], kwargs["seed"]) == (512, "bfloat16", 7)
    assert engine.map_batches_kwargs["num_gpus"] == 1  # one GPU per engine at tensor_parallel_size 1
    assert engine.map_batches_kwargs["compute"].max_size == 2  # inference.actors engines at most
