"""Running a table's plan: each step as a subprocess (torchrun for training), or in this process in ``--tiny`` mode;
and the dry run: every command, and each row's cost estimate."""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from patseg.errors import PatsegError
from patseg.reproduce.estimate import CACHE_FILE, EstimateCache, RunCost, bytes_text, flops_text, hours_text
from patseg.reproduce.plan import TINY, Options, Step, data_root, iterations, row_model, run_dir
from patseg.reproduce.rows import Row

logger = logging.getLogger(__name__)

Invoke = Callable[[list[str]], int]  # patseg.cli.main: argv -> exit code


@dataclass(frozen=True)
class GpuAssumptions:
    """What one GPU sustains: its dense peak and the fraction of it a training step reaches."""

    gpu_tflops: float = 71.0  # RTX 3090 (the paper's 3-GPU setup): dense bf16 tensor-core peak, float32 accumulation
    mfu: float = 0.35  # model FLOPs utilisation


def execute(steps: Sequence[Step], opts: Options, invoke: Invoke | None) -> None:
    """Run every step not marked ``skip``, in order: with ``invoke`` in this process, else as a subprocess.

    Raises PatsegError naming the step and its command when one fails; finished steps stay done, so running the
    same ``patseg reproduce`` again continues from there.
    """
    todo = [s for s in steps if not s.skip]
    logger.info("%d of %d steps to run (%d complete)", len(todo), len(steps), len(steps) - len(todo))
    for number, step in enumerate(todo, 1):
        if step.kind == "train" and opts.overwrite and run_dir(opts, step.row, step.seed).exists():
            shutil.rmtree(run_dir(opts, step.row, step.seed))  # --overwrite: this run starts over
        logger.info("[%d/%d] %s %s seed %d (%s): %s", number, len(todo), step.kind, step.row.name, step.seed,
                    step.note, shlex.join(step.command if invoke is None else ["patseg", *step.argv]))  # fmt: skip
        start = time.perf_counter()
        code, output = _run(step, invoke)
        if code != 0:
            shown = f"; its output ended with: {output.strip().splitlines()[-1]}" if output.strip() else ""
            raise PatsegError(
                f"{step.kind} of {step.row.name} seed {step.seed} failed (exit code {code}): "
                f"{shlex.join(step.command)}{shown}"
            )
        logger.info("[%d/%d] done in %.1f s", number, len(todo), time.perf_counter() - start)


def _run(step: Step, invoke: Invoke | None) -> tuple[int, str]:
    """(exit code, captured output): a subprocess prints to the terminal itself; in-process stdout is captured
    (the per-step tables of patseg eval) and returned for an error message."""
    if invoke is None:
        return subprocess.run(step.command, check=False).returncode, ""
    import torch

    buffer = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second OpenMP thread mostly waits, ten times slower on a busy CPU
    try:
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*image/label pairs, expected")  # the tiny sets, by design
            code = invoke(["-q", *step.argv])
    finally:
        torch.set_num_threads(threads)
    if code != 0 and buffer.getvalue().strip():
        logger.error("output of the failed step:\n%s", buffer.getvalue().rstrip())
    return code, buffer.getvalue()


def dry_run_text(steps: Sequence[Step]) -> list[str]:
    """Every command, shell-quoted, grouped by row; complete ones commented out with what makes them complete."""
    lines: list[str] = []
    current: Row | None = None
    for step in steps:
        if step.row is not current:
            current = step.row
            lines += ["", f"# {step.row.name}: {step.row.paper.label} ({step.row.config})"]
        prefix = f"# {step.note}, skipped: " if step.skip else ""
        comment = "" if step.skip else f"  # {step.note}"
        lines.append(prefix + shlex.join(step.command) + comment)
    return lines


def estimate_rows(opts: Options, rows: Sequence[Row], assumptions: GpuAssumptions) -> tuple[list[str], list[RunCost]]:
    """Each row's GPU-hours and memory per GPU from one measured training step (cached in ``OUT``)."""
    cache = EstimateCache(opts.out / CACHE_FILE)
    lines: list[str] = []
    costs: list[RunCost] = []
    for number, row in enumerate(rows, 1):
        crop = TINY.crop_size if opts.tiny else row.cfg.data.crop_size
        batch = TINY.batch_size if opts.tiny else row.cfg.solver.batch_size
        model = row_model(opts, row)
        overrides = ", ".join(f"{k}={v}" for k, v in row.cfg.model.overrides.items())
        label = model.name + (f" ({overrides})" if overrides else "")
        logger.info("[%d/%d] cost of %s: %s", number, len(rows), row.name, label)
        step, cached = cache.step_cost(model, crop, label)
        cost = RunCost(step, iterations(opts, row), batch, opts.gpus, assumptions.gpu_tflops, assumptions.mfu)
        costs.append(cost)
        lines += format_cost(row, label, crop, cost, len(opts.seeds), cached)
    return lines, costs


def format_cost(row: Row, label: str, crop: int, cost: RunCost, seeds: int, cached: bool) -> list[str]:
    step = cost.step
    measured = "cached" if cached else f"measured in {step.seconds:.0f} s"
    return [
        f"{row.name}: {row.paper.label}: {label}",
        f"  one step at batch 1, {crop}x{crop}: {flops_text(step.flops)} (forward + backward), "
        f"{bytes_text(step.activation_bytes)} saved for backward; {step.trainable_params:,} trainable and "
        f"{step.frozen_params:,} frozen parameters ({measured})",
        f"  training: {cost.iters:,} iterations x batch {cost.global_batch} = {cost.total_flops:.3g} FLOPs: "
        f"{hours_text(cost.gpu_hours)} per run ({cost.wall_hours:.3g} h on {cost.gpus} GPU(s)), "
        f"{hours_text(cost.gpu_hours * seeds)} for {seeds} seed(s)",
        f"  memory per GPU: {bytes_text(cost.memory_bytes)} = weights, gradients and AdamW states "
        f"{bytes_text(cost.state_bytes)} + activations {bytes_text(step.activation_bytes)} x {cost.per_gpu_batch} "
        f"image(s)",
    ]


def assumption_lines(opts: Options, assumptions: GpuAssumptions) -> list[str]:
    return [
        f"Assumptions: {assumptions.gpu_tflops:g} TFLOP/s peak per GPU (--gpu-tflops) at {assumptions.mfu:g} "
        f"utilisation (--mfu); {opts.gpus} GPU(s) per run (--gpus); evaluation not included.",
        "FLOPs counted on the CPU by torch.utils.flop_counter (2 per multiply-add; element-wise work not counted).",
        "Activations: tensors saved for backward, in float32 (bf16 autocast on CUDA keeps many in half precision); "
        "transient buffers, the LPIPS VGG weights and allocator overhead not included.",
    ]


def total_line(costs: Sequence[RunCost], seeds: int) -> str:
    hours = sum(c.gpu_hours for c in costs) * seeds
    peak = max((c.memory_bytes for c in costs), default=0)
    return f"Total: {hours_text(hours)} for {len(costs)} row(s) x {seeds} seed(s); at most {bytes_text(peak)} per GPU."


def reproduce_table(
    opts: Options,
    rows: Sequence[Row],
    *,
    dry_run: bool,
    assumptions: GpuAssumptions,
    echo: Callable[[str], None],
    invoke: Invoke | None = None,
) -> None:
    """Check, then either print the plan and its cost (``dry_run``) or run it and write the table.

    ``invoke`` runs a step in this process (``--tiny``: ``patseg.cli.main``); without it steps are subprocesses.
    """
    from patseg.reproduce.checks import check_options
    from patseg.reproduce.plan import plan_steps
    from patseg.reproduce.table import collect, format_markdown, write_tables

    check_options(opts, rows, dry_run=dry_run)
    steps = plan_steps(opts, rows)
    if dry_run:
        print_plan(opts, rows, steps, assumptions, echo)
        return
    if opts.tiny:
        from patseg.reproduce.tiny import ensure_tiny_data

        ensure_tiny_data(
            data_root(opts),
            train_images=TINY.train_images,
            val_images=TINY.eval_images,
            size=TINY.crop_size,
            inception=opts.table == "table2",
        )
    execute(steps, opts, invoke)
    results = collect(opts, rows)
    md, js = write_tables(opts, results)
    echo(format_markdown(opts, results))
    echo(f"wrote {md} and {js}")


def print_plan(
    opts: Options, rows: Sequence[Row], steps: Sequence[Step], assumptions: GpuAssumptions, echo: Callable[[str], None]
) -> None:
    """``--dry-run``: the commands first (instant), then each row's cost (a measurement per new model)."""
    runs = f"{len(rows)} row(s) x {len(opts.seeds)} seed(s)"
    echo(f"# {len(steps)} commands for {opts.table} ({runs}); --dry-run runs none of them")
    if opts.tiny:
        echo("# --tiny runs them in one process (patseg.cli.main with the same arguments), on one CPU thread")
    for line in [*dry_run_text(steps), "", *assumption_lines(opts, assumptions)]:
        echo(line)
    opts.out.mkdir(parents=True, exist_ok=True)  # the measurement cache lives there
    lines, costs = estimate_rows(opts, rows, assumptions)
    for line in [*lines, total_line(costs, len(opts.seeds))]:
        echo(line)
