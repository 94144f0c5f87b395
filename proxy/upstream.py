"""The client of the vLLM server: pooled session, auth, timeouts, embeds, SSE.

Only this module talks to the inference service. It sends obfuscated
``prompt_embeds`` (never prompt text) and turns every transport failure into
a :mod:`proxy.errors` exception with the right status.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pybase64
import requests
import torch
from requests.adapters import HTTPAdapter

from proxy.errors import ProxyError, UpstreamError, UpstreamTimeoutError, UpstreamUnavailableError

log = logging.getLogger(__name__)


def encode_prompt_embeds(tensor: torch.Tensor) -> str:
    """vLLM's ``prompt_embeds`` wire value: base64 of ``torch.save`` of a dense 2-D CPU tensor."""
    if tensor.dim() != 2 or tensor.device.type != "cpu" or tensor.is_sparse:
        raise ValueError("prompt_embeds must be a dense 2-D CPU tensor")
    buffer = io.BytesIO()
    torch.save(tensor.contiguous(), buffer)
    return pybase64.b64encode(buffer.getbuffer()).decode("ascii")


class UpstreamReply:
    """An open upstream answer: its headers and its events (one for a whole answer)."""

    def __init__(self, response: requests.Response, streamed: bool, url: str) -> None:
        self._response = response
        self.streamed = streamed
        self.headers: Mapping[str, str] = response.headers
        self._url = url

    def events(self) -> Iterator[dict[str, Any]]:
        """Parsed events; closes the upstream connection when done or abandoned."""
        try:
            if not self.streamed:
                yield _json(self._response)
                return
            for line in self._response.iter_lines(chunk_size=None):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise _error_from_body(event, 502)
                yield event
            raise UpstreamUnavailableError(f"the inference service at {self._url} ended the stream early")
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise UpstreamUnavailableError(f"the inference service at {self._url} broke off the answer") from exc
        except requests.Timeout as exc:
            raise UpstreamTimeoutError(f"the inference service at {self._url} timed out") from exc
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()


class UpstreamClient:
    """One pooled ``requests.Session`` per worker, shared by its threads."""

    def __init__(
        self,
        base_url: str,
        connect_timeout: float,
        read_timeout: float,
        basic_auth: tuple[str, str] | None = None,
        pool_size: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.basic_auth = basic_auth
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.trust_env = False  # never route prompts through an ambient proxy

    def post_completions(self, payload: dict[str, Any], headers: Mapping[str, str], streamed: bool) -> UpstreamReply:
        """POST /v1/completions; raises for transport failures and error statuses."""
        response = self._send("POST", "/v1/completions", headers, data=json.dumps(payload), stream=streamed)
        return UpstreamReply(response, streamed, self.base_url)

    def get_models(self, headers: Mapping[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
        response = self._send("GET", "/v1/models", headers or {}, timeout=timeout)
        return _json(response)

    def _send(
        self, method: str, path: str, headers: Mapping[str, str], timeout: float | None = None, **kwargs: Any
    ) -> requests.Response:
        url = self.base_url + path
        send_headers = {"Content-Type": "application/json", **headers}
        try:
            response = self.session.request(
                method, url, headers=send_headers, auth=self.basic_auth, timeout=timeout or self.timeout, **kwargs
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise UpstreamUnavailableError(
                f"the inference service at {self.base_url} did not accept a connection"
            ) from exc
        except requests.Timeout as exc:
            raise UpstreamTimeoutError(f"the inference service at {self.base_url} timed out") from exc
        except requests.ConnectionError as exc:
            raise UpstreamUnavailableError(f"the inference service at {self.base_url} is unreachable") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"message": response.text[:500]}}
            finally:
                response.close()
            raise _error_from_body(body, response.status_code)
        return response


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        return response.json()
    except ValueError as exc:
        raise UpstreamUnavailableError("the inference service answered with something other than JSON") from exc
    except requests.Timeout as exc:
        raise UpstreamTimeoutError("the inference service timed out") from exc
    except requests.RequestException as exc:
        raise UpstreamUnavailableError("the inference service broke off the answer") from exc


def _error_from_body(body: Any, status: int) -> ProxyError:
    """An upstream error body (OpenAI/vLLM or FastAPI shape) as an exception with its status."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "the inference service reported an error")
        kind = error.get("type")
    else:
        message = str(error or (body.get("detail") if isinstance(body, dict) else None) or body)[:500]
        kind = None
    log.warning("upstream answered %s", status)
    return UpstreamError(f"inference service: {message}", status=status, type=kind or "upstream_error", code=status)
