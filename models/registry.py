"""The model registry: model.yaml + card + weights per name/version, checked by SHA-256.

Built-in models live in ``models/zoo/NAME/VERSION/``; a site adds its own (e.g. the MONAI
bundle's weights) under ``$PACS_HOME/models/NAME/VERSION/`` with ``pacs model add``. Nothing
is ever fetched from a network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from models.errors import ChecksumMismatch, UnknownModel
from models.spec import ModelSpec

BUILTIN = Path(__file__).parent / "zoo"
SPEC_FILE = "model.yaml"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_file(path: Path, sha256: str, what: str) -> Path:
    """*path* (*what*: how the errors name it), after checking it hashes to *sha256*.

    Raises
    ------
    ChecksumMismatch
        The file is missing or its bytes are other ones.
    """
    if not path.is_file():
        raise ChecksumMismatch(f"{what} {path} is missing")
    actual = sha256_of(path)
    if actual != sha256:
        raise ChecksumMismatch(
            f"{what} {path} has SHA-256 {actual}, the model records {sha256}; refusing to load it"
        )
    return path


@dataclass(frozen=True)
class Entry:
    spec: ModelSpec
    folder: Path

    @property
    def weights(self) -> Path:
        return self.folder / self.spec.weights

    @property
    def card(self) -> str:
        path = self.folder / self.spec.card
        return path.read_text() if path.is_file() else ""

    def verified_weights(self) -> Path:
        """The weights file, after checking it hashes to the spec's SHA-256."""
        return verified_file(self.weights, self.spec.sha256, f"{self.spec.key}: weights file")


class Registry:
    """Models found under the given roots (later roots win for the same name and version)."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots

    def entries(self) -> list[Entry]:
        found: dict[str, Entry] = {}
        for root in self.roots:
            for spec_file in sorted(root.glob(f"*/*/{SPEC_FILE}")):
                spec = ModelSpec.read(spec_file)
                found[spec.key] = Entry(spec, spec_file.parent)
        return sorted(found.values(), key=lambda e: (e.spec.name, _version_key(e.spec.version)))

    def get(self, name: str, version: str | None = None) -> Entry:
        """The named model at ``version``, or its newest version."""
        matches = [e for e in self.entries() if e.spec.name == name]
        if version is not None:
            matches = [e for e in matches if e.spec.version == version]
        if not matches:
            known = ", ".join(e.spec.key for e in self.entries()) or "none"
            wanted = name if version is None else f"{name}:{version}"
            raise UnknownModel(f"no model {wanted} in the registry (known: {known})")
        return matches[-1]


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    parts: list[tuple[int, int | str]] = []
    for part in version.replace("-", ".").replace("+", ".").split("."):
        parts.append((0, int(part)) if part.isdigit() else (1, part))
    return tuple(parts)
