"""Content hashes that tie an export folder together, and the checks every reader runs.

`cg-export` records the sha256 of every file it writes in export_report.json (`sha256`) and a
hash of the report itself (`report_sha256`: canonical JSON of the report without that key).
Readers call `read_export(folder)`, which refuses a report or artefact changed, truncated or
swapped since the export, and `check_model_input(report, tflite)`, which refuses a report whose
input shape or quantization is not the model's. Each refusal is one IntegrityError line.

    report = read_export(Path("exports/demo"))     # raises IntegrityError on any mismatch
"""
import hashlib
import json
import math
from pathlib import Path

REPORT = "export_report.json"


class IntegrityError(ValueError):
    """An export file is missing, changed since the export, or disagrees with its report."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(report: dict) -> bytes:
    """The report as hashed: sorted keys, no whitespace, no report_sha256, no NaN."""
    body = {k: v for k, v in report.items() if k != "report_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def seal(report: dict, folder: Path) -> dict:
    """`report` with the hash of every file in `folder` but the report, and its own hash."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != REPORT)
    sealed = {**report, "sha256": {p.name: sha256(p.read_bytes()) for p in files}}
    return {**sealed, "report_sha256": sha256(canonical(sealed))}


def load_report(folder: Path) -> dict:
    """The parsed export_report.json of `folder` (a dict), hash not yet checked."""
    path = folder / REPORT
    try:
        report = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise IntegrityError(f"{folder} is not a complete export: {REPORT} is missing (run cg-export first)") from None
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, a 5,000-digit number, nesting too deep
        raise IntegrityError(f"{path} is not valid JSON ({str(e)[:80] or type(e).__name__})") from None
    if not isinstance(report, dict):
        raise IntegrityError(f"{path} is not an export report (not a JSON object)")
    return report


def verify(folder: Path, report: dict) -> None:
    """Refuse unless the report and every file it lists hash to what the export recorded."""
    path = folder / REPORT
    hashes = report.get("sha256")
    if not isinstance(hashes, dict) or not isinstance(report.get("report_sha256"), str):
        raise IntegrityError(f"{path} records no content hashes: export the checkpoint again")
    try:
        own = sha256(canonical(report))
    except (TypeError, ValueError):
        own = None
    if own != report["report_sha256"]:
        raise IntegrityError(f"{path} was changed since the export (its hash differs): export again")
    for name, expected in hashes.items():
        artefact = folder / name
        if Path(name).name != name or not artefact.is_file():
            raise IntegrityError(f"{folder} is not a complete export: {name} is missing")
        if sha256(artefact.read_bytes()) != expected:
            raise IntegrityError(f"{artefact} was changed or corrupted since the export (sha256 differs "
                                 f"from {REPORT}): export again")


def read_export(folder: Path) -> dict:
    """The report of the export in `folder`, once it and every file it lists check out."""
    report = load_report(folder)
    verify(folder, report)
    return report


def check_model_input(report: dict, tflite: bytes) -> None:
    """Refuse a report whose input shape, scale or zero point is not the int8 model's."""
    from cosinegate.export.restructure import input_quantization, read_model
    try:
        subgraph = read_model(tflite).subgraphs[0]
        shape = [int(d) for d in subgraph.tensors[subgraph.inputs[0]].shape]
        scale, zero_point = input_quantization(tflite)
    except Exception:  # the flatbuffer reader fails in many ways on bytes that are no model
        raise IntegrityError(f"the int8 model ({len(tflite)} bytes) is not a readable TFLite flatbuffer") from None
    info = report.get("input") or {}
    if (info.get("shape") != shape or not isinstance(info.get("scale"), (int, float))
            or not math.isclose(info["scale"], scale, rel_tol=1e-6) or info.get("zero_point") != zero_point):
        raise IntegrityError(f"the report's input (shape {info.get('shape')}, scale {info.get('scale')}, "
                             f"zero point {info.get('zero_point')}) is not the model's (shape {shape}, "
                             f"scale {scale:.9g}, zero point {zero_point})")
