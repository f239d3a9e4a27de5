"""The MLflow model registry over its REST API (no mlflow package), and the on-disk model cache."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ONNX_FILE = "model.onnx"
TIMEOUT_S = 10


class RegistryError(RuntimeError):
    """The registry or the artifact store did not answer (worth retrying)."""


class ChecksumError(RegistryError):
    """The downloaded artifact is not the one registered (retrying will not help)."""


class ArtifactMissing(RegistryError):
    """The registry answers but the version's model.onnx is not in the artifact store (a load failure)."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    sha256: str | None


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:  # noqa: S310 - configured URL
            payload: dict[str, Any] = json.load(resp)
            return payload
    except urllib.error.HTTPError as exc:
        raise RegistryError(f"GET {url}: HTTP {exc.code} {exc.read()[:200]!r}") from exc
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise RegistryError(f"GET {url}: {exc}") from exc


class RegistryClient:
    """Resolves an alias to a version and downloads that version's ONNX artifact."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def resolve(self, name: str, alias: str) -> ModelRef:
        query = urllib.parse.urlencode({"name": name, "alias": alias})
        answer = _get_json(f"{self.base}/api/2.0/mlflow/registered-models/alias?{query}")
        try:
            mv = answer["model_version"]
            tags = {t["key"]: t["value"] for t in mv.get("tags", [])}
            return ModelRef(name, str(mv["version"]), tags.get("onnx.sha256"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(f"unexpected answer for {name}@{alias}: {str(answer)[:200]}") from exc

    def download(self, ref: ModelRef) -> bytes:
        """The version's model.onnx, checked against the checksum recorded at registration."""
        query = urllib.parse.urlencode({"name": ref.name, "version": ref.version})
        answer = _get_json(f"{self.base}/api/2.0/mlflow/model-versions/get-download-uri?{query}")
        uri = answer.get("artifact_uri") if isinstance(answer, dict) else None
        if not isinstance(uri, str):
            raise RegistryError(f"no artifact location for {ref.name} v{ref.version}: {str(answer)[:200]}")
        payload = self._fetch(f"{uri.rstrip('/')}/{ONNX_FILE}")
        digest = hashlib.sha256(payload).hexdigest()
        if ref.sha256 and digest != ref.sha256:
            raise ChecksumError(f"{ref.name} v{ref.version}: checksum {digest[:12]} does not match "
                                f"the registered {ref.sha256[:12]}")
        return payload

    def _fetch(self, uri: str) -> bytes:
        parts = urllib.parse.urlsplit(uri)
        try:
            if parts.scheme == "file":
                # Same-machine store (make demo / make up): read the file directly.
                return Path(urllib.parse.unquote(parts.path)).read_bytes()
            if parts.scheme == "mlflow-artifacts":
                url = f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{parts.path.lstrip('/')}"
            elif parts.scheme in ("http", "https"):
                url = uri
            else:
                raise RegistryError(f"unsupported artifact location {uri!r}")
            with urllib.request.urlopen(url, timeout=TIMEOUT_S * 6) as resp:  # noqa: S310
                data: bytes = resp.read()
                return data
        except FileNotFoundError as exc:
            raise ArtifactMissing(f"{uri} is not in the artifact store") from exc
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise ArtifactMissing(f"{uri} is not in the artifact store (HTTP 404)") from exc
            raise RegistryError(f"cannot fetch {uri}: {exc}") from exc
        except (OSError, urllib.error.URLError) as exc:
            raise RegistryError(f"cannot fetch {uri}: {exc}") from exc


class ModelCache:
    """The last good model on disk, so a restart serves even while the registry is away."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name

    def save(self, ref: ModelRef, payload: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for fname, data in ((ONNX_FILE, payload), ("ref.json", json.dumps(ref.__dict__).encode())):
            tmp = self.dir / f".{fname}.{os.getpid()}.tmp"  # server processes may save the same version at once
            tmp.write_bytes(data)
            tmp.replace(self.dir / fname)

    def peek(self) -> ModelRef | None:
        """The cached version's reference, without reading the model."""
        try:
            return ModelRef(**json.loads((self.dir / "ref.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def load(self) -> tuple[ModelRef, bytes] | None:
        ref = self.peek()
        if ref is None:
            return None
        try:
            payload = (self.dir / ONNX_FILE).read_bytes()
        except OSError:
            return None
        if ref.sha256 and hashlib.sha256(payload).hexdigest() != ref.sha256:
            return None
        return ref, payload
