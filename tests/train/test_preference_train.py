"""Preference training on the engine with a tiny model: reference pass, packing, metrics, invariance, caching."""
import math

import pytest
import torch

from _train_fixtures import tiny_model, tiny_tokenizer
from posttrain.data.lengths import LengthPolicy
from posttrain.data.packing import collate_packed
from posttrain.losses.preference import bind_loss
from posttrain.models.logprobs import packed_token_logprobs, sequence_logprobs
from posttrain.train.config import TrainConfig
from posttrain.train.distributed import DistContext
from posttrain.train.preference import (
    PreferencePlan,
    _fit_pair,
    cached_reference_logps,
    collate_pairs,
    mask_token_ids,
    reference_logps,
    run_preference,
)

torch.set_num_threads(1)
CPU = torch.device("cpu")


def toy_pairs(n: int, seed: int = 0) -> list[dict]:
    """Prompt = a run of the +1 pattern; chosen continues it, rejected repeats one token (loss on the answer)."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        start = int(torch.randint(3, 40, (1,), generator=gen))
        prompt_len, answer_len = 3 + i % 4, 2 + i % 5
        prompt = [start + j for j in range(prompt_len)]
        chosen = prompt + [start + prompt_len + j for j in range(answer_len)]
        rejected = prompt + [start] * (answer_len + i % 2)
        mask = lambda ids: [False] * prompt_len + [True] * (len(ids) - prompt_len)  # noqa: E731
        pairs.append({"id": str(i), "chosen": {"input_ids": chosen, "loss_mask": mask(chosen)},
                      "rejected": {"input_ids": rejected, "loss_mask": mask(rejected)},
                      "chosen_reward": 1.0, "rejected_reward": 0.0})
    return pairs


def one_by_one(model, sequences) -> list[float]:
    """Sequence log-probs scored one sequence per forward (no packing)."""
    out = []
    with torch.no_grad():
        for seq in sequences:
            batch = collate_packed([seq])
            token_lp, mask = packed_token_logprobs(model, batch)
            out.append(float(sequence_logprobs(token_lp, mask, batch.cu_seqlens)[0]))
    return out


def test_reference_pass_matches_unpacked_scoring_for_any_row_size():
    model, pairs = tiny_model(seed=1), toy_pairs(9)
    expected = one_by_one(model, [seq for p in pairs for seq in (p["chosen"], p["rejected"])])
    for budget in (20, 64, 4096):
        logps = reference_logps(model, pairs, budget, chunk_size=7, device=CPU)
        assert logps.shape == (9, 2)
        torch.testing.assert_close(logps.flatten(), torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_reference_is_cached_and_recomputed_only_for_other_data(tmp_path):
    pairs, calls = toy_pairs(4), []

    def compute():
        calls.append(1)
        return torch.arange(8, dtype=torch.float32).view(4, 2)

    path = tmp_path / "reference_logps.json"
    first, cached = cached_reference_logps(path, compute, pairs, "ref-a")
    assert not cached and len(calls) == 1
    again, cached = cached_reference_logps(path, compute, pairs, "ref-a")
    assert cached and len(calls) == 1 and torch.equal(first, again)
    cached_reference_logps(path, compute, pairs, "ref-b")  # another reference: recomputed
    cached_reference_logps(path, compute, toy_pairs(4, seed=9), "ref-b")  # other data: recomputed
    assert len(calls) == 3


def _late_rank(rank: int, path: str, store: str, results: str) -> None:
    """One of 2 gloo processes: rank 1 arrives only after rank 0 has written the reference file."""
    import time
    from datetime import timedelta
    from pathlib import Path

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    ctx = DistContext(rank=rank, world_size=2)
    while rank == 1 and not Path(path).exists():
        time.sleep(0.01)
    logps, _ = cached_reference_logps(Path(path), lambda: torch.ones(4, 2), toy_pairs(4), "ref", ctx)
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)  # the next collective: it pairs with the other rank's all_reduce, not a stray barrier
    Path(results, f"rank{rank}").write_text(f"{total.item():g} {logps.sum().item():g}")
    dist.destroy_process_group()


def test_a_late_rank_still_meets_the_main_at_the_barrier(tmp_path):
    """Regression: a rank that found the file its main had just written skipped the barrier and paired the main's
    barrier with DDP's first collective: both hung (seen running the dpo stage under torchrun)."""
    import torch.multiprocessing as mp

    mp.start_processes(_late_rank, args=(str(tmp_path / "ref.json"), str(tmp_path / "store"), str(tmp_path)),
                       nprocs=2, start_method="spawn", join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["3 8", "3 8"]


def with_reference(model, pairs):
    logps = reference_logps(model, pairs, 4096, 64, CPU)
    return [{**p, "reference": tuple(lp)} for p, lp in zip(pairs, logps.tolist())]


def config(**overrides) -> TrainConfig:
    base = dict(lr=3e-3, warmup_steps=0, schedule="constant", max_grad_norm=None, micro_batch_tokens=64,
                epochs=1, seed=0, betas=(0.9, 0.95))
    return TrainConfig(**{**base, **overrides})


def test_first_step_loss_is_log_2_and_training_separates_the_answers(tmp_path):
    model, rows = tiny_model(seed=2), []
    pairs = with_reference(model, toy_pairs(24))
    summary = run_preference(model, tiny_tokenizer(), pairs, config(epochs=3), tmp_path,
                             loss=bind_loss("dpo", beta=0.5), beta=0.5, pairs_per_step=8, log_fn=rows.append)
    assert summary["steps"] == 9 and (tmp_path / "model" / "config.json").exists()
    # Before any update policy == reference: h = 0 for every pair, loss = log 2, rewards 0.
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert {"step", "loss", "reward_accuracy", "chosen_reward", "rejected_reward", "reward_margin",
            "chosen_logp", "rejected_logp"} <= set(rows[0])
    assert [r["step"] for r in rows] == list(range(1, 10))
    assert rows[-1]["loss"] < 0.5 and rows[-1]["reward_accuracy"] == 1.0
    assert rows[-1]["reward_margin"] == pytest.approx(rows[-1]["chosen_reward"] - rows[-1]["rejected_reward"])


def test_update_does_not_depend_on_how_pairs_are_packed(tmp_path):
    """One row per pair (many micro-batches) and all pairs in one row give the same weights."""
    params = []
    for budget in (40, 4096):
        model = tiny_model(seed=3)
        pairs = with_reference(model, toy_pairs(12))
        run_preference(model, tiny_tokenizer(), pairs, config(micro_batch_tokens=budget, max_steps=2),
                       tmp_path / str(budget), loss=bind_loss("ipo", beta=0.5), beta=0.5, pairs_per_step=6)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    plan_small = PreferencePlan(toy_pairs(12), 6, 40, 1, 0, DistContext())
    assert len(plan_small.step_micro_batches(0)[0]) > 1  # the small budget really split the step
    torch.testing.assert_close(params[0], params[1], atol=1e-5, rtol=1e-4)  # float rounding only (lr 3e-3)


def test_plan_is_pure_in_seed_and_epoch_and_splits_over_processes():
    pairs = [{**p, "reference": (0.0, 0.0)} for p in toy_pairs(10)]
    ids = lambda plan, epoch: [[[p.get("id") for p in row] for row in step] for step in plan.step_micro_batches(epoch)]  # noqa: E731
    a, b = PreferencePlan(pairs, 4, 64, 2, 5, DistContext()), PreferencePlan(pairs, 4, 64, 2, 5, DistContext())
    assert ids(a, 1) == ids(b, 1) and ids(a, 0) != ids(a, 1)
    assert [sum(len(row) for row in step) for step in ids(a, 0)] == [4, 4, 2]
    ranks = [PreferencePlan(pairs, 4, 24, 1, 5, DistContext(rank=r, world_size=2)) for r in (0, 1)]
    steps = [plan.steps(0) for plan in ranks]
    assert len(steps[0]) == len(steps[1]) == 3
    for index in range(3):
        s0, s1 = steps[0][index], steps[1][index]
        assert len(s0) == len(s1)  # same number of forward/backward passes on every process
        assert sum(float(batch.valid.sum()) for batch in s0 + s1) == [4, 4, 2][index]
    both = [p.get("id") for plan in ranks for step in plan.step_micro_batches(0) for row in step for p in row]
    assert sorted(i for i in both if i is not None) == sorted(p["id"] for p in pairs)


def test_mask_token_ids_changes_exactly_the_masked_positions():
    example = {"input_ids": [5, 9, 7, 9, 8, 2, 9], "loss_mask": [False, False, True, True, True, True, False]}
    masked = mask_token_ids(example, frozenset({9, 2}))
    changed = [i for i, (a, b) in enumerate(zip(example["loss_mask"], masked["loss_mask"])) if a != b]
    assert changed == [3, 5]  # in the loss and a special token; position 1 and 6 were not in the loss
    assert masked["input_ids"] == example["input_ids"]


def test_fit_pair_truncates_the_shared_prompt_from_the_left_then_answers():
    prompt, mask_p = [1, 2, 3, 4, 5], [False] * 5
    chosen = (prompt + [10, 11], mask_p + [True, True])
    rejected = (prompt + [20, 21, 22, 23], mask_p + [True] * 4)
    fitted = _fit_pair(chosen, rejected, LengthPolicy(max_tokens=7, on_overflow="truncate"))
    c, r = fitted
    assert c["input_ids"] == [3, 4, 5, 10, 11] and r["input_ids"] == [3, 4, 5, 20, 21, 22, 23]
    assert c["loss_mask"] == [False] * 3 + [True] * 2
    assert _fit_pair(chosen, rejected, LengthPolicy(max_tokens=7, on_overflow="drop")) is None
    c, r = _fit_pair(chosen, rejected, LengthPolicy(max_tokens=3, on_overflow="truncate"))
    assert c["input_ids"] == [10, 11] and r["input_ids"] == [20, 21, 22]


def test_collate_pairs_orders_chosen_then_rejected():
    pairs = [{**p, "reference": (-1.0, -2.0)} for p in toy_pairs(3)]
    batch = collate_pairs(pairs, row_tokens=12)
    lengths = [len(s["input_ids"]) for p in pairs for s in (p["chosen"], p["rejected"])]
    assert sorted(n for row in batch.sequences.rows for n in row.seq_lens) == sorted(lengths)
    assert all(row.input_ids.shape[1] <= 12 for row in batch.sequences.rows) and len(batch.sequences.rows) > 1
    assert batch.reference.tolist() == [[-1.0, -2.0]] * 3
    assert batch.tokens[0].tolist() == [sum(pairs[0]["chosen"]["loss_mask"]), sum(pairs[0]["rejected"]["loss_mask"])]


@torch.no_grad()
def test_replayed_conversation_adds_its_weighted_per_token_nll_and_counts_as_no_pair():
    from posttrain.train.preference import preference_loss_fn, replay_item

    model = tiny_model(seed=3)
    pairs = with_reference(model, toy_pairs(2))
    conversation = {"input_ids": [5, 6, 7, 8, 9, 10], "loss_mask": [False, False, True, True, True, True]}
    batch = collate_pairs(pairs + [replay_item(conversation, "r")], 64)
    assert batch.valid.tolist() == [1.0, 1.0, 0.0] and batch.replay.tolist() == [0.0, 0.0, 1.0]
    loss = bind_loss("dpo", beta=0.5)
    alone = preference_loss_fn(loss, 0.5, 64)(model, collate_pairs(pairs, 64))
    mixed = preference_loss_fn(loss, 0.5, 64, replay_weight=0.3)(model, batch)
    # The replayed conversation's 4 loss tokens: per-token NLL = -sum log p / 4, weighted 0.3; no pair added.
    nll = -one_by_one(model, [conversation])[0] / 4
    assert float(mixed.loss_sum) == pytest.approx(float(alone.loss_sum) + 0.3 * nll, rel=1e-5)
    assert float(mixed.normaliser) == float(alone.normaliser) == 2.0
    for name, value in alone.metrics.items():
        assert float(mixed.metrics[name]) == pytest.approx(float(value), rel=1e-5, abs=1e-6)
    unweighted = preference_loss_fn(loss, 0.5, 64)(model, batch)  # replay_weight 0: the replay row changes nothing
    assert float(unweighted.loss_sum) == pytest.approx(float(alone.loss_sum), rel=1e-5)
