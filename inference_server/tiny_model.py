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


def _train_tokenizer():  # -> transformers.PreTrainedTokenizerFast
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
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
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


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build (once) a tiny random LlamaForCausalLM + tokenizer into ``out_dir``.

    Idempotent: an ``out_dir`` that already holds a complete build is returned as is.
    """
    out_dir = Path(out_dir)
    marker = out_dir / "tiny_model_build.json"
    if marker.is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer()
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=special["<|im_start|>"],
        eos_token_id=special["<|im_end|>"],
        pad_token_id=special["<|endoftext|>"],
        initializer_range=0.1,  # larger than usual: peakier logits, stabler greedy text
        **MODEL_CONFIG,
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
    _ensure_chat_template_in_config(out_dir)
    marker.write_text(json.dumps({"seed": seed, "vocab_size": len(tokenizer)}) + "\n")
    return out_dir


def _ensure_chat_template_in_config(out_dir: Path) -> None:
    """Keep the chat template in tokenizer_config.json too (older readers look there)."""
    path = out_dir / "tokenizer_config.json"
    data = json.loads(path.read_text())
    if "chat_template" not in data:
        data["chat_template"] = CHAT_TEMPLATE
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m inference_server.tiny_model --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
