"""Build a tiny random Llama and a byte-level BPE tokenizer, offline, in seconds.

Tests, the demo and the benchmarks need a real (if meaningless) causal LM that
loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` without a model hub.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 600

# ChatML, like SmolLM2's template but without its default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# ChatML with tools the Hermes/Qwen2.5 way: the tool signatures as JSON in <tools> in the system turn,
# an assistant's calls as <tool_call> JSON, tool results as <tool_response> in a user turn.
TOOLS_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role in ('user', 'system') or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + tool_call.name + \'", "arguments": \' }}'
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TRAINING_TEXT = """\
The city of Paris is the capital of France. It stands on the river Seine, in the
north of the country, and it has been a centre of trade, art and learning for
more than a thousand years. Visitors come to see the museums, the churches, the
bridges and the long green parks, and many of them stay to eat bread, cheese and
fruit at small tables on the street while the evening light turns gold.

A language model reads a sequence of tokens and predicts the next one. Each token
is turned into a vector of numbers, an embedding, and the model mixes these
vectors through layers of attention and feed-forward networks. When the model is
asked a question, it writes the answer one token at a time, and every new token
is added to the context before the next one is chosen.

Privacy matters when people send their questions to a server they do not control.
If the words of a prompt are replaced by noisy vectors that still carry their
meaning for the model but hide it from anyone who watches the wire, the server
can answer without learning what was asked. The answer can also be encrypted so
that only the person who asked can read it.

Good software is small, clear and tested. A function should say why it exists,
what it expects and what it returns. A test should start the real program, talk
to it over a real socket and check what comes back, so that a change that breaks
the contract is caught before anyone else sees it. Logs should help the people
who run the service without ever showing the private words of its users.

The weather was cold in the morning and warm in the afternoon. Children walked to
school with their bags, a dog ran after a red ball, and an old man read the news
on a bench under a tree. In the market, people bought apples, pears, onions,
carrots, fish and flowers, and they talked about the rain, the prices and the
football match of the weekend. Numbers like 1, 2, 3, 10, 42, 100 and 2024 appear
in text as well, and so do questions: What is the capital of France? Why is the
sky blue? How many days are there in a week?
"""

MODEL_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


def _train_tokenizer(chat_template: str = CHAT_TEMPLATE, max_length: int = MODEL_CONFIG["max_position_embeddings"]):
    """Train a byte-level BPE on TRAINING_TEXT and wrap it as an HF fast tokenizer."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TRAINING_TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=chat_template,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def _round_embeddings_exactly_representable(weight) -> None:
    """Round the embedding table in place to values exact in bfloat16 AND float16.

    Why: clients send prompt_embeds in bfloat16/float16; with an exactly
    representable table the cast is lossless, so a random model gives the same
    greedy text from embeddings as from the plain prompt (tests rely on this).
    """
    import torch

    with torch.no_grad():
        rounded = weight.to(torch.bfloat16).to(torch.float32)
        rounded[rounded.abs() < 2.0**-14] = 0.0  # below float16's normal range
        weight.copy_(rounded)


def build_tiny_model(
    out_dir: Path, seed: int = 0, chat_template: str = CHAT_TEMPLATE, max_position_embeddings: int | None = None
) -> Path:
    """Build (once) a tiny random LlamaForCausalLM + tokenizer into ``out_dir``.

    Idempotent: an ``out_dir`` that already holds a complete build is returned as is.
    ``chat_template``: :data:`CHAT_TEMPLATE`, or :data:`TOOLS_CHAT_TEMPLATE` for tool calling (whose
    prompts, tool signatures in a 600-token vocabulary, need a longer context: ``max_position_embeddings``).
    """
    out_dir = Path(out_dir)
    marker = out_dir / "tiny_model_build.json"
    if marker.is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    model_config = dict(MODEL_CONFIG)
    if max_position_embeddings is not None:
        model_config["max_position_embeddings"] = max_position_embeddings
    tokenizer = _train_tokenizer(chat_template, model_config["max_position_embeddings"])
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=special["<|im_start|>"],
        eos_token_id=special["<|im_end|>"],
        pad_token_id=special["<|endoftext|>"],
        initializer_range=0.1,  # larger than usual: peakier logits, stabler greedy text
        **model_config,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    _round_embeddings_exactly_representable(model.get_input_embeddings().weight)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _ensure_chat_template_in_config(out_dir, chat_template)
    marker.write_text(json.dumps({"seed": seed, "vocab_size": len(tokenizer)}) + "\n")
    return out_dir


def _ensure_chat_template_in_config(out_dir: Path, chat_template: str = CHAT_TEMPLATE) -> None:
    """Keep the chat template in tokenizer_config.json too (older readers look there)."""
    path = out_dir / "tokenizer_config.json"
    data = json.loads(path.read_text())
    if "chat_template" not in data:
        data["chat_template"] = chat_template
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m inference_server.tiny_model --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tools-template", action="store_true", help="a chat template that renders tools (Hermes)")
    args = parser.parse_args(argv)
    if args.tools_template:
        path = build_tiny_model(
            args.out, seed=args.seed, chat_template=TOOLS_CHAT_TEMPLATE, max_position_embeddings=4096
        )
    else:
        path = build_tiny_model(args.out, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
