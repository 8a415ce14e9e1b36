"""Reading a Prometheus text exposition in tests (the PD's and the stores'
`GET /metrics`), with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families


class Samples:
    """Every sample of an exposition, by sample name (`x_total`,
    `x_bucket`, ...) and labels; the metric families' types by name."""

    def __init__(self, text: str) -> None:
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.values[s.name, frozenset(s.labels.items())] = s.value

    def get(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return self.values.get((name, frozenset((labels or {}).items())))

    def __getitem__(self, name: str) -> float:
        """The value of an unlabelled sample (KeyError if absent)."""
        return self.values[name, frozenset()]

    def labelled(self, name: str, label: str) -> dict[str, float]:
        """The samples of `name` by the value of its one label `label`."""
        return {
            dict(labels)[label]: v
            for (n, labels), v in self.values.items()
            if n == name and len(labels) == 1 and dict(labels).get(label) is not None
        }
