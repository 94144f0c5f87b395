"""Every ``SGP_*`` setting, typed and validated in one place.

Nothing else in the proxy reads the environment. A bad value stops start-up
with a message that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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
    tool_parser: Literal["hermes", "llama3_json", "mistral"] | None = Field(
        None, description="how tool calls are found in the generated text (as vLLM's --tool-call-parser)"
    )
    reasoning_parser: Literal["deepseek_r1", "qwen3"] | None = Field(
        None, description="moves <think> reasoning to reasoning_content (as vLLM's --reasoning-parser)"
    )

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
        return out
