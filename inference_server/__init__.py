"""A small vLLM-compatible completions server on transformers.

Upstream for the proxy's demo, tests and benchmarks: it speaks vLLM's
``/v1/completions`` (with ``prompt_embeds``) and ``/v1/models``, and runs the
model for real, token by token. It never imports ``proxy``.
"""
