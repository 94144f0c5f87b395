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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

PREFIX = "SGP_"


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
    enable_stainedglass: bool = Field(
        False, description="serve POST /v1/stainedglass, a debugging aid that reveals the transform (else 404)"
    )
    stainedglass_max_values: int = Field(
        1 << 20, ge=1, description="most embedding values (tokens x hidden x arrays) one /v1/stainedglass answer holds"
    )
    upstream_api: Literal["completions", "chat"] = Field(
        "completions", description="upstream endpoint for chat requests: /v1/completions or /v1/chat/completions"
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
            return cls(**values)
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
