"""The embedded default: task families with graders, tools, and the pretraining corpus."""
from posttrain.tinyworld.corpus import world_corpus
from posttrain.tinyworld.world import (
    FAMILIES,
    TOOLS,
    TinyWorldGrader,
    eval_prompts,
    execute_tool_call,
    grade,
    sft_conversations,
)

__all__ = ["FAMILIES", "TOOLS", "TinyWorldGrader", "eval_prompts", "execute_tool_call", "grade",
           "sft_conversations", "world_corpus"]
