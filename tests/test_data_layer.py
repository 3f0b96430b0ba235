"""The data layer's structure: one entry point that picks a backend by name or by what the path holds, a registry
a new format joins without touching the entry point or train.py, errors worded by meaning (the CLI by flag), and no
import cycle inside partialconv/data."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import partialconv.data
from partialconv.config import parse_config
from partialconv.data import (
    Backend,
    BadImageError,
    ClassificationFolder,
    DataError,
    DataParams,
    Splits,
    backend_names,
    batch_to_device,
    build_loaders,
    register_backend,
    unregister_backend,
)
from partialconv.data.demo import make_demo_dataset
from partialconv.data.errors import PARAM_NAMES
from partialconv.data.gpu_decode import EncodedImageFolder, GpuDecodeLoader
from partialconv.data.sampler import sample_seed
from partialconv.engine.data_setup import DATA_OPTIONS, data_error_message, data_params, loaders_from_config
from partialconv.engine.distributed import DistInfo
from partialconv.programs import train

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
DATA_PACKAGE = Path(partialconv.data.__file__).parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "d", train_per_class=2, val_per_class=1, size=16)


# ------------------------------------------------------------------------------------------- a toy format, in memory
TOY_CLASSES = ["circle", "square", "triangle"]
TOY_MARKER = "toy.json"  # what a toy dataset directory holds: {"train": N, "val": M, "bad": [indices]}


class ToyImages(Dataset):
    """A format no other backend reads: images made in memory, one of them unreadable. Follows the sample protocol:
    ``dataset[(index, seed)]`` -> ``(image, target)`` with a seeded flip, ``None`` for a bad sample under skip."""

    def __init__(self, count: int, bad: list[int], on_bad_image: str, offset: int) -> None:
        generator = torch.Generator().manual_seed(offset)
        self.images = torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=generator)
        self.targets = [(i + offset) % len(TOY_CLASSES) for i in range(count)]
        self.bad, self.on_bad_image = set(bad), on_bad_image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        if index in self.bad:
            if self.on_bad_image == "error":
                raise BadImageError.of(f"toy[{index}]", ValueError("unreadable"))
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            flip = bool(torch.rand(1) < 0.5)
        image = self.images[index].float() / 255
        return (image.flip(-1) if flip else image), self.targets[index]


def _is_toy(path: Path) -> bool:
    return (path / TOY_MARKER).is_file()


def _open_toy(params: DataParams) -> Splits:
    spec = json.loads((Path(params.train_dir) / TOY_MARKER).read_text())
    train_set = ToyImages(spec["train"], spec["bad"], params.on_bad_image, offset=0)
    val_set = ToyImages(spec["val"], [], params.on_bad_image, offset=1)
    return Splits(train_set, val_set, TOY_CLASSES)


@pytest.fixture
def toy(tmp_path):
    """The toy backend registered as a sibling of pil/gpu (default loader: torch's DataLoader), and a directory of
    its format; unregistered afterwards."""
    register_backend(Backend("toy", _open_toy, detect=_is_toy, help="in-memory test images"))
    root = tmp_path / "toy"
    root.mkdir()
    (root / TOY_MARKER).write_text(json.dumps({"train": 10, "val": 5, "bad": [3]}))
    yield root
    unregister_backend("toy")


# ---------------------------------------------------------------------------------------------- picking a backend
def test_entry_point_picks_the_backend_by_name(folder):
    base = dict(train_dir=folder / "train", val_dir=folder / "val", batch_size=4, workers=0, train_crop_size=16)
    pil = build_loaders(DataParams(**base, backend="pil"), CPU)
    gpu = build_loaders(DataParams(**base, backend="gpu"), CPU)
    assert (pil.backend, gpu.backend) == ("pil", "gpu")
    assert isinstance(pil.train, DataLoader) and isinstance(pil.train.dataset, ClassificationFolder)
    assert isinstance(gpu.train, GpuDecodeLoader) and isinstance(gpu.train.dataset, EncodedImageFolder)
    assert pil.classes == gpu.classes == sorted(p.name for p in (folder / "train").iterdir())
    (images, targets, bad), (gpu_images, gpu_targets, gpu_bad) = next(iter(pil.train)), next(iter(gpu.train))
    assert images.shape == gpu_images.shape == (4, 3, 16, 16) and torch.equal(targets, gpu_targets)
    assert bad == gpu_bad == 0


def test_auto_picks_the_backend_by_what_the_path_holds(folder, toy):
    # an ImageFolder no backend detects: turbo, whose decoder the dev extra installs (else pil: test_data_turbo.py)
    assert build_loaders(DataParams(folder / "train", folder / "val", 4, 0), CPU).backend == "turbo"
    assert build_loaders(DataParams(toy, toy, 4, 0), CPU).backend == "toy"
    assert build_loaders(DataParams(toy, toy, 4, 0, backend="toy"), CPU).backend == "toy"


def test_unknown_backend_is_one_clear_error(folder):
    params = DataParams(folder / "train", folder / "val", 4, 0, backend="webdataset")
    with pytest.raises(DataError) as raised:
        build_loaders(params, CPU)
    assert (
        str(raised.value) == "data backend webdataset: unknown (registered: pil, gpu, pil_fast, shards, turbo, or auto)"
    )
    assert (
        data_error_message(raised.value)
        == "--data-backend webdataset: unknown (registered: pil, gpu, pil_fast, shards, turbo, or auto)"
    )
    with pytest.raises(TypeError, match="takes DataParams"):  # the argparse namespace is the CLI's, not the library's
        build_loaders(parse_config(["--data_train", str(folder / "train"), "--data_val", str(folder / "val")]), CPU)


def test_library_errors_name_the_parameter_and_the_cli_names_the_flag(tmp_path, folder):
    params = DataParams(tmp_path / "nope", folder / "val", 4, 0)
    with pytest.raises(DataError, match=f"^train directory {tmp_path / 'nope'}: no such directory$"):
        build_loaders(params, CPU)
    cfg = parse_config(["--data_train", str(tmp_path / "nope"), "--data_val", str(folder / "val"), "-j", "0"])
    with pytest.raises(DataError, match=f"^--data_train {tmp_path / 'nope'}: no such directory$"):
        loaders_from_config(cfg, CPU)
    flags = ["--data_train", str(folder / "train"), "--data_val", str(folder / "val"), "-j", "0", "-b", "4"]
    cfg = parse_config([*flags, "--data-backend", "gpu", "--train-min-scale", "0.5"])
    with pytest.raises(DataError, match=r"^--train-min-scale 0.5: --data-backend gpu crops with scale \(0.08, 1.0\)$"):
        loaders_from_config(cfg, CPU)
    with pytest.raises(DataError, match=r"^train min scale 0.5: data backend gpu crops with scale \(0.08, 1.0\)$"):
        build_loaders(data_params(cfg), CPU)
    with pytest.raises(DataError, match="^batch size 3 must be divisible by the 2 processes$"):
        build_loaders(DataParams(folder / "train", folder / "val", 3, 0), DistInfo(0, 0, 2, torch.device("cpu")))


def test_every_data_parameter_has_a_meaning_a_flag_and_a_config_value(folder):
    fields = {f.name for f in dataclasses.fields(DataParams)}
    assert set(PARAM_NAMES) == set(DATA_OPTIONS) == fields
    argv = ["--data_train", "t", "--data_val", "v", "-b", "6", "-j", "1", "--data-backend", "gpu", "--seed", "3"]
    argv += ["--train-crop-size", "20", "--train-min-scale", "0.5", "--val-resize-size", "30", "--val-crop-size", "24"]
    params = data_params(parse_config([*argv, "--on-bad-image", "error", "--channels-last"]))
    assert params == DataParams("t", "v", 6, 1, "gpu", 20, 0.5, 30, 24, "error", 3, True)


# ---------------------------------------------------------------------------------- a new format, end to end
@pytest.mark.parametrize("workers", [0, 1])
def test_a_registered_backend_runs_through_the_sampler_loader_and_batch_to_device(toy, workers):
    loaders = build_loaders(DataParams(toy, toy, batch_size=4, workers=workers, seed=7), CPU)
    assert loaders.classes == TOY_CLASSES and loaders.train_sampler.steps_per_epoch() == 2 == len(loaders.train)
    reference = _open_toy(DataParams(toy, toy, 4))
    for epoch in (0, 1):
        loaders.train_sampler.set_epoch(epoch)
        keys = list(loaders.train_sampler)
        assert all(seed == sample_seed(7, epoch, index) for index, seed in keys)  # (index, seed) keys
        batches = list(loaders.train)
        assert len(batches) == 2 and sum(bad for _, _, bad in batches) == sum(i == 3 for i, _ in keys)
        for step, (images, targets, bad) in enumerate(batches):
            step_keys = keys[4 * step : 4 * step + 4]
            good = [reference.train[k] for k in step_keys if k[0] != 3]
            assert bad == 4 - len(good)
            assert torch.equal(images, torch.stack([image for image, _ in good]))  # the seeded flip, per sample
            assert targets.tolist() == [target for _, target in good]
            images, targets = batch_to_device(images, targets, torch.device("cpu"), channels_last=True)
            assert images.is_contiguous(memory_format=torch.channels_last) and targets.dtype == torch.long
    assert sum(len(t) for _, t, _ in loaders.val) == 5  # the exact eval split


def test_a_registered_backend_trains_with_train_py_unchanged(toy, tmp_path, capsys):
    """--data-backend takes the registry's names: the toy format trains through train.py as it is, and its bad
    sample under --on-bad-image error is train.py's one error line."""
    assert "toy" in backend_names()
    argv = ["-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "4", "--epochs", "1", "--no-tensorboard"]
    argv += ["--data_train", str(toy), "--data_val", str(toy), "--data-backend", "toy", "--train-crop-size", "16"]
    argv += ["--val-resize-size", "16", "--val-crop-size", "16"]
    assert train.cli([*argv, "--output-dir", str(tmp_path / "run")]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and record["bad_images"] in (0, 1)
    capsys.readouterr()
    toy_json = json.loads((toy / TOY_MARKER).read_text())
    (toy / TOY_MARKER).write_text(json.dumps({**toy_json, "bad": list(range(10))}))  # every step draws a bad one
    assert train.cli([*argv, "--output-dir", str(tmp_path / "err"), "--on-bad-image", "error"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert line.startswith("train.py: error: bad image toy[") and line.endswith(
        "]: ValueError: unreadable (use --on-bad-image skip)"
    ), line


# ----------------------------------------------------------------------------------------------- import cycles
def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The partialconv modules ``module`` imports, at module level or lazily inside functions (not under
    ``if TYPE_CHECKING:``, which never runs)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                prefix = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{prefix}.{base}" if base else prefix
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in modules and m != module}


def import_cycles(package_dir: Path, package: str) -> list[list[str]]:
    """Every import cycle among the modules of ``package`` (Tarjan's strongly connected components)."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("").parts
        rel = rel[:-1] if rel[-1] == "__init__" else rel
        files[".".join((package, *rel))] = path
    graph = {m: _imports(p, m, set(files)) for m, p in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in graph[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while not component or component[-1] != m:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    return cycles


def test_no_import_cycle_inside_the_data_package():
    assert import_cycles(DATA_PACKAGE, "partialconv.data") == []


def test_no_import_cycle_inside_the_whole_package():
    assert import_cycles(DATA_PACKAGE.parent, "partialconv") == []


def test_the_cycle_check_sees_lazy_imports(tmp_path):
    """The check itself: two modules importing each other, one of them inside a function, are a cycle."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from . import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import x\n")
    (package / "d.py").write_text("from .c import y\n")
    assert import_cycles(package, "pkg") == [["pkg.a", "pkg.b"]]


def test_backends_are_siblings_that_never_import_each_other():
    modules = {f"partialconv.data.{p.stem}" for p in DATA_PACKAGE.glob("*.py")}
    pil, gpu = "partialconv.data.datasets", "partialconv.data.gpu_decode"
    assert pil not in _imports(DATA_PACKAGE / "gpu_decode.py", gpu, modules)
    assert gpu not in _imports(DATA_PACKAGE / "datasets.py", pil, modules)
