"""Per-tensor streaming merges of HF checkpoints: linear, task arithmetic, TIES, DARE, SLERP, Model Stock, WARP.

methods.py holds the math (functions of tensors, registered in METHODS), streaming.py the driver
(`merge_checkpoints`), checkpoint.py lazy safetensors reading and incremental shard writing,
validate.py the checks made before any tensor is read, ema.py the EMA anchor update for online RL.
"""
