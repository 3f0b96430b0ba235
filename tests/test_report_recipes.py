"""The report keeps runs of different modern recipes apart (issue 12's flags are recipe keys), while a run written
before a flag existed pools with runs that use that flag's default."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from partialconv.analysis import collect_runs, summarize


def write_run(root: Path, name: str, seed: int, acc: float, **config) -> None:
    run = root / "resnet18" / "zero" / name
    run.mkdir(parents=True)
    line = dict(epoch=1, epochs=1, arch="resnet18", padding="zero", val_acc1=acc, val_acc5=90.0, seed=seed)
    (run / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"epochs": 1, "lr": 0.1, "seed": seed, **config}))


def test_modern_recipe_flags_split_groups_and_missing_keys_mean_the_default(tmp_path):
    write_run(tmp_path, "old", 1, 50.0)  # written before --opt/--mixup-alpha existed
    write_run(tmp_path, "sgd", 2, 52.0, opt="sgd", mixup_alpha=0.0, model_ema=False)
    write_run(tmp_path, "adamw", 3, 60.0, opt="adamw", mixup_alpha=0.0, model_ema=False)
    write_run(tmp_path, "mixup", 4, 61.0, opt="sgd", mixup_alpha=0.2, model_ema=False)
    runs, _ = collect_runs(tmp_path)
    cells = {c.recipe: c for c in summarize(runs)}
    assert sorted(cells) == ["opt=adamw, mixup_alpha=0.0", "opt=sgd, mixup_alpha=0.0", "opt=sgd, mixup_alpha=0.2"]
    assert cells["opt=sgd, mixup_alpha=0.0"].n == 2  # the old run pooled with the explicit defaults
    assert cells["opt=adamw, mixup_alpha=0.0"].n == 1 and cells["opt=sgd, mixup_alpha=0.2"].n == 1


def test_runs_on_other_data_at_the_same_path_are_separate_groups(tmp_path):
    """metrics.jsonl's data_identity (shard index fingerprints, issue 22) is part of the recipe; runs on image folders
    (no identity) pool as before."""
    for name, seed, identity in (("a1", 1, "shards train A val V"), ("a2", 2, "shards train A val V")):
        write_run(tmp_path, name, seed, 50.0)
        path = tmp_path / "resnet18" / "zero" / name / "metrics.jsonl"
        path.write_text(json.dumps({**json.loads(path.read_text()), "data_identity": identity}) + "\n")
    write_run(tmp_path, "b", 3, 60.0)
    path = tmp_path / "resnet18" / "zero" / "b" / "metrics.jsonl"
    path.write_text(json.dumps({**json.loads(path.read_text()), "data_identity": "shards train B val V"}) + "\n")
    runs, _ = collect_runs(tmp_path)
    cells = {c.recipe: c.n for c in summarize(runs)}
    assert cells == {"data_identity=shards train A val V": 2, "data_identity=shards train B val V": 1}
