"""Read a Prometheus text exposition twice: with prometheus_client's own parser (an
independent reading of the format) and with a strict checker of the grammar that parser
forgives (every sample under its family's HELP and TYPE, one family block each, escaped
label values, histogram buckets cumulative and ending at +Inf = _count)."""

from __future__ import annotations

import math
import re

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["parse_exposition", "sample_value"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)\}})? ({_VALUE})")
_HELP = re.compile(rf"# HELP ({_NAME}) (.*)")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}


def _check_strictly(text: str) -> None:
    assert text.endswith("\n"), "an exposition ends with a newline"
    seen: set[str] = set()
    family = kind = None
    buckets: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            match = _HELP.fullmatch(line)
            assert match, where
            family = match.group(1)
            assert family not in seen, f"{where}: family {family} appears twice"
            seen.add(family)
            kind = None
            continue
        if line.startswith("# TYPE "):
            match = _TYPE.fullmatch(line)
            assert match, where
            assert match.group(1) == family, f"{where}: TYPE is not for the family of its HELP"
            kind = match.group(2)
            continue
        assert not line.startswith("#"), f"{where}: unknown comment"
        match = _SAMPLE.fullmatch(line)
        assert match, f"{where}: not a sample line"
        assert family is not None and kind is not None, f"{where}: sample before HELP and TYPE"
        name, labels, value = match.groups()
        suffix = name[len(family) :]
        assert name.startswith(family) and suffix in _SUFFIXES[kind], f"{where}: not of {family}"
        if kind == "histogram":
            pairs = dict(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', labels or ""))
            key = ",".join(f"{k}={v}" for k, v in sorted(pairs.items()) if k != "le")
            if suffix == "_bucket":
                le = pairs["le"]
                buckets.setdefault(key, []).append((math.inf if le == "+Inf" else float(le),
                                                    float(value)))  # fmt: skip
            elif suffix == "_count":
                counts[key] = float(value)
    for key, rows in buckets.items():
        bounds = [bound for bound, _ in rows]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf, f"{key}: bucket bounds {bounds}"
        values = [count for _, count in rows]
        assert values == sorted(values), f"{key}: buckets are not cumulative: {values}"
        assert values[-1] == counts[key], f"{key}: the +Inf bucket is not _count"


def parse_exposition(text: str) -> list[Sample]:
    """Every sample, as prometheus_client reads it, after the strict check passed."""
    _check_strictly(text)
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def sample_value(samples: list[Sample], metric: str, /, **labels: str) -> float:
    """The value of the one sample called ``metric`` with (at least) these labels."""
    found = [s.value for s in samples if s.name == metric and labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples"
    return float(found[0])
