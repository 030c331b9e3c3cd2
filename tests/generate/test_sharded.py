"""Sharded sampling: fixed shard composition, shard files reused, and a SIGKILLed stage resumed = uncut run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.data.records import Message, Prompt
from posttrain.generate.sharded import cut_shards, derive_seed, run_sharded, sample_seed, shard_path

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


def prompts(n: int) -> list[Prompt]:
    words = ["alpha", "beta", "the answer", "add", "name"]
    return [Prompt(messages=[Message(role="user", content=f"{words[i % 5]} {i}")], family=f"f{i % 2}")
            for i in range(n)]


def echo(shard: list[Prompt], index: int) -> list[Prompt]:
    return [p.model_copy(update={"meta": p.meta.model_copy(update={"shard": index})}) for p in shard]


def test_cut_shards_keeps_input_order():
    assert cut_shards(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert cut_shards([], 3) == []
    with pytest.raises(ValueError):
        cut_shards([1], 0)


def test_seeds_are_stable_and_distinct():
    assert derive_seed(1, "abc", 0) == derive_seed(1, "abc", 0) != derive_seed(1, "abc", 1)
    assert 0 <= sample_seed(0, "abc") < 2**31


def test_present_shards_are_reused_and_foreign_ones_redone(tmp_path):
    items, calls = prompts(7), []

    def work(shard, index):
        calls.append(index)
        return echo(shard, index)

    kwargs = dict(shard_size=3, shard_dir=tmp_path, record_cls=Prompt, key_of_item=lambda p: p.id,
                  key_of_record=lambda p: p.id)
    first, stats = run_sharded(items, work=work, **kwargs)
    assert [p.id for p in first] == [p.id for p in items] and calls == [0, 1, 2]
    assert (stats.generated, stats.reused) == (3, 0)
    assert shard_path(tmp_path, 2).name == "shard-00002.jsonl" and shard_path(tmp_path, 2).exists()
    shard_path(tmp_path, 1).unlink()  # as if cut off while shard 1 was being generated
    shard_path(tmp_path, 2).write_text(json.dumps(prompts(9)[-1].model_dump(mode="json")) + "\n")  # another input's
    again, stats = run_sharded(items, work=work, **kwargs)
    assert calls == [0, 1, 2, 1, 2] and (stats.generated, stats.reused) == (2, 1)
    assert [p.model_dump() for p in again] == [p.model_dump() for p in first]


def test_shard_refused_by_keep_shard_is_not_written(tmp_path):
    out, _ = run_sharded(prompts(4), shard_size=2, shard_dir=tmp_path, work=echo, record_cls=Prompt,
                         key_of_item=lambda p: p.id, key_of_record=lambda p: p.id,
                         keep_shard=lambda records: records[0].meta.shard == 0)
    assert len(out) == 4 and shard_path(tmp_path, 0).exists() and not shard_path(tmp_path, 1).exists()


def test_work_must_return_one_record_per_item_in_order(tmp_path):
    with pytest.raises(ValueError, match="shard 0"):
        run_sharded(prompts(2), shard_size=2, shard_dir=tmp_path, work=lambda s, i: s[::-1], record_cls=Prompt,
                    key_of_item=lambda p: p.id, key_of_record=lambda p: p.id)


# ------------------------------------------------------------------ SIGKILL mid-stage, then resume

KILLER = '''
"""Test plugin: SIGKILL this process when the third shard is sampled, before it is written."""
import os
import signal

import posttrain.stages.generate as generate

_sample_shard, _calls = generate.sample_shard, []


def _killing(*args, **kwargs):
    out = _sample_shard(*args, **kwargs)
    _calls.append(1)
    if len(_calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return out


generate.sample_shard = _killing
'''


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    from posttrain.models.loading import random_init_causal_lm, save_causal_lm
    from tiny_generate import chat_tokenizer

    tokenizer = chat_tokenizer()
    model = random_init_causal_lm("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
                                  num_kv_heads=2, intermediate_size=64, max_position_embeddings=256, seed=0)
    return save_causal_lm(model, tokenizer, tmp_path_factory.mktemp("chat") / "model")


def test_sigkilled_stage_resumes_to_the_uncut_output(tmp_path, chat_model, monkeypatch):
    from posttrain.cli import main
    from posttrain.data.io import write_records

    # Bit-identical samples need the same float results: the same thread count in every attempt.
    monkeypatch.setenv("POSTTRAIN_THREADS", "1")
    prompts_file = tmp_path / "prompts.jsonl"
    write_records(prompts_file, prompts(8))
    args = ["generate", "--input", f"model={chat_model}", "--input", f"prompts={prompts_file}",
            "--set", "samples=3", "--set", "temperature=1.0", "--set", "top_k=50", "--set", "max_new_tokens=8",
            "--set", "shard_size=2", "--set", "tools=none", "--seed", "7"]
    assert main(args + ["--out", str(tmp_path / "uncut")]) == 0

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "killer.py").write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), str(ROOT)]),
           "POSTTRAIN_PLUGINS": "killer", "POSTTRAIN_THREADS": "1"}
    cut = tmp_path / "cut"
    proc = subprocess.run([sys.executable, "-m", "posttrain.cli", *args, "--out", str(cut)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (cut / "_DONE").exists()
    assert sorted(p.name for p in (cut / "shards").iterdir()) == ["shard-00000.jsonl", "shard-00001.jsonl"]

    assert main(args + ["--out", str(cut)]) == 0
    manifest = json.loads((cut / "manifest.json").read_text())
    assert manifest["resumed"] and manifest["counts"]["shards_reused"] == 2 and manifest["counts"]["shards"] == 4
    uncut_rows = (tmp_path / "uncut" / "completions.jsonl").read_text()
    assert (cut / "completions.jsonl").read_text() == uncut_rows
    rows = [json.loads(line) for line in uncut_rows.splitlines()]
    assert len(rows) == 8 and all(len(r["responses"]) == 3 for r in rows)
    assert len({r["responses"][0]["messages"][0]["content"] for r in rows}) > 1
