"""In-process vLLM ChatBackend. EXPERIMENTAL: vLLM cannot be installed on the machines this is
developed on, so only its glue is tested (against a stand-in `vllm` module), never a real engine.

For scale, the tested route is a vLLM server (`vllm serve MODEL`) behind `OpenAIChatBackend`.

Prompts are rendered with the tokenizer's chat template (`chat.render_prompt`, the same rendering
as the hf backend and training) and sent as token ids; replies are parsed back into messages by
the template's parser, so tool calls come back as OpenAI-style `tool_calls`. Each sample is its own
vLLM request seeded `seeds[i] + sample_index` (the openai backend's default), and greedy requests
run once and are repeated `n` times. Log-probs, when asked for, are what vLLM returns for the
chosen tokens: by default (V1 engine, logprobs-mode raw_logprobs) the model's own softmax before
temperature and truncation, which `Generation.logprobs_of` calls 'greedy-policy'.

Importing this module needs no vLLM; constructing the backend without it raises ImportError.
"""
from __future__ import annotations

from typing import Any

from posttrain.data.chat_templates import detect_template
from posttrain.generate.base import ChatSample, SamplingParams
from posttrain.generate.chat import render_prompt
from posttrain.generate.parse import PARSERS

INSTALL_HINT = "the vllm backend needs vLLM: pip install posttrain[vllm] (GPU machines with CUDA only)"
VLLM_LOGPROBS_OF = "greedy-policy"  # vLLM's raw_logprobs: log-softmax of the unscaled logits


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return vllm


class VLLMChatBackend:
    """Chat samples from an in-process `vllm.LLM` (experimental; see the module docstring).

    `template` names posttrain's chat template family of the model ('chatml', 'llama3', 'gemma')
    for parsing tool calls; it is detected from the tokenizer when not given. `llm_kwargs` go to
    `vllm.LLM` (tensor_parallel_size, gpu_memory_utilization, dtype, max_model_len, ...).
    """

    def __init__(self, model: str, *, template: str | None = None, logprobs: bool = False, **llm_kwargs: Any):
        self._vllm = _import_vllm()
        self.model = model
        self.name = f"vllm:{model}"
        self.logprobs = logprobs
        self.llm = self._vllm.LLM(model=model, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.template = template or detect_template(self.tokenizer)
        if self.template not in PARSERS:
            raise ValueError(f"unknown chat template {self.template!r}; known: {sorted(PARSERS)}")

    def chat(self, conversations: list[tuple[list, list | None]], params: SamplingParams,
             seeds: list[int] | None = None) -> list[list[ChatSample]]:
        """`params.n` samples per conversation, in input order."""
        if seeds is not None and len(seeds) != len(conversations):
            raise ValueError(f"{len(seeds)} seeds for {len(conversations)} conversations")
        samples_asked = 1 if params.greedy else params.n
        prompts, sampling, owners = [], [], []
        for index, (messages, tools) in enumerate(conversations):
            ids = render_prompt(self.tokenizer, messages, tools)
            base_seed = seeds[index] if seeds is not None else params.seed
            for sample in range(samples_asked):
                prompts.append({"prompt_token_ids": ids})
                sampling.append(self._sampling_params(params, None if base_seed is None else base_seed + sample))
                owners.append(index)
        outputs = self.llm.generate(prompts, sampling_params=sampling, use_tqdm=False)
        results: list[list[ChatSample]] = [[] for _ in conversations]
        for index, output in zip(owners, outputs):
            results[index].append(self._sample(output.outputs[0], conversations[index][0], params))
        if samples_asked < params.n:  # greedy: one answer, repeated
            results = [[self._copy(row[0]) for _ in range(params.n)] for row in results]
        return results

    def _sampling_params(self, params: SamplingParams, seed: int | None):
        return self._vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,  # -1: no top-k, in every vLLM version
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=seed,
            logprobs=0 if self.logprobs else None,  # 0: only the chosen token's
        )

    def _sample(self, completion: Any, history: list, params: SamplingParams) -> ChatSample:
        # Number tool calls across the whole chat so that ids stay unique (as chat.generate_chat does).
        calls_so_far = sum(len((m.get("tool_calls") if isinstance(m, dict) else m.tool_calls) or [])
                           for m in history)
        reply = PARSERS[self.template](completion.text, first_call_index=calls_so_far)
        token_ids = list(completion.token_ids)
        logprobs = None
        if self.logprobs and completion.logprobs is not None:
            logprobs = [float(step[token].logprob) for token, step in zip(token_ids, completion.logprobs)]
        return ChatSample(messages=[reply], finish_reason=completion.finish_reason or "stop", token_ids=token_ids,
                          logprobs=logprobs, logprobs_of=VLLM_LOGPROBS_OF if logprobs is not None else None,
                          model=self.model)

    @staticmethod
    def _copy(sample: ChatSample) -> ChatSample:
        return ChatSample([m.model_copy() for m in sample.messages], sample.finish_reason,
                          None if sample.token_ids is None else list(sample.token_ids),
                          None if sample.logprobs is None else list(sample.logprobs), sample.logprobs_of, sample.model)
