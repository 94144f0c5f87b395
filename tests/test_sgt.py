"""The SGT file format, the transform and prompt rendering."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from proxy.sgt import SGTFileError, SGTRuntime, load_sgt_file, save_sgt_file


def test_file_loads_with_weights_only_and_mmap(tiny_sgt: Path) -> None:
    data = torch.load(tiny_sgt, weights_only=True, mmap=True)
    assert data["format"] == "stained-glass-transform" and data["version"] == 1
    assert data["embedding"].shape[1] == data["model"]["hidden_size"] == 64
    assert "chat_template" in data["tokenizer"] and data["tokenizer"]["tokenizer_json"]


def test_wrong_version_is_refused_naming_the_file(tiny_sgt: Path, tmp_path: Path) -> None:
    data = dict(torch.load(tiny_sgt, weights_only=True))
    data["version"] = 99
    bad = tmp_path / "v99.pt"
    torch.save(data, bad)
    with pytest.raises(SGTFileError, match=r"v99\.pt.*version 99"):
        load_sgt_file(bad)


def test_truncated_file_is_refused(tiny_sgt: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_sgt.read_bytes()[: os.path.getsize(tiny_sgt) // 2])
    with pytest.raises(SGTFileError, match=r"cut\.pt"):
        load_sgt_file(cut)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sgp-pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "stained-glass-transform", "version": 1, "x": _Evil()}, evil)
    with pytest.raises(SGTFileError, match="refused"):
        load_sgt_file(evil)
    assert not Path("/tmp/sgp-pwned").exists()


def test_missing_and_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(SGTFileError, match="does not exist"):
        load_sgt_file(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello")
    with pytest.raises(SGTFileError, match=r"junk\.pt"):
        load_sgt_file(junk)
    assert not zipfile.is_zipfile(junk)


def test_save_round_trip(tiny_sgt: Path, tmp_path: Path) -> None:
    data = load_sgt_file(tiny_sgt)
    copy = save_sgt_file(tmp_path / "copy.pt", {k: v for k, v in data.items() if k not in ("format", "version")})
    assert torch.equal(load_sgt_file(copy)["embedding"], data["embedding"])


def test_mask_covers_message_contents_only(tiny_sgt: Path) -> None:
    sgt = SGTRuntime.load(tiny_sgt)
    prompt = sgt.renderer.render_chat([{"role": "user", "content": "alpha beta gamma"}])
    masked = sgt.renderer.decode(prompt.ids[prompt.mask].tolist())
    unmasked = sgt.renderer.decode(prompt.ids[~prompt.mask].tolist())
    assert "alpha beta gamma" in masked.strip() or masked.strip() == "alpha beta gamma"
    assert "<|im_start|>" in unmasked and "alpha" not in unmasked


def test_transform_changes_only_masked_rows(tiny_sgt: Path) -> None:
    sgt = SGTRuntime.load(tiny_sgt)
    prompt = sgt.renderer.render_chat([{"role": "user", "content": "alpha beta gamma"}])
    plain = sgt.embed(prompt)
    out = sgt.obfuscate(prompt)
    assert out.shape == plain.shape and out.dtype == plain.dtype and out.is_contiguous()
    changed = (out != plain).any(dim=1)
    assert torch.equal(changed, prompt.mask)
    assert not torch.equal(out, sgt.obfuscate(prompt))  # fresh noise every time


def test_noise_differs_between_workers_forked_from_one_master(tiny_sgt: Path) -> None:
    """Two runtimes (two gunicorn workers) must not draw the same noise, even from one inherited RNG state."""
    prompt = SGTRuntime.load(tiny_sgt).renderer.render_chat([{"role": "user", "content": "alpha beta"}])
    torch.manual_seed(0)
    first = SGTRuntime.load(tiny_sgt).obfuscate(prompt)
    torch.manual_seed(0)
    second = SGTRuntime.load(tiny_sgt).obfuscate(prompt)
    assert not torch.equal(first, second)


def test_bad_sgt_stops_gunicorn_start(tmp_path: Path) -> None:
    junk = tmp_path / "sgt_model.pt"
    junk.write_bytes(b"not an sgt")
    result = subprocess.run(
        [sys.executable, "-c", "from proxy import create_app; create_app()"],
        env={**os.environ, "SGP_SGT_PATH": str(junk)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode != 0 and "sgt_model.pt" in result.stderr


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    from proxy.settings import Settings, SettingsError

    for name, value in [
        ("SGP_MAX_NEW_TOKENS", "lots"),
        ("SGP_DEVICE", "tpu"),
        ("SGP_INFERENCE_SERVICE_HOST", "ftp://x"),
        ("SGP_OUTPUT_DECRYPTION", "maybe"),
    ]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
    assert Settings.from_env({"SGP_OUTPUT_DECRYPTION": "True"}).output_decryption is True
    assert "s3cret" not in str(Settings.from_env({"SGP_API_PASSWORD": "s3cret"}).describe())
    assert pickle.dumps(Settings.from_env({}))


def test_control_tokens_typed_in_a_message_are_obfuscated(tiny_sgt: Path) -> None:
    """A ``<|im_end|>`` inside a content must not reach the upstream as its plain embedding."""
    renderer = SGTRuntime.load(tiny_sgt).renderer
    prompt = renderer.render_chat([{"role": "user", "content": "alpha <|im_end|> beta"}])
    ids, mask = prompt.ids.tolist(), prompt.mask.tolist()
    end_id = renderer._tokenizer.token_to_id("<|im_end|>")
    assert end_id in renderer.special_ids
    positions = [i for i, token in enumerate(ids) if token == end_id]
    assert len(positions) == 2  # the typed one, then the template's own end of the user turn
    assert mask[positions[0]] and not mask[positions[1]]
    raw = renderer.render_text("alpha <|im_end|> beta")  # a raw prompt may spell out a template: kept plain
    assert not raw.mask[raw.ids.tolist().index(end_id)]


RICH_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.first %}[{{ messages | length }}]{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "alpha beta gamma"}],
        [
            {"role": "user", "content": "  Paris?  "},
            {"role": "assistant", "content": "Yes, \u00e9t\u00e9 \U0001f600"},
            {"role": "user", "content": ""},
        ],
    ],
)
def test_chat_rendering_equals_apply_chat_template(tiny_sgt: Path, messages: list[dict[str, str]]) -> None:
    """The renderer's direct render of transformers' compiled template gives apply_chat_template's tokens."""
    from transformers import PreTrainedTokenizerFast

    from proxy.sgt import PromptRenderer

    tok = load_sgt_file(tiny_sgt)["tokenizer"]
    for template in (tok["chat_template"], RICH_TEMPLATE):
        renderer = PromptRenderer(tok["tokenizer_json"], template, tok.get("special_tokens", {}))
        reference = PreTrainedTokenizerFast(tokenizer_object=renderer._tokenizer, **tok["special_tokens"])
        text = reference.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert renderer.render_chat(messages).ids.tolist() == expected
        assert "bos" not in template or text.startswith(tok["special_tokens"]["bos_token"])


def test_a_template_that_refuses_the_messages_is_a_clear_error(tiny_sgt: Path) -> None:
    from proxy.sgt import PromptRenderer, TemplateRefusedError

    tok = load_sgt_file(tiny_sgt)["tokenizer"]
    renderer = PromptRenderer(tok["tokenizer_json"], RICH_TEMPLATE, tok.get("special_tokens", {}))
    with pytest.raises(TemplateRefusedError, match="roles must alternate"):
        renderer.render_chat([{"role": "assistant", "content": "first"}])


# ---- the runtime apart from its tools ----
SERVING = ("proxy", "sgop", "wsgi.py", "gunicorn.conf.py")


def test_serving_code_never_imports_the_tools() -> None:
    """One-way imports: sgt_tools may import proxy.sgt, never the reverse (the image has no sgt_tools/)."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for part in SERVING:
        paths = [root / part] if part.endswith(".py") else sorted((root / part).rglob("*.py"))
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n == "sgt_tools" or n.startswith("sgt_tools.") for n in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    # the one allowed place: the `python -m proxy.sgt` alias, which runs only as a command
    assert [o.split(":")[0] for o in offenders] == ["proxy/sgt/__main__.py"]


def test_serving_loads_none_of_the_tools_packages() -> None:
    code = (
        "import sys, proxy.app, proxy.serving.stainedglass, proxy.serving, sgop\n"
        "print(sorted(m for m in ('sgt_tools', 'gguf', 'accelerate', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"


def test_proxy_sgt_command_is_an_alias_of_the_tools(tmp_path: Path) -> None:
    """``python -m proxy.sgt`` (the README's and users' name) runs ``python -m sgt_tools``."""
    for module in ("proxy.sgt", "sgt_tools"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300, check=True
        )
        assert "python -m sgt_tools" in result.stdout and "assemble" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "proxy.sgt", "frobnicate"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_nearest_tokens_matches_brute_force_across_table_chunks() -> None:
    """The one nearest-row search of /v1/stainedglass and the tools, whatever the chunking, and in bf16."""
    from proxy.sgt.nearest import nearest_tokens
    from sgt_tools.evaluate import nearest_neighbours

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(100, 16, generator=gen)
    rows = torch.cat([table[torch.tensor([5, 37, 99, 64])], torch.randn(40, 16, generator=gen)])
    want = torch.cdist(rows, table).argmin(-1)
    for chunk, table_chunk in ((1024, 16384), (7, 13), (1, 1)):
        assert torch.equal(nearest_tokens(rows, table, chunk=chunk, table_chunk=table_chunk), want)
    assert torch.equal(nearest_tokens(rows, table)[:4], torch.tensor([5, 37, 99, 64]))
    half = table.bfloat16()
    assert torch.equal(nearest_tokens(rows, half), torch.cdist(rows, half.float()).argmin(-1))
    assert nearest_tokens(rows[:0], table).shape == (0,)
    l2, cos = nearest_neighbours(rows, table)
    assert torch.equal(l2, want)
    assert torch.equal(
        cos, (torch.nn.functional.normalize(rows, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T).argmax(-1)
    )
