"""Stained Glass Transform: file format, transform, prompt rendering, runtime."""

from proxy.sgt.file import SGTFileError, load_sgt_file, save_sgt_file
from proxy.sgt.prompt import PromptRenderer, RenderedPrompt, TemplateRefusedError
from proxy.sgt.runtime import SGTRuntime

__all__ = [
    "PromptRenderer",
    "RenderedPrompt",
    "SGTFileError",
    "SGTRuntime",
    "TemplateRefusedError",
    "load_sgt_file",
    "save_sgt_file",
]
