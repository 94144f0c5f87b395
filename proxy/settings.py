"""Every ``SGP_*`` setting, typed and validated in one place.

Nothing else in the proxy reads the environment. A bad value stops start-up
with a message that names the variable.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

import sgop

PREFIX = "SGP_"

# SGP_REQUEST_HEADERS_TO_ADD: an RFC 7230 token is a header name; a value is visible ASCII, spaces and tabs
# (no CR or LF: no header injection; no comma: it separates the entries).
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
# Names the proxy refuses to add: hop-by-hop headers (RFC 7230 6.1, and the proxy-only ones) and the headers
# the proxy itself owns for each request (framing, encoding, correlation, output protection, tracing).
REFUSED_HEADERS = frozenset(
    name.lower()
    for name in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade",
        "Host", "Content-Length", "Content-Type", "Content-Encoding", "Accept-Encoding", "Expect",
        "X-Request-ID", sgop.CLIENT_PUBLIC_KEY_HEADER, sgop.VERSIONS_HEADER, "traceparent", "tracestate",
    )
)  # fmt: skip


def parse_headers_to_add(value: str) -> dict[str, SecretStr]:
    """``Name=value,Name2=value2`` as {name: value}; the error names the header, never its value."""
    headers: dict[str, SecretStr] = {}
    for number, entry in enumerate(value.split(","), start=1):
        if not entry.strip():
            continue
        name, eq, header_value = entry.partition("=")
        name, header_value = name.strip(), header_value.strip()
        if not eq or not HEADER_NAME.fullmatch(name):  # the entry is not echoed: it may hold a value
            raise ValueError(f"entry {number} is not Name=value with an RFC 7230 token as the name")
        if name.lower() in REFUSED_HEADERS:
            raise ValueError(f"{name} is a header the proxy sets itself or a hop-by-hop header: it cannot be added")
        if name.lower() in {n.lower() for n in headers}:
            raise ValueError(f"{name} is given twice")
        if not HEADER_VALUE.fullmatch(header_value):
            raise ValueError(f"the value of {name} holds a character not allowed in a header (control or non-ASCII)")
        headers[name] = SecretStr(header_value)
    return headers


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Settings(BaseModel):
    """The proxy's configuration. Field ``x`` is read from ``SGP_X``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inference_service_host: str = Field("http://127.0.0.1:8000", description="URL of the vLLM (prompt-embeds) server")
    sgt_path: str = Field("sgt_model.pt", description="SGT file to load")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where the transform runs")
    api_username: str | None = Field(None, description="username for the upstream's Basic auth")
    api_password: SecretStr | None = Field(None, description="password for the upstream's Basic auth")
    logging_config_file: str | None = Field(None, description="YAML logging dictConfig")
    max_new_tokens: int = Field(512, ge=1, description="max_tokens when a request gives none")
    output_decryption: bool = Field(False, description="proxy holds the output-protection key and decrypts")
    ephemeral_key_refresh_time_seconds: float = Field(900, gt=0, description="output-protection key lifetime")
    output_protection_min_version: int = Field(
        1, ge=1, le=2, description="lowest output-protection version the decrypting proxy accepts (2: no v1 downgrade)"
    )
    upstream_timeout_seconds: float = Field(600, gt=0, description="read timeout for the upstream")
    upstream_connect_timeout_seconds: float = Field(5, gt=0, description="connect timeout for the upstream")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body accepted")
    upstream_model: str | None = Field(None, description="model name sent upstream (default: its first model)")
    max_concurrent_transforms: int = Field(4, ge=1, description="transforms that may run at once per worker")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per worker")
    noise_scale: float = Field(
        1.0, ge=0, le=100, allow_inf_nan=False, description="multiplier on the SGT's sigma (privacy/utility knob)"
    )
    enable_stainedglass: bool = Field(
        False, description="serve POST /v1/stainedglass, a debugging aid that reveals the transform (else 404)"
    )
    stainedglass_max_values: int = Field(
        1 << 20, ge=1, description="most embedding values (tokens x hidden x arrays) one /v1/stainedglass answer holds"
    )
    upstream_api: Literal["completions", "chat"] = Field(
        "completions", description="upstream endpoint for chat requests: /v1/completions or /v1/chat/completions"
    )
    tool_parser: Literal["hermes", "llama3_json", "mistral"] | None = Field(
        None, description="how tool calls are found in the generated text (as vLLM's --tool-call-parser)"
    )
    reasoning_parser: Literal["deepseek_r1", "qwen3"] | None = Field(
        None, description="moves <think> reasoning to reasoning_content (as vLLM's --reasoning-parser)"
    )
    # ---- hardening (issue #16) ----
    client_api_keys: SecretStr | None = Field(
        None, description="comma-separated client keys (or sha256:<hex> of one) that /v1/* requires"
    )
    client_api_keys_file: str | None = Field(None, description="file of client keys, one a line (a mounted Secret)")
    allow_penalties: bool = Field(False, description="forward presence/frequency/repetition penalties (vLLM#57719)")
    max_messages: int = Field(2048, ge=1, description="most messages in one chat request")
    max_chars_per_token: float = Field(
        16, gt=0, description="a prompt longer than this many characters per context token is refused untokenized"
    )
    max_batch_tokens: int = Field(65536, ge=1, description="most tokens across the prompts of one completions list")
    max_upstream_response_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest whole (non-streamed) upstream answer read"
    )
    max_sse_line_bytes: int = Field(1024 * 1024, ge=1024, description="longest upstream server-sent-event line")
    request_headers_to_add: dict[str, SecretStr] = Field(
        default_factory=dict, description="Name=value,... headers added to every upstream request (values secret)"
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve /metrics on this port (gunicorn's master), not on the API's"
    )

    @field_validator("request_headers_to_add", mode="before")
    @classmethod
    def _headers_to_add(cls, value: Any) -> Any:
        return parse_headers_to_add(value) if isinstance(value, str) else value

    @field_validator("inference_service_host")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _chat_without_decryption(self) -> Settings:
        """Chat upstream answers are relayed as they come; decrypting them is not built (yet)."""
        if self.upstream_api == "chat" and self.output_decryption:
            raise ValueError(
                "SGP_UPSTREAM_API=chat cannot be combined with SGP_OUTPUT_DECRYPTION=True: "
                "use SGP_UPSTREAM_API=completions for output decryption"
            )
        return self

    @model_validator(mode="after")
    def _parsers_need_the_completions_upstream(self) -> Settings:
        """A chat upstream renders the prompt itself: tools would reach it as plain text, and it parses its answers."""
        if self.upstream_api == "chat" and (self.tool_parser or self.reasoning_parser):
            raise ValueError(
                "SGP_TOOL_PARSER and SGP_REASONING_PARSER need SGP_UPSTREAM_API=completions: a chat upstream "
                "parses its own answers (start vLLM with --reasoning-parser), and tools cannot go to it obfuscated"
            )
        return self

    @model_validator(mode="after")
    def _client_keys_readable(self) -> Settings:
        """A key list that does not parse stops start-up (an open proxy is never the fallback)."""
        self.client_key_digests()
        return self

    def client_key_digests(self) -> tuple[bytes, ...]:
        """SHA-256 digests of the accepted client keys; empty when no key is configured (the proxy is open)."""
        digests: list[bytes] = []
        if self.client_api_keys is not None:
            entries = self.client_api_keys.get_secret_value().split(",")
            found = _key_digests(entries, PREFIX + "CLIENT_API_KEYS")
            if not found:
                raise ValueError(f"{PREFIX}CLIENT_API_KEYS: holds no key")
            digests += found
        if self.client_api_keys_file:
            name = PREFIX + "CLIENT_API_KEYS_FILE"
            try:
                lines = Path(self.client_api_keys_file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{name}: cannot read {self.client_api_keys_file}: {type(exc).__name__}") from None
            found = _key_digests([ln for ln in lines if not ln.strip().startswith("#")], name)
            if not found:
                raise ValueError(f"{name}: {self.client_api_keys_file} holds no key")
            digests += found
        return tuple(dict.fromkeys(digests))

    @model_validator(mode="after")
    def _one_upstream_authorization(self) -> Settings:
        """Basic auth and an added Authorization header would both claim the one Authorization header."""
        added = {name.lower() for name in self.request_headers_to_add}
        if "authorization" in added and self.upstream_basic_auth is not None:
            raise ValueError(
                "SGP_REQUEST_HEADERS_TO_ADD cannot add Authorization when SGP_API_USERNAME and SGP_API_PASSWORD "
                "are set: use one or the other"
            )
        return self

    @property
    def upstream_headers_to_add(self) -> dict[str, str]:
        """SGP_REQUEST_HEADERS_TO_ADD with the values revealed (for the upstream client only)."""
        return {name: value.get_secret_value() for name, value in self.request_headers_to_add.items()}

    @property
    def upstream_basic_auth(self) -> tuple[str, str] | None:
        if self.api_username and self.api_password:
            return self.api_username, self.api_password.get_secret_value()
        return None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``SGP_*`` variables; raise :class:`SettingsError` naming the bad one."""
        env = os.environ if env is None else env
        values = {
            name: env[PREFIX + name.upper()] for name in cls.model_fields if env.get(PREFIX + name.upper(), "") != ""
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            if not first["loc"]:  # a rule across variables: its message names them
                raise SettingsError(str(first["msg"]).removeprefix("Value error, ")) from None
            raise SettingsError(f"{PREFIX + str(first['loc'][0]).upper()}: {first['msg']}") from None

    def describe(self) -> dict[str, object]:
        """Settings safe to log: secrets masked."""
        out = self.model_dump()
        out["api_password"] = "***" if self.api_password else None
        out["client_api_keys"] = "***" if self.client_api_keys else None
        out["request_headers_to_add"] = {name: "***" for name in self.request_headers_to_add}
        return out


_SHA256 = re.compile(r"sha256:([0-9a-fA-F]{64})")


def _key_digests(entries: list[str], name: str) -> list[bytes]:
    """``sha256:<64 hex>`` is a key's digest, anything else the key itself; blank entries are skipped."""
    digests = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        if entry.lower().startswith("sha256:"):
            match = _SHA256.fullmatch(entry)
            if match is None:
                raise ValueError(f"{name}: an entry starting sha256: must be followed by 64 hex digits")
            digests.append(bytes.fromhex(match.group(1)))
        else:
            digests.append(hashlib.sha256(entry.encode("utf-8")).digest())
    return digests


TRACES_EXPORTERS = ("otlp", "console", "none")


def traces_exporter(env: Mapping[str, str] | None = None) -> str | None:
    """The OpenTelemetry span exporter the standard ``OTEL_*`` variables ask for, or None: tracing off.

    Off by default: on only when ``OTEL_TRACES_EXPORTER`` names an exporter, or an OTLP endpoint
    (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set (then ``otlp``).
    ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set. The SDK reads the other ``OTEL_*``
    variables itself (endpoint, headers, service name, sampler).
    """
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        if exporter not in TRACES_EXPORTERS:
            raise SettingsError(f"OTEL_TRACES_EXPORTER: must be one of {', '.join(TRACES_EXPORTERS)}, not {exporter!r}")
        return None if exporter == "none" else exporter
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None
