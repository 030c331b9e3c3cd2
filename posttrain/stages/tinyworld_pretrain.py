"""Stage `tinyworld_pretrain`: the tiny world's tokenizer and base model, from a seed.

A byte-level BPE is trained on the world's documents plus the plain text of its task families
(so later families never meet unknown tokens), then a small Llama is pretrained on the documents
alone (plain text, not chat turns) with the training engine. The result is what
`posttrain/tinyworld/base_model/` ships; `make base-model` rebuilds it.
"""
from __future__ import annotations

from pydantic import Field

from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult
from posttrain.train.config import TrainConfig


class PretrainTrainConfig(TrainConfig):
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    warmup_steps: int = Field(30, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on linear weights")
    # Rows of one context length: packed attention costs T^2, so short rows are faster on CPU.
    micro_batch_tokens: int = Field(512, ge=1, description="token budget of one packed micro-batch row")
    accumulation: int = Field(8, ge=1, description="micro-batches per optimizer step")
    checkpoint_every: int = Field(25, ge=0, description="resumable checkpoint every N steps")
    # Four passes: in-context copying (induction) appears late and suddenly. Copy accuracy measured:
    # 0.02 after one pass with a quarter of the draw copying documents (375 steps), 0.07 after two
    # with 40% (748 steps); with half the draw 0.10 at step 425, 0.80 at step 775, 0.88 at 1,488
    # (the shipped model); with `single_digits` (more tokens, 1,804 steps) 0.94.
    epochs: int = Field(4, ge=1, description="passes over the documents")


class TinyWorldPretrainConfig(StageConfig):
    n_docs: int = Field(40000, ge=10, description="pretraining documents drawn from the world corpus")
    copy_share: float = Field(0.5, ge=0, lt=1, description="share of the draw that is copying documents (a span "
                                                           "said again a few tokens later); 0 = none")
    tokenizer_docs: int = Field(8000, ge=10, description="documents the tokenizer is trained on")
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary size, special tokens included")
    # Measured once (README): the shipped base's tokenizer keeps GPT-2's split; with single digits
    # copying rose (0.94, quoted 0.99) but the quickstart's SFT and DPO scored lower.
    single_digits: bool = Field(False, description="split numbers into single digits, never joined to the space "
                                                   "before them, so ' 86' and '\"86' share tokens (data/bpe.py)")
    template: str = Field("chatml", description="chat template installed with the tokenizer")
    hidden_size: int = Field(192, ge=16, description="model width")
    num_layers: int = Field(6, ge=1, description="decoder layers")
    num_heads: int = Field(6, ge=1, description="attention heads")
    num_kv_heads: int = Field(2, ge=1, description="key/value heads (grouped-query attention)")
    intermediate_size: int = Field(512, ge=16, description="MLP width")
    context: int = Field(512, ge=32, description="max positions; documents longer than this are split")
    stream: bool = Field(True, description="concatenate documents into context-long rows (positions run across "
                                           "documents, as GPT-style pretraining does); False = one document per row")
    train: PretrainTrainConfig = Field(default_factory=PretrainTrainConfig, description="engine settings")


def family_text(seed: int, n_per_family: int, template: str) -> list[str]:
    """The task families' train conversations rendered with the chat template, for tokenizer training only.

    Rendering (not just message contents) lets BPE learn the template's recurring text, such as the
    tool-definition preamble of tool-use prompts, which would otherwise cost hundreds of tokens.
    The base model itself never sees these: it is pretrained on plain documents.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    from posttrain.data.chat_templates import get_template
    from posttrain.data.tokenize import normalize_messages, normalize_tools
    from posttrain.tinyworld import world

    spec = get_template(template)
    texts = []
    for conv in world.sft_conversations(n_per_family, seed):
        rendered, _ = render_jinja_template(conversations=[normalize_messages(conv.messages)],
                                            tools=normalize_tools(conv.tools), chat_template=spec.source)
        texts.append(rendered[0])
    return texts


def pretraining_rows(docs: list[list[int]], context: int, stream: bool) -> list[dict]:
    """Training rows of at most `context` tokens, loss on every token.

    Streamed, documents are concatenated and cut every `context` tokens, so every position up to the
    context is trained and the model learns to read past unrelated text before it: with one document
    per row (the tiny world's documents average ~50 tokens) a model never sees position 300, where a
    tool-use prompt's question sits after the tool definitions.
    """
    pieces = [[token for doc in docs for token in doc]] if stream else docs
    rows = []
    for ids in pieces:
        for start in range(0, len(ids), context):
            piece = ids[start:start + context]
            if len(piece) > 1:
                rows.append({"input_ids": piece, "loss_mask": [True] * len(piece)})
    return rows


def copy_accuracy(model, tokenizer, n: int = 64, seed: int = 1, quoted: bool = False) -> float:
    """Greedy top-1 accuracy on the second saying of a random run of world words (in-context copying).

    The run is never in the corpus (its own random draw), so only a model that copies from its context
    predicts it: a model without induction heads scores about 0 however well it knows the world.
    quoted: the run is said first after spaces, then inside a quote ('... 86 Orlan. I said "86 Orlan'),
    and only the quoted first word is scored: there it is another token than the one read (' Orlan'
    vs '"Orlan'; ' 86' vs '86' unless digits are split), as a question's city or number is in a tool
    call's JSON arguments.
    """
    import random

    import torch

    from posttrain.tinyworld.corpus import copy_word

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    rng = random.Random(f"tinyworld/copy-probe/{seed}")
    # quoted: the first saying's words keep their spaces (" 86 Orlan"), so no space token ends the opener
    opener, repeat, lead = ("Remember this:", '. I said "', " ") if quoted else ("Remember this: ", ". Again: ", "")
    start, again = encode(tokenizer.pad_token + opener), encode(repeat)
    hits = total = 0
    model.eval()
    for _ in range(n):
        words = " ".join(copy_word(rng) for _ in range(8))
        first, span = encode(lead + words), encode(words)
        ids = torch.tensor([start + first + again + span])
        scored = len(encode(words.split()[0])) if quoted else len(span)
        begin = len(start) + len(first) + len(again)
        with torch.no_grad():
            predicted = model(input_ids=ids).logits[0, begin - 1:begin - 1 + scored].argmax(-1)
        hits += int((predicted == ids[0, begin:begin + scored]).sum())
        total += scored
    return hits / total


class TinyWorldPretrain(Stage):
    kind = "tinyworld_pretrain"
    version = 3
    distributed = True
    Config = TinyWorldPretrainConfig
    description = "Train the tiny world's tokenizer and pretrain its small Llama base model on world text."

    def run(self, config: TinyWorldPretrainConfig, ctx: StageContext) -> StageResult:
        from posttrain.data.bpe import train_bytelevel_bpe
        from posttrain.data.chat_templates import end_of_turn_ids
        from posttrain.models.loading import random_init_causal_lm
        from posttrain.models.runtime import seed_everything, set_cpu_threads
        from posttrain.tinyworld.corpus import world_corpus
        from posttrain.train.config import SFTConfig
        from posttrain.train.sft import run_sft

        set_cpu_threads()
        seed_everything(ctx.seed)
        docs = list(world_corpus(ctx.seed, config.n_docs, config.copy_share))
        tokenizer = train_bytelevel_bpe(docs[: config.tokenizer_docs] + family_text(ctx.seed, 200, config.template),
                                        config.vocab_size, config.template, single_digits=config.single_digits)
        separator = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)  # <|endoftext|> ends a document
        examples = pretraining_rows([tokenizer(doc, add_special_tokens=False)["input_ids"] + [separator] for doc in docs],
                                    config.context, config.stream)
        model = random_init_causal_lm(
            "llama", vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_layers=config.num_layers,
            num_heads=config.num_heads, num_kv_heads=config.num_kv_heads,
            intermediate_size=config.intermediate_size, max_position_embeddings=config.context,
            seed=ctx.seed, tie_word_embeddings=True,
            eos_token_id=end_of_turn_ids(tokenizer, config.template)[0], pad_token_id=separator)
        train = SFTConfig(**{**config.train.model_dump(), "seed": ctx.seed})
        summary = run_sft(model, tokenizer, {"corpus": examples}, train, ctx.out_dir, log_fn=ctx.log_metrics,
                          eos_token_ids=end_of_turn_ids(tokenizer, config.template))
        from posttrain.stages.artifacts import drop_checkpoints

        drop_checkpoints(ctx.out_dir)
        tokens = sum(len(e["input_ids"]) for e in examples)
        params = sum(p.numel() for p in model.parameters())
        return StageResult(
            counts={"documents": len(docs), "tokens": tokens, "steps": summary["steps"], "parameters": params,
                    "vocab_size": len(tokenizer)},
            metrics={"final_loss": summary["final_loss"], "train_seconds": round(summary["seconds"], 1),
                     "copy_accuracy": round(copy_accuracy(model, tokenizer), 3),
                     "quoted_copy_accuracy": round(copy_accuracy(model, tokenizer, quoted=True), 3)},
            outputs=summary["outputs"],
        )
