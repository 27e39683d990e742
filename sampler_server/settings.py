"""Server settings: one typed model, filled from the CLI and from `SAMPLER_*` environment variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Same default as sampler_server.streams.DEFAULT_BLOCK_TOKENS; not imported, so that reading the
# settings does not load numba.
DEFAULT_BLOCK_TOKENS = 1 << 20
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ServerSettings(BaseSettings):
    """Everything `sampler-server serve` needs; `SAMPLER_MANIFEST=...` etc. fill unset fields."""

    model_config = SettingsConfigDict(env_prefix="SAMPLER_", extra="forbid", frozen=True)

    manifest: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, os.PathLike) else v), Field(description="built manifest: a directory or a URI (s3://bucket/prefix?endpoint_override=...)")]
    cache_dir: Annotated[Path | None, Field(description="local cache of remote shards (default: ~/.cache)")] = None
    cache_bytes: Annotated[int, Field(gt=0, description="bound of the shard cache in bytes")] = 64 << 30
    recipe: Annotated[Path, Field(description="recipe TOML file")]
    seed: Annotated[int, Field(ge=0, lt=2**64, description="sampling seed (the masks and the order of documents)")] = 0
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64, description="uvicorn worker processes (spawned)")] = 1
    token: SecretStr | None = Field(default=None, description="bearer token required on all but /healthz, /readyz")
    verify: bool = Field(default=False, description="check every shard's sha256 at start-up")
    progress_log: Path | None = Field(default=None, description="JSONL file that keeps trainer progress across restarts")
    progress_history: Annotated[int, Field(ge=1)] = 10_000
    variant: str | None = Field(default=None, description="phase variant served when a request names none "
                                "(default: each phase's first)")
    chunk: int | None = Field(default=None, ge=1, description="blend checkpoint interval in sequences "
                              "(default: the sampler's choice per segment)")
    block_tokens: Annotated[int, Field(ge=1, description="shuffle block size (tokens)")] = DEFAULT_BLOCK_TOKENS
    kernel_threads: Annotated[int, Field(ge=1, le=256, description="numba threads per batch")] = 1
    batch_threads: Annotated[int, Field(ge=1, le=64, description="threads assembling and encoding batches: two, so "
                                        "one slow batch (a cold remote shard) does not hold up the rest; more "
                                        "mostly contend for the GIL")] = 2
    index_dir: Path | None = Field(default=None, description="directory of persisted blend indexes (`Sampler.index_dir`)")
    prefetch: Annotated[int, Field(ge=0, le=16, description="batches /v1/stream assembles ahead of the one it sends")] = 2
    warmup: bool = Field(default=True, description="assemble step 0 at start-up (loads kernels, opens its shards)")
    journal: Annotated[str | None, BeforeValidator(lambda v: str(v) if isinstance(v, os.PathLike) else v)] = Field(
        default=None, description="amendment journal shared by every replica: a file (default: "
        "<recipe>.amendments.jsonl beside the recipe) or s3://bucket/key (default for a remote manifest)")
    amend_token: SecretStr | None = Field(default=None, description="bearer token for POST /v1/amendments "
                                          "(default: --token); amendments are refused when neither is set")
    journal_poll: Annotated[float, Field(gt=0, le=3600, description="seconds between journal checks")] = 1.0
    policy: Literal["none", "loss-balance"] = Field(default="none", description="feedback policy that amends the "
                                                     "mixture from reported per-language loss")
    policy_every: Annotated[int, Field(ge=1, description="steps between policy amendments")] = 200
    policy_lookahead: Annotated[int, Field(ge=1, description="steps ahead of the served watermark a policy "
                                           "amendment starts")] = 8
    policy_max_change: Annotated[float, Field(gt=0, le=1, description="largest relative change of a language's "
                                              "multiplier per amendment")] = 0.2
    policy_bounds: tuple[float, float] = Field(default=(0.5, 2.0), description="range of a language's multiplier")
    http: Literal["auto", "httptools", "h11"] = Field(default="auto", description="HTTP/1.1 parser: httptools "
                                                       "(C, from uvicorn[standard]) when installed, else h11 (pure Python)")
    loop: Literal["auto", "uvloop", "asyncio"] = Field(default="auto", description="event loop: uvloop (libuv) when "
                                                       "installed, else the standard asyncio loop")
    access_log: bool = True
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("cache_dir", "recipe", "progress_log", "index_dir", mode="before")
    @classmethod
    def _local_path(cls, v: object) -> object:
        """These live on this host's disk: a URI (s3://b/idx) became a local folder named `s3:`."""
        if isinstance(v, str) and _URI.match(v):
            raise ValueError(f"{v.split('?', 1)[0]} is a URI; this setting takes a local path")
        return v

    @field_validator("token", "amend_token", mode="before")
    @classmethod
    def _token_text(cls, v: object) -> object:
        """Surrounding whitespace is dropped (a secret mounted from a file ends with a newline: the
        server then compared against "abc\n" and nothing ever authenticated); inside, refused."""
        if isinstance(v, SecretStr):
            v = v.get_secret_value()
        if isinstance(v, str):
            v = v.strip()
            if any(c.isspace() for c in v) or not v.isprintable():
                raise ValueError("a bearer token cannot hold whitespace or control characters")
        return v

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None and self.token.get_secret_value() else None

    @property
    def amend_token_value(self) -> str | None:
        t = self.amend_token
        return t.get_secret_value() if t is not None and t.get_secret_value() else self.token_value
