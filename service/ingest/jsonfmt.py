"""JSON uploads: ``{"samples": [[...], ...], "weights": [...]}`` (weights optional); float64."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from service.ingest.base import Limits, Parsed, from_array, invalid, too_large


def _no_constants(name: str) -> Any:
    raise invalid(f"JSON {name} is not a number: samples must be finite")


def _numbers(value: Any, what: str, limits: Limits) -> np.ndarray:
    if not isinstance(value, list):
        raise invalid(f'"{what}" must be an array')
    if what == "samples" and value and isinstance(value[0], list) and len(value[0]) > limits.max_d:
        raise too_large(f"d={len(value[0])} dimensions is more than the limit of {limits.max_d}")
    try:
        a = np.array(value)
    except ValueError:
        raise invalid(
            f'"{what}" must be a rectangular array of numbers (rows of equal length)'
        ) from None
    if a.dtype.kind not in "iuf" and a.size:
        raise invalid(f'"{what}" must hold only numbers (got {a.dtype.name} values)')
    if a.dtype.kind in "iu" or a.size == 0:
        a = a.astype(np.float64)
    return a


def parse(path: Path, limits: Limits) -> Parsed:
    """Parse the JSON document into float64 samples and optional weights."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise invalid("the JSON body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise invalid(f"malformed JSON: {e}") from None
    except RecursionError:
        raise invalid("malformed JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid('the JSON body must be an object {"samples": [[...]], "weights": [...]}')
    extra = set(doc) - {"samples", "weights"}
    if extra:
        raise invalid(f"unknown JSON keys {sorted(extra)}: only samples and weights are read")
    if "samples" not in doc:
        raise invalid('the JSON body needs a "samples" array')
    samples = _numbers(doc["samples"], "samples", limits)
    weights = None
    if doc.get("weights") is not None:
        weights = _numbers(doc["weights"], "weights", limits)
        if weights.ndim != 1:
            raise invalid('"weights" must be a flat array of numbers, one per sample')
    if samples.dtype != np.float64:
        samples = samples.astype(np.float64)
    return from_array(samples, weights, limits)
