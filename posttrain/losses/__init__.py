"""Pure loss functions of tensors, one file per family; each returns (loss, ..., metrics). Imports torch only."""
