"""Register a site's copy of MONAI's ``lung_nodule_ct_detection`` bundle as a site model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from models.errors import InvalidModel
from models.registry import SPEC_FILE, Entry, sha256_of
from models.spec import Architecture, ModelSpec

NAME = "lung-nodule-ct-detection"
CARD = """# {name} {version} (site model: MONAI lung_nodule_ct_detection bundle)

- **What:** MONAI's 3D RetinaNet (ResNet-50 FPN backbone) from the `lung_nodule_ct_detection`
  bundle, configured as that bundle's `inference.json`: spacing 0.703125 x 0.703125 x 1.25 mm,
  HU -1024..300 -> 0..1, sliding window 512 x 512 x 192 with 0.25 overlap, score threshold 0.02,
  box NMS IoU 0.22.
- **Weights:** supplied by this site from `{source}` (SHA-256 `{sha256}`); trained by MONAI on
  LUNA16 (see the bundle's own model card and licence). Not trained or re-measured here.
- **Metrics:** the bundle publishes its LUNA16 FROC; run `python -m models.evaluate --model
  {name} --data lidc` to measure it on this archive's sample scans.
- **Intended use:** detection aid for research; follow the bundle's licence and your
  institution's rules for clinical use.
- **Cost:** about 61 TFLOP per 512 x 512 x 192 window; minutes per CT on a CPU, sub-second on
  a data-centre GPU.
"""


def import_bundle(bundle: Path, site_root: Path, version: str | None = None) -> Entry:
    """Copy the bundle's ``models/model.pt`` into ``site_root`` with a spec and card.

    The weights are loaded once before they are registered, so a file that does not fit
    the bundle's RetinaNet is refused here rather than at the first study.
    """
    weights = bundle / "models" / "model.pt"
    if not weights.is_file():
        raise InvalidModel(f"{bundle}: no models/model.pt (is this a MONAI bundle folder?)")
    metadata = bundle / "configs" / "metadata.json"
    if version is None:
        version = "site"
        if metadata.is_file():
            try:
                version = str(json.loads(metadata.read_text()).get("version", "site"))
            except json.JSONDecodeError as exc:
                raise InvalidModel(f"{metadata}: {exc}") from exc
    digest = sha256_of(weights)
    spec = ModelSpec(
        name=NAME,
        version=version,
        architecture=Architecture.MONAI_RETINANET,
        network={},
        spacing_mm=(0.703125, 0.703125, 1.25),
        hu_window=(-1024.0, 300.0),
        patch_size=(192, 512, 512),
        overlap=0.25,
        score_threshold=0.02,
        nms_overlap=1.0,
        max_detections=100,
        sha256=digest,
        intended_use="Site-supplied MONAI lung_nodule_ct_detection weights (LUNA16-trained).",
    )
    target = site_root / NAME / version
    staging = target.with_name(f".{version}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(weights, staging / spec.weights)
    (staging / spec.card).write_text(
        CARD.format(name=NAME, version=version, source=weights, sha256=digest)
    )
    spec.write(staging / SPEC_FILE)
    entry = Entry(spec, staging)
    from models.detector import load_detector

    try:
        load_detector(entry)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return Entry(spec, target)
