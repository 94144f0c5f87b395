"""The serving layer: everything between the HTTP layer (``proxy.api``) and the parts it coordinates.

``completions`` serves chat and completions on one path; ``route`` chooses,
once per request, where the prompt goes upstream and in which shape the answer
comes back; ``protection``, ``until_stopped`` and ``whole_answer`` are the
steps an answer passes through; ``stainedglass`` serves ``/v1/stainedglass``.
Knows nothing of Flask (docs/architecture.md).
"""

from proxy.serving.completions import Batches, CompletionService, ServedResponse
from proxy.serving.protection import FORWARDED_HEADERS

__all__ = ["FORWARDED_HEADERS", "Batches", "CompletionService", "ServedResponse"]
