"""Tripwires for the private APIs the proxy leans on for speed.

Each of these is a name a dependency does not promise to keep. If an upgrade
moves or changes one, the test here fails with a message saying which code to
revisit, instead of the proxy failing (or silently slowing down) at run time.
Behavioural equality is pinned elsewhere (tests/test_sgt.py for the template,
tests/test_wire.py for the archive bytes, tests/test_gunicorn_worker.py for the
coalesced headers); these check the hooks themselves.
"""

from __future__ import annotations

import inspect
import io
import json

import torch
from gunicorn.http import wsgi

from proxy import tensor_archive
from proxy.api import http
from proxy.gunicorn_worker import CoalescingResponse


def test_transformers_compile_jinja_template_still_there() -> None:
    from transformers.utils import chat_template_utils

    compile_template = getattr(chat_template_utils, "_compile_jinja_template", None)
    assert callable(compile_template), "transformers moved _compile_jinja_template: revisit proxy/sgt/prompt.py"
    template = compile_template("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }};{% endfor %}")
    assert template.render(messages=[{"role": "user", "content": "hi"}]) == "user:hi;"


def test_torch_rebuild_tensor_v2_and_storage_map_still_there() -> None:
    rebuild = getattr(torch._utils, "_rebuild_tensor_v2", None)
    assert callable(rebuild), "torch moved _rebuild_tensor_v2: revisit proxy/tensor_archive.py"
    assert list(inspect.signature(rebuild).parameters)[:6] == [
        "storage",
        "storage_offset",
        "size",
        "stride",
        "requires_grad",
        "backward_hooks",
    ], "torch changed _rebuild_tensor_v2's arguments: revisit proxy/tensor_archive.py"
    names = torch.storage._dtype_to_storage_type_map()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert dtype in names and hasattr(torch, names[dtype]), f"no storage type for {dtype}"
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    archive = b"".join(bytes(part) for part in tensor_archive.tensor_archive(tensor))
    assert torch.equal(torch.load(io.BytesIO(archive), weights_only=True), tensor)


def test_torch_serialization_crc32_switch_still_there() -> None:
    from torch.utils.serialization import config

    assert isinstance(config.save.compute_crc32, bool), "torch moved save.compute_crc32: revisit tensor_archive.py"


def test_json_c_encoder_still_there() -> None:
    assert json.encoder.c_make_encoder is not None, "json lost its C encoder: proxy/api/http.py falls back (slower)"
    event = {"id": "x", "choices": [{"text": "é\n\u2028", "index": 0, "logprobs": None}], "n": 1.5, "ok": True}
    assert http._dumps(event) == json.dumps(event)


def test_gunicorn_response_hooks_still_there() -> None:
    """The worker swaps ``gunicorn.http.wsgi.Response``; the methods it overrides must still exist there."""
    for name in ("send_headers", "_emit_body", "sendfile", "close", "default_headers"):
        assert callable(getattr(wsgi.Response, name, None)), f"gunicorn's Response lost {name}: revisit gunicorn_worker"
    assert "response_class = Response" in inspect.getsource(wsgi.create), "wsgi.create no longer reads Response"
    assert issubclass(CoalescingResponse, wsgi.Response)
