"""Stained Glass Transform runtime: file format, transform, prompt rendering, runtime, nearest-row decode.

What serving loads, and all the image carries of the SGT. The offline tools (build,
train, eval, assemble) are the ``sgt_tools`` package, which imports this one.
"""

from proxy.sgt.file import SGTFileError, load_sgt_file, save_sgt_file
from proxy.sgt.nearest import nearest_tokens
from proxy.sgt.prompt import PromptRenderer, RenderedPrompt, TemplateRefusedError
from proxy.sgt.runtime import SGTRuntime

__all__ = [
    "PromptRenderer",
    "RenderedPrompt",
    "SGTFileError",
    "SGTRuntime",
    "TemplateRefusedError",
    "load_sgt_file",
    "nearest_tokens",
    "save_sgt_file",
]
