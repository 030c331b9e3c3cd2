"""Engine invariances: batch x accumulation, packed vs padded, gradient checkpointing; the non-finite guard."""
import pytest
import torch

from _train_fixtures import tiny_model, toy_examples
from posttrain.data.packing import collate_packed, collate_padded
from posttrain.losses.sft import sft_loss
from posttrain.models.forward import lm_head_of, padded_hidden_states
from posttrain.models.logprobs import packed_token_logprobs, shifted_targets, token_logprobs
from posttrain.train import checkpoint as ckpt
from posttrain.train.config import TrainConfig
from posttrain.train.distributed import DistContext
from posttrain.train.engine import LossOutput, Trainer, TrainingDiverged
from posttrain.train.sft import sft_loss_fn

torch.set_num_threads(1)


class ListPlan:
    """A one-epoch plan over a fixed list of steps."""

    def __init__(self, steps):
        self.epochs, self._steps = 1, steps

    def steps(self, epoch):
        return self._steps


def _train(steps, **config):
    """Train on `steps`; returns (losses, final weights, the gradient each optimizer step applied)."""
    config = TrainConfig(**{"lr": 1e-2, "weight_decay": 0.1, "max_grad_norm": 1.0, **config})
    trainer = Trainer(tiny_model(seed=5), config, sft_loss_fn(16), total_steps=len(steps), ctx=DistContext())
    applied = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: applied.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    )
    summary = trainer.fit(ListPlan(steps))
    return summary["losses"], trainer.model.state_dict(), applied


def _assert_same_weights(a, b, atol=1e-6):
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def test_batch_times_accumulation_is_invariant():
    # Lengths 4..20 differ, so a per-micro-batch mean would weigh short sequences more: only the
    # step-wide token normalisation makes these three agree.
    examples = toy_examples(16, seed=11)
    batch8 = [[collate_packed(examples[s * 8 : s * 8 + 8])] for s in range(2)]
    accum8 = [[collate_packed([e]) for e in examples[s * 8 : s * 8 + 8]] for s in range(2)]
    mixed = [[collate_packed(examples[s * 8 + i : s * 8 + i + 2]) for i in range(0, 8, 2)] for s in range(2)]
    losses_a, _, grads_a = _train(batch8)
    losses_b, _, grads_b = _train(accum8)
    losses_c, _, grads_c = _train(mixed)
    assert losses_a == pytest.approx(losses_b, rel=1e-6)
    assert losses_a == pytest.approx(losses_c, rel=1e-6)
    # Compare the first applied (normalised, clipped) gradient: Adam's first steps are ~lr * sign(g),
    # which turns float noise on near-zero gradients into +-lr weight differences, so later steps and
    # weights drift apart by more than float error while the losses above still agree.
    _assert_same_weights(grads_a[0], grads_b[0], atol=1e-7)
    _assert_same_weights(grads_a[0], grads_c[0], atol=1e-7)
    assert grads_a[0]["lm_head.weight"].abs().max() > 1e-3  # not vacuous


def test_packed_and_padded_sft_loss_agree():
    model = tiny_model(seed=2).eval()
    examples = toy_examples(5, seed=3)
    packed = collate_packed(examples)
    padded = collate_padded(examples, pad_id=1)
    with torch.no_grad():
        token_lp, mask = packed_token_logprobs(model, packed, chunk_size=7)
        packed_sum, packed_n, _ = sft_loss(token_lp, mask)
        hidden = padded_hidden_states(model, padded)  # (B, T, H)
        targets, pad_mask = shifted_targets(padded)
        pad_lp = token_logprobs(hidden.flatten(0, 1), lm_head_of(model), targets.flatten(), chunk_size=7)
        padded_sum, padded_n, _ = sft_loss(pad_lp.view_as(targets), pad_mask)
    assert float(packed_n) == float(padded_n) == sum(sum(e["loss_mask"][1:]) for e in examples)
    torch.testing.assert_close(packed_sum, padded_sum, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_training():
    steps = [[collate_packed(toy_examples(4, seed=s))] for s in range(3)]
    plain_losses, _, plain = _train(steps)
    ckpt_losses, _, recomputed = _train(steps, gradient_checkpointing=True)
    assert plain_losses == pytest.approx(ckpt_losses, rel=1e-6)
    _assert_same_weights(plain[0], recomputed[0], atol=1e-7)


def _poisoned_loss(nan_loss_calls: set[int], nan_grad_calls: set[int]):
    """sft_loss_fn that returns a NaN loss, or a finite loss with NaN gradients, on the given calls."""
    inner, calls = sft_loss_fn(16), {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        out = inner(model, batch)
        if calls["n"] in nan_loss_calls:
            return LossOutput(out.loss_sum * float("nan"), out.normaliser, out.metrics)
        if calls["n"] in nan_grad_calls:
            zero = (model.get_input_embeddings().weight.sum() * 0).abs()
            return LossOutput(out.loss_sum + zero.sqrt(), out.normaliser, out.metrics)  # d sqrt(0) = inf
        return out

    return loss_fn


def test_non_finite_steps_are_skipped_then_abort_with_a_loadable_checkpoint(tmp_path):
    steps = [[collate_packed(toy_examples(3, seed=s))] for s in range(8)]
    config = TrainConfig(lr=1e-2, max_consecutive_skips=2, log_every=1)
    rows, snapshots = [], {}
    trainer = Trainer(
        tiny_model(seed=5), config, _poisoned_loss({2, 5, 6}, {4}), total_steps=8,
        checkpoint_dir=tmp_path, log_fn=rows.append, ctx=DistContext(),
    )
    original_record = trainer.logger.record

    def record(step, values, tokens):  # snapshot the weights after every step
        snapshots[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        return original_record(step, values, tokens)

    trainer.logger.record = record
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        trainer.fit(ListPlan(steps))
    # step 2 skipped alone (weights unchanged), training went on; steps 4 (NaN grad), 5, 6 (NaN loss) aborted.
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 2, 3, 4]
    _assert_same_weights(snapshots[2], snapshots[1], atol=0)
    assert not torch.equal(snapshots[3]["lm_head.weight"], snapshots[2]["lm_head.weight"])
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000006"
    weights, _, state, _ = ckpt.read_checkpoint(latest, rank=0)
    assert state["consecutive_skips"] == 3 and state["data_position"] == {"epoch": 0, "step_in_epoch": 6}
    assert all(torch.isfinite(w).all() for w in weights.values())
    _assert_same_weights({"model." + k: v for k, v in snapshots[3].items()}, weights, atol=0)
    # the checkpoint resumes into a fresh trainer
    resumed = Trainer(tiny_model(seed=9), config, sft_loss_fn(16), total_steps=8, checkpoint_dir=tmp_path, ctx=DistContext())
    assert resumed.resume() == {"epoch": 0, "step_in_epoch": 6}
    _assert_same_weights(resumed.model.state_dict(), snapshots[3], atol=0)


def test_bf16_autocast_keeps_float32_weights_and_close_losses():
    steps = [[collate_packed(toy_examples(4, seed=s))] for s in range(2)]
    fp32_losses, _, _ = _train(steps)
    bf16_losses, weights, _ = _train(steps, dtype="bfloat16")
    assert bf16_losses == pytest.approx(fp32_losses, rel=1e-2)
    assert bf16_losses != fp32_losses  # autocast really ran in bf16
    assert all(w.dtype == torch.float32 for w in weights.values())
