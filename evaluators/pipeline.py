"""Ray Data scoring: (model x split) work items mapped over an actor pool, cached by content.

Work items are sorted by model so each actor loads a model once and keeps it while consecutive
items use it. Results are cached by (model digest, split request, scoring settings): scoring the
same thing twice costs nothing the second time. The digest of a sweep's export comes from its
manifest (`trainers.export`), of any other model from `source_digest`: no weight is read to key
the cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from calsweep.storage import is_uri, local_copy, remote_version
from evaluators.evaluate import SplitRequest, SplitResult, evaluate_split
from evaluators.settings import ScoringSettings


@dataclass(frozen=True)
class WorkItem:
    model_key: str
    model_path: str
    model_digest: str
    request: SplitRequest

    def cache_key(self, settings: ScoringSettings) -> str:
        payload = [self.model_digest, asdict(self.request), settings.model_dump()]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def source_digest(path_or_id: str) -> str:
    """An identity of a model that is not a sweep's export (whose digest its manifest records),
    without reading its weights: a hub id as itself; a local directory or a remote one by its
    files' names, sizes and modification times (a rewrite changes it)."""
    if is_uri(path_or_id) or Path(path_or_id).is_dir():
        return f"files:{remote_version(path_or_id)}"
    return f"hub:{path_or_id}"


def scoring_actor_class(settings: ScoringSettings, threads: int) -> type:
    """A Ray Data callable class bound to `settings`: it keeps one model loaded and scores the
    splits it is handed. Binding by closure keeps constructor arguments out of the object store
    (Ray warns that such actors cannot be restarted once those arguments are gone)."""

    class SplitScoringActor:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(threads)
            self.loaded_path: str | None = None
            self.scorer = None

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
            from evaluators.scoring import OptionScorer, load_model

            out: dict[str, list[Any]] = {"cache_key": [], "result": []}
            for item_json, key in zip(batch["item"], batch["cache_key"], strict=True):
                item = json.loads(item_json)
                if item["model_path"] != self.loaded_path:
                    local = local_copy(item["model_path"])  # a remote export: download once
                    model, tokenizer = load_model(local, dtype=settings.dtype)
                    self.scorer = OptionScorer(
                        model, tokenizer, settings.mode, settings.max_batch_tokens
                    )
                    self.loaded_path = item["model_path"]
                request = SplitRequest(**item["request"])
                result = evaluate_split(self.scorer, request, settings.metrics)
                out["cache_key"].append(key)
                out["result"].append(json.dumps(asdict(result)))
            return out

    return SplitScoringActor


def result_from_json(text: str) -> SplitResult:
    data = json.loads(text)
    return SplitResult(**{**data, "request": SplitRequest(**data["request"])})


def load_cached(cache_dir: Path, key: str) -> SplitResult | None:
    path = cache_dir / f"{key}.json"
    return result_from_json(path.read_text()) if path.is_file() else None


def store_cached(cache_dir: Path, key: str, result: SplitResult) -> None:
    """Write atomically: a crash never leaves a half-written cache entry behind."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"{key}.json.tmp"
    tmp.write_text(json.dumps(asdict(result)))
    tmp.replace(cache_dir / f"{key}.json")


def score_items(
    items: list[WorkItem],
    settings: ScoringSettings,
    *,
    num_actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    placement_group: Any = None,
) -> Iterator[tuple[WorkItem, SplitResult]]:
    """Score `items` on a Ray Data actor pool (in a reserved placement group if given), yielding
    each result as it arrives. Items are sorted by model, so an actor loads each model once."""
    by_key = {item.cache_key(settings): item for item in items}
    todo = sorted(
        by_key.values(),
        key=lambda item: (item.model_key, item.request.benchmark, item.request.language),
    )
    for key, text in _run_actor_pool(
        todo, settings, num_actors, cpus_per_actor, gpus_per_actor, placement_group
    ):
        yield by_key[key], result_from_json(text)


def _run_actor_pool(
    items: list[WorkItem],
    settings: ScoringSettings,
    num_actors: int,
    cpus: float,
    gpus: float,
    placement_group: Any,
) -> Iterator[tuple[str, str]]:
    if not items:
        return
    remote_args: dict[str, Any] = {}
    if placement_group is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        remote_args["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group)
    rows = [
        {"item": json.dumps(asdict(item)), "cache_key": item.cache_key(settings)} for item in items
    ]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        scoring_actor_class(settings, threads=max(1, round(cpus))),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(num_actors, len(rows))),
        num_cpus=cpus,
        num_gpus=gpus or None,
        **remote_args,
    )
    for row in dataset.iter_rows():
        yield row["cache_key"], row["result"]
