"""The one training engine and the algorithm loops on top of it.

config.py      TrainConfig / SFTConfig (pydantic only: safe to import without torch)
engine.py      Trainer, LossOutput, StepPlan: accumulation, normalisation, guards, checkpoints, fit loop
optim.py       AdamW parameter groups and learning-rate schedules
checkpoint.py  atomic checkpoints, RNG capture, full state dicts through DDP / FSDP2
distributed.py torchrun process group, DDP / FSDP2 wrapping, reductions, data sharding
adapters.py    gradient checkpointing, LoRA (peft), NEFTune hook installation
neftune.py     NEFTune embedding noise
mixture.py     per-source data mixture sampling, pure in (seed, epoch)
step_log.py    per-step metrics, throughput, MFU, optional TensorBoard / W&B
sft.py         SFT: packing plan, loss function, run_sft entry point
"""
