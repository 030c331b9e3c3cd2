"""Records, IO with quarantine, chat templates, tokenization, packing. Imports nothing of ours."""
