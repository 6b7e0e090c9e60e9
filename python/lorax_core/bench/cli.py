"""The ``lorax-bench`` command: every method fine-tuned at the same budget, one table.

    lorax-bench --quick                      # 1 seed, learning rates from the configs
    lorax-bench                              # full: 3 seeds, learning rate from a grid
    lorax-bench --methods lora dora --datasets tweets --seeds 0 1
    lorax-bench --report-only                # rewrite the outputs from the cached runs

Runs are cached one JSON file each under ``<out>/runs/`` (named by a hash of everything that
determines them), so an interrupted table resumes where it stopped. Outputs go to
``<out>/<mode>/``: ``table.md``, ``results.json``, ``results.csv``, ``accuracy_vs_params.png``;
the splits (example ids) to ``<out>/splits/``, GeLoRA plans to ``<out>/plans/``. Bad input
prints one line on stderr (``lorax-bench: error: …``) and exits with status 2.

The protocol is in docs/comparison.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from lorax_core.bench.config import Experiments, MethodSpec, ModeSpec, load_experiments
from lorax_core.bench.data import Splits, load_splits, write_splits
from lorax_core.bench.report import Cell, summary_markdown, write_outputs
from lorax_core.bench.runner import make_spec, read_record, run, run_key, write_record

__all__ = ["main"]

DEFAULT_OUT = Path("benches") / "results" / "comparison"
#: Run first, in this order: the reference, GeLoRA's modes, BiDoRA and DoRA, ElaLoRA and AdaLoRA.
FIRST = (
    "lora",
    "gelora_tokens_budget",
    "gelora_mean_budget",
    "gelora_tokens_raw",
    "gelora_mean_raw",
    "dora",
    "bidora",
    "adalora",
    "elalora",
)


class UsageError(Exception):
    """Bad command-line input (reported in one line, exit status 2)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lorax-bench",
        description="Fine-tune every adapter method at the same budget and tabulate the results.",
    )
    p.add_argument("--quick", action="store_true", help="quick mode: 1 seed, config LRs")
    p.add_argument("--models", nargs="+", metavar="NAME", help="subset of the mode's models")
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="subset of the datasets")
    p.add_argument("--methods", nargs="+", metavar="NAME", help="subset of the methods")
    p.add_argument("--seeds", nargs="+", metavar="SEED", help="seeds (default: the mode's)")
    p.add_argument("--steps", metavar="N", help="optimizer steps for every model (override)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    p.add_argument("--jobs", default="1", metavar="N", help="runs at the same time (default 1)")
    p.add_argument(
        "--threads", metavar="N", help="torch CPU threads per run (default: 2 / jobs, at least 1)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    p.add_argument("--experiments", type=Path, help="folder of experiment files")
    p.add_argument("--inline", action="store_true", help="run in this process (no worker)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the outputs")
    p.add_argument("--list", action="store_true", help="list the runs and whether cached")
    p.add_argument(
        "--summary", action="store_true", help="print the compact table of the mode's results"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _int(text: str, name: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name} must be an integer >= {low}, got {text!r}") from None
    if value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value}")
    return value


def _subset(given: list[str] | None, allowed: list[str], name: str) -> list[str]:
    if given is None:
        return allowed
    for item in given:
        if item not in allowed:
            raise UsageError(f"{name} must be among {', '.join(allowed)}, got {item!r}")
    return [a for a in allowed if a in given]


def _device(text: str) -> str:
    import torch

    if text == "cpu":
        return "cpu"
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device must be cpu or an available CUDA device, got {text!r} "
                "(torch sees no CUDA device)"
            )
        try:
            return str(torch.device(text))
        except RuntimeError:
            raise UsageError(f"--device must be cpu or cuda[:i], got {text!r}") from None
    raise UsageError(f"--device must be cpu or cuda[:i], got {text!r}")


class Bench:
    """One invocation: the runs to do, their cache, and the outputs."""

    def __init__(self, args: argparse.Namespace, experiments: Experiments, mode: ModeSpec) -> None:
        self.args = args
        self.experiments = experiments
        self.mode = mode
        self.out: Path = args.out
        self.runs_dir = self.out / "runs"
        self.plan_dir = self.out / "plans"
        # Any model the mode has a step count for may be asked for; by default the mode's own.
        if args.models is None:
            self.models = list(mode.models)
        else:
            self.models = _subset(args.models, list(mode.steps), "--models")
        all_datasets = sorted({d for m in self.models for d in experiments.models[m].datasets})
        self.datasets = _subset(args.datasets, all_datasets, "--datasets")
        self.method_names = _subset(args.methods, list(experiments.methods), "--methods")
        seeds = list(mode.seeds)
        if args.seeds is not None:
            seeds = [_int(s, "--seeds", 0) for s in args.seeds]
            if len(set(seeds)) != len(seeds):
                raise UsageError(f"--seeds must be distinct, got {' '.join(args.seeds)}")
        self.seeds = seeds
        self.steps = dict(mode.steps)
        if args.steps is not None:
            self.steps = {m: _int(args.steps, "--steps", 1) for m in self.models}
        self.jobs = _int(args.jobs, "--jobs", 1)
        if self.jobs > 1 and args.inline:
            raise UsageError("--inline runs in this process, one run at a time: not with --jobs")
        self.threads = (
            max(1, 2 // self.jobs) if args.threads is None else _int(args.threads, "--threads", 1)
        )
        self._count = threading.Lock()
        self.device = _device(args.device)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out must be a folder, got the file {self.out}")
        self.splits: dict[str, Splits] = {}
        self.failed: list[str] = []
        self.executed = 0
        self.started = time.perf_counter()

    # -- planning ------------------------------------------------------------------------
    def methods_of(self, model: str) -> list[MethodSpec]:
        allowed = self.experiments.models[model].cpu_methods
        if self.device != "cpu" or allowed is None:
            names = self.method_names
        else:
            names = [n for n in self.method_names if n in allowed]
        return [self.experiments.methods[n] for n in names]

    def cells(self) -> list[tuple[str, str, MethodSpec]]:
        return [
            (model, dataset, method)
            for model in self.models
            for dataset in self.experiments.models[model].datasets
            if dataset in self.datasets
            for method in self.methods_of(model)
        ]

    def grid_of(self, model: str, method: MethodSpec) -> list[float]:
        if model in self.mode.lr_grid_models:
            return list(method.lr_grid)
        return []

    def planned_runs(self) -> int:
        total = 0
        for model, _, method in self.cells():
            grid = self.grid_of(model, method)
            total += (len(grid) or 1) + len(self.seeds) - 1
        return total

    def load_split(self, dataset: str) -> Splits:
        if dataset not in self.splits:
            spec = self.experiments.datasets[dataset]
            self.splits[dataset] = load_splits(spec, self.experiments.split_seed)
            if not self.args.report_only and not self.args.list:
                write_splits(self.splits[dataset], self.out / "splits")
        return self.splits[dataset]

    def spec(self, model: str, dataset: str, method: MethodSpec, lr: float, seed: int) -> Any:
        splits = self.load_split(dataset)
        return make_spec(
            self.experiments,
            self.experiments.models[model],
            self.experiments.datasets[dataset],
            method,
            lr=lr,
            seed=seed,
            steps=self.steps[model],
            device=self.device,
            split_fingerprint=splits.fingerprint,
        )

    # -- running -------------------------------------------------------------------------
    def get(self, spec: dict[str, Any], execute: bool, bar: Any) -> dict[str, Any] | None:
        key = run_key(spec)
        path = self.runs_dir / f"{key}.json"
        record = read_record(path, key)
        if record is not None or not execute:
            if record is not None and bar is not None:
                bar.update(1)
            return record
        label = f"{spec['model']['name']}/{spec['dataset']['name']}/{spec['method']['name']}"
        label += f" lr={spec['lr']:g} seed={spec['seed']}"
        try:
            if self.args.inline:
                outcome = run(
                    spec,
                    splits=self.load_split(spec["dataset"]["name"]),
                    plan_dir=self.plan_dir,
                    threads=self.threads,
                    progress=not self.args.no_progress,
                    description=label,
                )
                write_record(path, outcome.record)
            else:
                self._worker(spec, path, label)
        except Exception as err:  # one failed run must not stop the table
            self.failed.append(f"{key}: {type(err).__name__}: {err}")
            print(f"lorax-bench: run {label} failed: {err}", file=sys.stderr, flush=True)
            if bar is not None:
                bar.update(1)
            return None
        with self._count:
            self.executed += 1
        if bar is not None:
            bar.update(1)
        return read_record(path, key)

    def _worker(self, spec: dict[str, Any], path: Path, label: str) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(spec, handle)
            spec_path = handle.name
        try:
            env = dict(os.environ, LORAX_BENCH_LABEL=label)
            command = [
                sys.executable,
                "-m",
                "lorax_core.bench.worker",
                spec_path,
                str(path),
                str(self.plan_dir),
                str(self.threads),
                "0" if self.args.no_progress else "1",
            ]
            status = subprocess.run(command, env=env, check=False).returncode
        finally:
            os.unlink(spec_path)
        if status != 0:
            raise RuntimeError(f"worker exited with status {status}")

    def table(self, execute: bool) -> list[Cell]:
        """Run (or read) every run, ``--jobs`` at a time: for each cell of a grid model its
        grid on the first seed, then the remaining seeds at the learning rate it chose; the
        other cells once the grid model's cell on the same dataset has chosen (or at once at
        their file's rate when there is none). With one job the runs go in the order of
        :meth:`_priority`: every grid run first, then each cell's other seeds in the order
        the cells chose their learning rates."""
        from tqdm.auto import tqdm

        cells: dict[tuple[str, str, str], Cell] = {}
        order = sorted(self.cells(), key=self._priority)
        first, rest = self.seeds[0], self.seeds[1:]
        grids: dict[tuple[str, str, str], dict[float, dict[str, Any] | None]] = {}
        waiting: list[tuple[str, str, MethodSpec]] = []
        disable = self.args.no_progress or not execute
        with (
            tqdm(total=self.planned_runs(), desc="lorax-bench", unit="run", disable=disable) as bar,
            ThreadPoolExecutor(max_workers=self.jobs) as pool,
        ):
            pending: dict[Future[dict[str, Any] | None], tuple[tuple[str, str, str], float, int]]
            pending = {}

            def submit(key: tuple[str, str, str], method: MethodSpec, lr: float, seed: int) -> None:
                spec = self.spec(key[0], key[1], method, lr, seed)
                pending[pool.submit(self.get, spec, execute, bar)] = (key, lr, seed)

            def settle(
                key: tuple[str, str, str], method: MethodSpec, cell: Cell, seeds: list[int]
            ) -> None:
                cells[key] = cell
                for seed in seeds:
                    submit(key, method, cell.lr, seed)

            for model, dataset, method in order:
                key = (model, dataset, method.name)
                grid = self.grid_of(model, method)
                if grid:
                    grids[key] = {}
                    for lr in grid:
                        submit(key, method, lr, first)
                else:
                    waiting.append((model, dataset, method))
            while pending or waiting:
                for model, dataset, method in list(waiting):
                    donor = self._donor(model, dataset, method, grids, cells)
                    if donor is None:
                        continue
                    waiting.remove((model, dataset, method))
                    key = (model, dataset, method.name)
                    lr, source = donor
                    cell = Cell(model, dataset, method.name, method.label, lr, source)
                    settle(key, method, cell, self.seeds)
                if not pending:
                    continue
                # The earliest-submitted finished run, so that the order does not depend on
                # which of several finished runs (cached ones finish at once) is seen first.
                wait(pending, return_when=FIRST_COMPLETED)
                done = next(f for f in pending if f.done())
                key, lr, seed = pending.pop(done)
                record = done.result()
                method = self.experiments.methods[key[2]]
                if key in grids and key not in cells:
                    grids[key][lr] = record
                    if len(grids[key]) == len(set(self.grid_of(key[0], method))):
                        settle(key, method, self._chosen(key, method, grids[key], first), rest)
                elif record is not None:
                    cells[key].runs[seed] = record
                self.write(cells, execute)
        return list(cells.values())

    def _priority(self, cell: tuple[str, str, MethodSpec]) -> tuple[int, int, int, int]:
        """Execution order: model by model; LoRA (every comparison's reference) first, then
        the methods whose defaults the table decides and their baselines (:data:`FIRST`), the
        rest in table order, the full fine-tune (the costliest run) last; for each method its
        datasets one after the other, so an interrupted table holds whole rows."""
        model, dataset, method = cell
        if method.name in FIRST:
            rank = FIRST.index(method.name)
        else:
            rank = len(FIRST) + (1 if method.kind == "full" else 0)
        datasets = self.experiments.models[model].datasets
        return (self.models.index(model), rank, method.order, datasets.index(dataset))

    def _donor(
        self,
        model: str,
        dataset: str,
        method: MethodSpec,
        grids: dict[tuple[str, str, str], dict[float, dict[str, Any] | None]],
        cells: dict[tuple[str, str, str], Cell],
    ) -> tuple[float, str] | None:
        """The learning rate of a cell without a grid and where it comes from, or None while
        the grid model's cell it takes it from has not chosen yet."""
        for grid_model in self.mode.lr_grid_models:
            key = (grid_model, dataset, method.name)
            if key in grids and key not in cells:
                return None
            donor = cells.get(key)
            if donor is not None and donor.lr_source == "grid":
                return donor.lr, f"grid of {grid_model}"
        return method.lr, "config"

    def _chosen(
        self,
        key: tuple[str, str, str],
        method: MethodSpec,
        results: dict[float, dict[str, Any] | None],
        seed: int,
    ) -> Cell:
        """The cell of a finished grid: the best validation accuracy (a tie goes to the grid's
        earlier learning rate), or the file's rate if no grid run succeeded."""
        grid = self.grid_of(key[0], method)
        ok = {lr: r for lr, r in results.items() if r is not None}
        scores = {f"{lr:g}": ok[lr]["val_accuracy"] for lr in grid if lr in ok}
        best = max(ok, key=lambda lr: (ok[lr]["val_accuracy"], -grid.index(lr)), default=method.lr)
        source = "grid" if len(ok) == len(grid) else "grid, incomplete"
        cell = Cell(key[0], key[1], key[2], method.label, best, source, scores)
        if best in ok:
            cell.runs[seed] = ok[best]
        return cell

    def write(self, cells: dict[tuple[str, str, str], Cell], execute: bool) -> None:
        if not execute and not self.args.report_only:
            return
        done = sum(len(c.runs) for c in cells.values())
        header = {
            "mode": self.mode.name,
            "command": self.command(),
            "models": self.models,
            "datasets": self.datasets,
            "steps": {m: self.steps[m] for m in self.models},
            "seeds_by_model": {m: self.seeds for m in self.models},
            "lr_grid_models": list(self.mode.lr_grid_models),
            "device": self.device,
            "threads": self.threads,
            "jobs": self.jobs,
            "training": self.experiments.training_dict(),
            "dataset_specs": {d: self.experiments.datasets[d].to_dict() for d in self.datasets},
            "model_specs": {m: self.experiments.models[m].to_dict() for m in self.models},
            "splits": {
                name: {
                    "file": f"../splits/{name}.json",
                    "fingerprint": s.fingerprint,
                    "n_test": len(s.test),
                    "n_fit": len(s.fit),
                    "n_val": len(s.val),
                }
                for name, s in self.splits.items()
            },
            "runs_in_table": done,
            "runs_planned_in_table": len(self.cells()) * len(self.seeds),
            "run_time_s": sum(r["wall_s"] for c in cells.values() for r in c.runs.values()),
        }
        ordered = sorted(
            cells.values(),
            key=lambda c: (
                self.models.index(c.model),
                c.dataset,
                self.experiments.methods[c.method].order,
            ),
        )
        write_outputs(self.out / self.mode.name, ordered, header)

    def command(self) -> str:
        parts = ["lorax-bench"]
        if self.args.quick:
            parts.append("--quick")
        for flag in ("models", "datasets", "methods", "seeds"):
            value = getattr(self.args, flag)
            if value:
                parts += [f"--{flag}", *value]
        if self.args.steps:
            parts += ["--steps", self.args.steps]
        if self.device != "cpu":
            parts += ["--device", self.device]
        if self.out != DEFAULT_OUT:
            parts += ["--out", str(self.out)]
        return shlex.join(parts)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lorax-bench``; returns the exit status (0 ok, 1 failed runs, 2 usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        experiments = load_experiments(args.experiments)
        mode = experiments.modes.get("quick" if args.quick else "full")
        if mode is None:
            raise UsageError(f"the experiments define no {'quick' if args.quick else 'full'} mode")
        bench = Bench(args, experiments, mode)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"lorax-bench: error: {err}", file=sys.stderr)
        return 2
    if args.summary:
        path = bench.out / mode.name / "results.json"
        if not path.is_file():
            print(f"lorax-bench: error: no results at {path}; run the table first", file=sys.stderr)
            return 2
        print(summary_markdown(json.loads(path.read_text())), end="")
        return 0
    if args.list:
        for cell in bench.table(execute=False):
            print(
                f"{cell.model:8} {cell.dataset:7} {cell.method:22} lr {cell.lr:g} "
                f"({cell.lr_source}) cached seeds {sorted(cell.runs)}"
            )
        return 0
    cells = bench.table(execute=not args.report_only)
    done = sum(len(c.runs) for c in cells)
    elapsed = time.perf_counter() - bench.started
    print(
        f"lorax-bench: {done} runs in the table ({bench.executed} run now, "
        f"{elapsed / 60:.1f} min); outputs in {bench.out / mode.name}",
        file=sys.stderr,
    )
    if bench.failed:
        print("lorax-bench: failed runs:\n  " + "\n  ".join(bench.failed), file=sys.stderr)
        return 1
    return 0
