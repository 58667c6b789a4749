"""The ``mm`` command line: thin Typer wrappers that parse, call the core, and print with rich.

Heavy libraries (torch, transformers, lm-eval, ray) are imported inside the commands that need them so
that ``mm --help`` stays fast. Every MMError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from mmbench_cli.errors import MMError

app = typer.Typer(
    name="mm",
    help="MM1-style ablations and few-shot benchmarks for multimodal LLMs.\n\n"
    "Runs on a laptop CPU out of the box (a built-in synthetic multimodal world and tiny models); "
    "bring local COCO/VQAv2/... files, local Hugging Face checkpoints and GPUs for real studies.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that every clean-up a Ctrl-C runs (status, locks, --force) runs."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def user_errors_exit_2(func: F) -> F:
    """The error contract at the CLI edge: MMError (bad user input) and OSErrors the environment causes (a full
    disk, a read-only or missing directory: ``errors.environment_error``) become one line on stderr and exit 2;
    Ctrl-C exits 130 and SIGTERM 143, after the same clean-up (a run is marked failed, its lock released)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal

        from mmbench_cli.errors import environment_error
        from mmbench_cli.rundir import check_environment

        previous = signal.getsignal(signal.SIGTERM)
        try:
            check_environment()
            if previous is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _terminate)
            return func(*args, **kwargs)
        except Exception as error:
            from rich.markup import escape  # messages are plain text: `mmbench[ray]`, `shots [0, 4]` print as is

            user_error = error if isinstance(error, MMError) else environment_error(error)
            if user_error is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(user_error.message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=MMError.exit_code) from None
        except Terminated:
            err_console.print("[yellow]terminated[/]")
            raise typer.Exit(code=143) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(code=130) from None
        finally:
            if previous is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        from mmbench_cli.doctor import version_line

        console.print(version_line(), highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", help="Show the version and exit.", callback=_version_callback, is_eager=True
    ),
) -> None:
    """MM1-style ablations and few-shot benchmarks for multimodal LLMs."""


CONFIG_ARGS_HELP = "Optional config YAML, then `key.sub=value` overrides (anything with `=` is an override)."


def _not_yet(command: str, issue: str) -> None:
    raise MMError(f"`mm {command}` is not implemented yet ({issue}); nothing was run")


@app.command(
    epilog="Examples:\n\n"
    "  mm cache\n\n"
    "  mm cache clear\n\n"
    "  MMBENCH_FEATURE_STORE_MB=0 mm eval runs/mm1-toy   # without the store",
)
@user_errors_exit_2
def cache(
    action: str = typer.Argument("show", help="show (path and size) | clear (delete every stored feature)"),
) -> None:
    """The frozen-encoder feature store: where it is and its size, or `clear` to empty it.

    A frozen encoder's features are computed once per image and reused by every step, demo, checkpoint and grid
    cell with the same encoder weights (same numbers as without); `$MMBENCH_FEATURE_STORE_MB` caps it (0: off).
    """
    from mmbench_cli.rundir import feature_store_cap_bytes, feature_store_dir, feature_store_usage

    if action not in ("show", "clear"):
        raise MMError(f"mm cache: unknown action {action!r}; use `mm cache` (show) or `mm cache clear`")
    root, cap = feature_store_dir(), feature_store_cap_bytes()
    if action == "clear":
        from mmbench_cli.model.feature_store import clear_store

        freed = clear_store(root)
        console.print(f"cleared {root}: {freed / 2**20:.1f} MB freed", highlight=False)
        return
    size, shards = feature_store_usage(root)
    state = f"cap {cap / 2**20:.0f} MB" if cap else "off (MMBENCH_FEATURE_STORE_MB=0)"
    console.print(f"{root}: {size / 2**20:.1f} MB in {shards} shards, {state}", highlight=False)


@app.command(
    epilog="Examples:\n\n"
    "  mm doctor\n\n"
    "  mm doctor --json | jq .main_job_can_run",
)
@user_errors_exit_2
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of the table."),
) -> None:
    """Check what runs need (Java, a writable cache, torch, extras), one line each; exit 0 when the main job can run.

    Exit 2 when a required check fails (the README's main job would stop on it); optional extras never fail it.
    """
    import json

    from rich.markup import escape
    from rich.table import Table

    from mmbench_cli.doctor import as_json as doctor_json
    from mmbench_cli.doctor import can_run_main_job, run_checks

    checks = run_checks()
    if as_json:
        console.print_json(json.dumps(doctor_json(checks)))
    else:
        table = Table(show_header=False, box=None, pad_edge=False)
        for check in checks:
            mark = "[green]ok[/]" if check.ok else ("[bold red]missing[/]" if check.required else "[yellow]--[/]")
            table.add_row(mark, check.name, escape(check.detail))
        console.print(table)
    if not can_run_main_job(checks):
        failed = [check.name for check in checks if check.required and not check.ok]
        raise MMError(f"the main job cannot run here: fix {', '.join(failed)} (see above)")
    if not as_json:
        console.print("The main job can run here: mm ablate --grid resolution,tokens", highlight=False)


@app.command(
    epilog="Examples:\n\n"
    "  mm build\n\n"
    "  mm build model.connector=avgpool model.num_image_tokens=64 -o models/avgpool\n\n"
    "  mm build --data data.num_train_images=500",
)
@user_errors_exit_2
def build(
    args: list[str] = typer.Argument(None, help=CONFIG_ARGS_HELP, show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the assembled model (or data report) here."),
    data: bool = typer.Option(False, "--data", help="Materialise and report the dataset instead of the model."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad samples (same as data.skip_bad=true)."),
) -> None:
    """Assemble encoder + connector + LM, print its anatomy, shape-check it and (with -o) save it."""
    from mmbench_cli.config import load_config, split_config_args

    path, overrides = split_config_args(args or [])
    cfg = load_config(path, [*overrides, *(["data.skip_bad=true"] if skip_bad else [])])
    if out is not None and not data:  # before an encoder is pre-trained or a model built
        from mmbench_cli.model.anatomy import check_out

        check_out(out)
    if data:
        from mmbench_cli.data.report import build_data

        build_data(cfg, out, console)
    else:
        from mmbench_cli.data.synthetic import tokenizer_source
        from mmbench_cli.model.anatomy import build_and_report
        from mmbench_cli.train.pretrained_encoder import encoder_dir, ensure_pretrained_encoder, load_pretrained_encoder

        after_build = None
        cached = encoder_dir(cfg)  # None unless model.encoder is a pre-trained registry entry
        if out is not None and cached is not None:  # a saved model carries its pre-trained encoder, as mm pretrain
            made = ensure_pretrained_encoder(cfg)
            if made is not None:
                def after_build(model: Any) -> None:
                    load_pretrained_encoder(model, made[0])
        elif cached is not None:
            console.print(f"encoder weights: {cfg.model.encoder} is pre-trained once and cached when a model is saved "
                          f"(-o) or trained (mm pretrain): {cached}", highlight=False)
        build_and_report(cfg, tokenizer_source(cfg.data), out, console, after_build)


@app.command(
    epilog="Examples:\n\n"
    "  mm pretrain --out runs/toy\n\n"
    "  mm pretrain train.steps=1000 model.image_size=96 --out runs/res96\n\n"
    "  torchrun --nproc_per_node 2 -m mmbench_cli.cli pretrain --out runs/ddp\n\n"
    "  torchrun --nproc_per_node 4 -m mmbench_cli.cli pretrain train.strategy=fsdp --out runs/fsdp\n\n"
    "  mm pretrain train.strategy=fsdp --dry-run --world-size 8 --device-memory 80GB",
)
@user_errors_exit_2
def pretrain(
    args: list[str] = typer.Argument(None, help=CONFIG_ARGS_HELP, show_default=False),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run dir's last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start over even if the run dir holds another run."),
    stage: str | None = typer.Option(None, "--stage", help="mllm (default) or encoder (CLIP/MAE pre-training)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad samples (same as data.skip_bad=true)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the per-device memory estimate; train nothing."),
    device_memory: str | None = typer.Option(None, "--device-memory", help="Memory of one device (80GB, 24GiB): "
                                             "refuse a run whose estimated need per device exceeds it."),
    world_size: int | None = typer.Option(None, "--world-size", min=1, help="Ranks for the memory estimate "
                                          "(default: torchrun's WORLD_SIZE, else 1)."),
) -> None:
    """Train the model on the data mixture, saving Pythia-style log-spaced checkpoints."""
    import os

    from mmbench_cli.config import load_config, split_config_args

    path, overrides = split_config_args(args or [])
    if stage is not None:
        overrides = [*overrides, f"train.stage={stage}"]
    if skip_bad:
        overrides = [*overrides, "data.skip_bad=true"]
    cfg = load_config(path, overrides)
    if dry_run or device_memory:
        from mmbench_cli.ablate.estimate import check_fits, memory_estimate, memory_line, parse_memory

        limit = parse_memory(device_memory) if device_memory else None
        estimate = memory_estimate(cfg, world_size or int(os.environ.get("WORLD_SIZE", "1")))
        check_fits(estimate, limit, "this run")
        if dry_run:
            console.print(f"memory: {memory_line(estimate)}; {estimate['params'] / 1e6:.2f}M parameters "
                          f"({estimate['trainable_params'] / 1e6:.2f}M trained); nothing was run",
                          highlight=False, markup=False, soft_wrap=True)
            return
    from mmbench_cli.train.loop import pretrain as run_pretrain

    run_dir = run_pretrain(cfg, out, resume=resume, force=force, progress=True)
    if os.environ.get("RANK", "0") == "0":
        what = "encoder" if cfg.train.stage == "encoder" else "run"
        console.print(f"[green]done:[/] {what} in {run_dir}", highlight=False)


@app.command(
    name="eval",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    epilog="Examples:\n\n"
    "  mm eval runs/toy --shots 0 4 8\n\n"
    "  mm eval runs/toy --all-checkpoints --tasks synthetic-vqa synthetic-caption --seeds 3\n\n"
    "  mm eval runs/toy --tasks synthetic-vqa --shots 4 --demo-selection rices\n\n"
    "  mm eval runs/toy --tasks text:textcore text:mm_synth_perplexity\n\n"
    "  mm eval runs/toy --tasks vqav2 --task-data examples/real_tasks.example.yaml\n\n"
    "  mm eval --predictions results.json --task vqav2 --annotations ann.json --questions q.json\n\n"
    "  mm eval --predictions results.json --task vizwiz --annotations val.json --allow-subset",
)
@user_errors_exit_2
def evaluate(
    args: list[str] = typer.Argument(
        None, show_default=False,
        help="RUN_OR_CHECKPOINT (a run dir, a checkpoints/step_N dir, or a `mm build -o` dir), then "
        "`--tasks T ...` (see --list-tasks; text:<lm-eval task|group> for text), `--shots K ...` and "
        "`--include-path DIR ...` (your task YAMLs: multimodal ones with a task_type key, lm-eval's text tasks).",
    ),
    seeds: int | None = typer.Option(None, "--seeds", help="Demo seeds (random selection); mean ± std."),
    all_checkpoints: bool = typer.Option(False, "--all-checkpoints", help="Evaluate every checkpoint of the run."),
    demo_selection: str | None = typer.Option(None, "--demo-selection", help="random (default) or rices."),
    num_samples: int | None = typer.Option(None, "--num-samples", help="Query samples per task."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Prompts per generation batch."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Override the task's generation length."),
    text_only_zero_shot: bool | None = typer.Option(
        None, "--text-only-zero-shot/--no-text-only-zero-shot",
        help="Flamingo's 0-shot variant: two text-only demos (images dropped)."),
    task_data: Path | None = typer.Option(None, "--task-data", help="YAML of local dataset files per task."),
    force: bool = typer.Option(False, "--force", help="Recompute cells that are already in the results."),
    device: str = typer.Option("auto", "--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps."),
    predictions: Path | None = typer.Option(None, "--predictions", help="Score this JSON(L) of another system's outputs."),
    task: str | None = typer.Option(None, "--task", help="With --predictions: the task whose metric/references apply."),
    annotations: Path | None = typer.Option(None, "--annotations", help="Annotation file of the task (its query set)."),
    questions: Path | None = typer.Option(None, "--questions", help="VQAv2/OK-VQA questions file."),
    images: Path | None = typer.Option(None, "--images", help="Image directory of --annotations."),
    data_format: str | None = typer.Option(None, "--format", help="Data format of --annotations (default: the task's)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="With --predictions: write per-sample scores here."),
    allow_subset: bool = typer.Option(False, "--allow-subset", help="With --predictions: score a file that misses "
                                      "some questions (refused by default, as the official tools)."),
    vqa_normalize: str | None = typer.Option(None, "--vqa-normalize", help="VQA accuracy: official (default) or "
                                             "always (normalise every answer, as LLaVA/lmms-eval)."),
    rices_encoder: str | None = typer.Option(None, "--rices-encoder", help="RICES similarity from this CLIP-style "
                                             "encoder (hf:<dir>) instead of the model's features."),
    as_json: bool = typer.Option(False, "--json", help="Print the results files as one JSON document on stdout "
                                 "instead of tables; progress goes to stderr."),
    list_tasks: bool = typer.Option(False, "--list-tasks", help="List the multimodal tasks (built in and in "
                                    "--include-path) with their task type, metric and data, then exit."),
) -> None:
    """Few-shot captioning (CIDEr) and VQA (VQA accuracy), and text tasks through lm-evaluation-harness."""
    from mmbench_cli.evaluate import cli_eval
    from mmbench_cli.evaluate.request import EvalRequest
    from mmbench_cli.evaluate.tasks import read_task_data

    positional, multi = cli_eval.parse_extra_args(list(args or []))
    if list_tasks:
        cli_eval.list_tasks([Path(p) for p in multi.get("--include-path", [])], console, as_json)
        return
    files = cli_eval.AnnotationFiles(annotations, questions, images, data_format)
    task_map = read_task_data(task_data)
    if predictions is not None:
        if as_json:
            raise MMError("--json: prints the results of evaluating a run; with --predictions use --out FILE")
        cli_eval.score_predictions_command(predictions, task, task_map, files, out, positional, console,
                                           allow_subset, vqa_normalize)
        return
    if allow_subset:
        raise MMError("--allow-subset: only meaningful with --predictions FILE")
    tasks = multi.get("--tasks")
    request = EvalRequest(
        target=cli_eval.single_target(positional), tasks=tasks, shots=cli_eval.parse_shots(multi.get("--shots")),
        seeds=seeds, all_checkpoints=all_checkpoints, demo_selection=demo_selection, num_samples=num_samples,
        batch_size=batch_size, max_new_tokens=max_new_tokens, text_only_zero_shot=text_only_zero_shot,
        vqa_normalize=vqa_normalize, rices_encoder=rices_encoder,
        include_paths=[Path(p) for p in multi.get("--include-path", [])],
        task_data=cli_eval.with_annotations(task_map, tasks, files), force=force, device=device,
    )
    cli_eval.run_eval(request, console, as_json)


@app.command(
    epilog="Examples:\n\n"
    "  mm ablate --grid resolution,tokens\n\n"
    "  mm ablate --grid resolution=32,64 --grid tokens=4,16 --grid seed=0,1 --dry-run\n\n"
    "  mm ablate ablations/mm1_connector.yaml --executor ray --address auto\n\n"
    "  mm ablate --grid resolution,tokens --executor slurm --partition gpu --gpus-per-cell 1 --timeout-min 120\n\n"
    "  mm ablate --grid resolution,tokens --dry-run --json | jq .estimate.total_s\n\n"
    "  mm ablate train.steps=100 --grid connector --jobs 2 --out runs/conn\n\n"
    "Axes and their presets: the package's axes.yaml, or ./ablations/axes.yaml if you have one (resolution, "
    "tokens, connector, encoder, data_mix, lm_size, "
    "seed); any dotted config key is an axis too (--grid train.lr=1e-3,3e-3). Re-running skips done cells "
    "and resumes interrupted ones. Exit code 1 if some cell failed.",
)
@user_errors_exit_2
def ablate(
    args: list[str] = typer.Argument(
        None, help="Optional base config or grid file (YAML with `axes:`), then `key.sub=value` overrides.",
        show_default=False,
    ),
    grid: list[str] = typer.Option(
        None, "--grid", "-g", show_default=False,
        help="Axes: preset names (`resolution,tokens`) or explicit values (`resolution=32,64`); repeatable.",
    ),
    zip_axes: bool = typer.Option(False, "--zip", help="Pair the axes value by value instead of crossing them "
                                  "(the seed axis is still crossed)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Grid directory (default runs/GRID_NAME)."),
    name: str | None = typer.Option(None, "--name", help="Grid name (default: the grid file's name or the axes)."),
    executor: str = typer.Option("local", "--executor", "-e", help="local, ray (`mmbench[ray]`) or slurm "
                                 "(`mmbench[slurm]`)."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="local: cells run at once, each in its own process if > 1 "
                             "(default: 1 on a GPU, else one per CPU core up to the number of cells)."),
    threads: int = typer.Option(0, "--threads", help="torch threads per cell on CPU: sets train.cpu_threads "
                                "(default 1), which is part of each cell's config, since another count changes "
                                "the numbers in their last bits."),
    address: str | None = typer.Option(None, "--address", help="ray: cluster address (`auto` joins `ray start`)."),
    cpus_per_cell: float = typer.Option(1.0, "--cpus-per-cell", help="ray, slurm: CPUs each cell requests."),
    gpus_per_cell: float = typer.Option(0.0, "--gpus-per-cell", help="ray, slurm: GPUs each cell requests."),
    partition: str | None = typer.Option(None, "--partition", help="slurm: partition to submit the cells to."),
    timeout_min: int = typer.Option(60, "--timeout-min", help="slurm: time limit of each cell's job (minutes); "
                                    "a cell cut off there resumes from its last checkpoint on the next run."),
    array_parallelism: int = typer.Option(64, "--array-parallelism", help="slurm: cells of the job array run at once."),
    slurm_cluster: str | None = typer.Option(None, "--slurm-cluster", help="slurm: `local` runs the jobs as "
                                             "processes here through submitit (to try a grid); default: sbatch."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and its estimated cost; run nothing."),
    throughput: float | None = typer.Option(None, "--throughput", help="FLOP/s for --dry-run's time estimate "
                                            "(default: time the cells' models now)."),
    axes_file: Path | None = typer.Option(None, "--axes", help="Axis presets file (default: ./ablations/axes.yaml "
                                      "if present, else the packaged presets)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (the plan, or the run's outcome) "
                                 "on stdout instead of tables; progress stays on stderr."),
    device_memory: str | None = typer.Option(None, "--device-memory", help="Memory of one device (80GB, 24GiB): "
                                             "refuse a grid whose cells' estimated need per device exceeds it."),
    world_size: int = typer.Option(1, "--world-size", min=1, help="Ranks each cell trains on, for the memory "
                                   "estimate (train.strategy: ddp or fsdp)."),
) -> None:
    """Run a resumable grid of pretrain + eval cells over ablation axes; write summary.csv/.parquet."""
    import json

    from mmbench_cli.ablate.estimate import check_throughput
    from mmbench_cli.ablate.grid import build_plan, link_stages
    from mmbench_cli.ablate.run import estimate_and_remember, estimate_vs_actual, plan_document, print_plan, run_grid
    from mmbench_cli.config import split_config_args

    check_throughput(throughput)  # before the plan: checking each cell's model takes a while
    path, overrides = split_config_args(args or [])
    if threads:
        overrides = [*overrides, f"train.cpu_threads={threads}"]
    plan = build_plan(path, overrides, grid or [], zip_axes, name, axes_file)
    grid_dir = out or Path("runs") / plan.name
    link_stages(plan, grid_dir)  # train.init_from: ${align} -> that stage's cell dir; stages run in order
    if executor == "local" and jobs == 0:
        from mmbench_cli.ablate.executors import default_jobs

        jobs = default_jobs(len(plan.cells), max(cell.config.train.cpu_threads for cell in plan.cells))
    options: dict[str, Any] = {"jobs": jobs} if executor == "local" else {
        "address": address, "cpus_per_cell": cpus_per_cell, "gpus_per_cell": gpus_per_cell} if executor == "ray" else {
        "partition": partition, "cpus_per_cell": cpus_per_cell, "gpus_per_cell": gpus_per_cell,
        "timeout_min": timeout_min, "array_parallelism": array_parallelism, "cluster": slurm_cluster}
    from mmbench_cli.ablate.executors import check_options

    check_options(options)
    memory = None
    if dry_run or device_memory:
        from mmbench_cli.ablate.estimate import check_fits, largest, parse_memory, plan_memory

        limit = parse_memory(device_memory) if device_memory else None
        memory = plan_memory(plan, world_size)
        cell_id, worst = largest(memory)
        check_fits(worst, limit, f"cell {cell_id}")
    if dry_run:
        from mmbench_cli.ablate.store import GridStore
        from mmbench_cli.registry import EXECUTORS

        EXECUTORS.get(executor)  # an unknown executor is refused here too
        GridStore(grid_dir).check_compatible(plan)
        estimate = estimate_and_remember(plan, grid_dir, executor, options, throughput)
        for row in estimate["cells"]:
            row["memory_bytes"] = memory[row["cell"]]["total_bytes"] if memory else None
        if as_json:
            print(json.dumps(plan_document(plan, grid_dir, estimate), indent=2))
        else:
            print_plan(plan, grid_dir, estimate, console)
        return
    result = run_grid(plan, grid_dir, executor, options, console, show_table=not as_json)
    done = sum(state == "done" for state in result.states.values())
    comparison = estimate_vs_actual(result)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        console.print(
            f"{done}/{len(result.states)} cells done ({len(result.skipped)} skipped, {len(result.ran)} run) in "
            f"{result.wall_s:.0f}s; summary: {result.summary.get('summary.csv', '')}", highlight=False, soft_wrap=True)
        if comparison:
            console.print(comparison, highlight=False, soft_wrap=True)
    if result.failed:
        for cell_id in result.failed:
            err_console.print(f"[red]failed[/] {cell_id}: {result.errors.get(cell_id, 'see ablate.json')}",
                              highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


@app.command(
    name="lm-eval",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@user_errors_exit_2
def lm_eval_command(ctx: typer.Context) -> None:
    """lm-evaluation-harness's own command line, with our model registered as `--model mm`.

    `mm lm-eval --model_args path=runs/toy --tasks textcore --limit 20 --log_samples --output_path out/`:
    `--model mm` and `--include_path` (the packaged text tasks) unless given; lm-eval's own models (`hf`, ...) work too;
    `mm lm-eval --help` is lm-eval's help.
    """
    from mmbench_cli.evaluate.lm_eval_hook import run_cli

    if not ctx.args or ctx.args[0] in ("-h", "--help"):  # our examples above lm-eval's own help
        console.print(
            "mm lm-eval: lm-eval's command line with `--model mm` (default) registered.\n\nExamples:\n\n"
            "  mm lm-eval --model_args path=runs/toy --tasks textcore --limit 50 --log_samples --output_path out/\n"
            "  mm lm-eval --model_args 'path=\"runs/grid/resolution=64,tokens=16\"' --tasks mm_synth_perplexity\n"
            "  mm lm-eval ls tasks\n\nlm-eval's help follows.\n", highlight=False, markup=False, soft_wrap=True)
    code = run_cli(ctx.args)
    if code:
        raise typer.Exit(code=code)


@app.command(
    name="lmms-eval",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@user_errors_exit_2
def lmms_eval_command(ctx: typer.Context) -> None:
    """lmms-eval's own command line (extra `mmbench[lmms]`), with our model as `--model mm` (the default).

    `mm lmms-eval --model_args path=runs/toy --tasks my_vqa --include_path tasks/ --log_samples --output_path out/`:
    0 shots (lmms-eval's demos are text only: interleaved k-shot is `mm eval --shots`); exits 1 when an evaluation
    fails and 2 on a user error, where lmms-eval itself logs and exits 0; `mm lmms-eval --help` is lmms-eval's help.
    """
    from mmbench_cli.evaluate.lmms_eval_hook import run_cli

    if not ctx.args or ctx.args[0] in ("-h", "--help"):  # our examples above lmms-eval's own help
        console.print(
            "mm lmms-eval: lmms-eval's command line with `--model mm` (default) registered; 0 shots.\n\nExamples:\n\n"
            "  mm lmms-eval --model_args path=runs/toy --tasks my_vqa --include_path tasks/ --log_samples "
            "--output_path out/\n"
            "  mm lmms-eval --model_args path=runs/toy/checkpoints/step_400 --tasks my_vqa --use_cache cache/\n"
            "  mm lmms-eval tasks list\n\nlmms-eval's help follows.\n", highlight=False, markup=False, soft_wrap=True)
    code = run_cli(ctx.args or ["--help"])
    if code:
        raise typer.Exit(code=code)


@app.command(
    epilog="Examples:\n\n"
    "  mm report runs/grid\n\n"
    "  mm report runs/res32 runs/res64 -o reports/resolution\n\n"
    "  mm report runs/mm1-toy/connector runs/mm1-toy/encoder -o reports/mm1-toy   # a section per grid\n\n"
    "  mm report runs/grid --save-baseline ablations/ci_baseline.json\n\n"
    "  mm report runs/grid -o reports/grid --baseline ablations/ci_baseline.json --tolerance 0.02",
)
@user_errors_exit_2
def report(
    paths: list[Path] = typer.Argument(..., help="Grid dirs, run dirs, or a dir of grid dirs (one section per grid)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default: reports/ + the first path's name)."),
    baseline: Path | None = typer.Option(None, "--baseline", help="Compare with this baseline; exit 1 on a regression."),
    tolerance: float = typer.Option(0.02, "--tolerance", help="Allowed absolute drop per metric."),
    save_baseline: Path | None = typer.Option(None, "--save-baseline", help="Save every metric (with per-sample scores) here."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the Findings and of the regression test."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the tables' CIs."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the figures (--no-plots: tables only, faster in CI)."),
) -> None:
    """Render the HTML + markdown report: MM1-style tables, axis effects, training-dynamics plots.

    Writes OUT/index.html (self-contained) and OUT/report.md; with --baseline, prints a table of
    regressions and exits 1 if any metric dropped by more than its tolerance (and significantly, where
    per-sample scores exist).
    """
    from rich.markup import escape
    from rich.table import Table

    from mmbench_cli.report.build import make_report
    from mmbench_cli.report.tables import fmt

    with console.status("building report…"):
        result = make_report(paths, out, baseline, tolerance, save_baseline, alpha, resamples, with_plots=plots)
    where = escape(str(result.out_dir))
    console.print(f"report: [bold]{where}/index.html[/] and {where}/report.md")
    if result.baseline_saved is not None:
        console.print(f"baseline saved: [bold]{escape(str(result.baseline_saved))}[/]")
    if result.comparisons is None:
        return
    for line in result.provenance:
        err_console.print(f"note: {escape(line)}", highlight=False, soft_wrap=True)
    shown = [c for c in result.comparisons if c.status not in ("ok", "new")]
    if shown:
        table = Table(title="metrics that dropped", title_justify="left")
        for name in ("metric", "baseline", "current", "Δ", "tolerance", "p (paired)", "status"):
            table.add_column(name, justify="left" if name in ("metric", "status") else "right", overflow="fold")
        for c in shown:
            style = "bold red" if c.failed else ""
            table.add_row(escape(c.key), fmt(c.baseline), fmt(c.current), fmt(c.delta), fmt(c.tolerance), fmt(c.p_value),
                          f"[{style}]{c.status}[/]" if style else c.status)
        console.print(table)
    failed = result.regressions
    for c in failed:  # one greppable line per regression, whatever the terminal width
        err_console.print(
            f"{c.status}: {escape(c.key)}: {fmt(c.baseline)} -> {fmt(c.current)} (tolerance {fmt(c.tolerance)}, "
            f"paired p {fmt(c.p_value)})", highlight=False, soft_wrap=True,
        )
    if failed:
        err_console.print(f"[bold red]regression:[/] {len(failed)} metric(s) dropped beyond tolerance vs {escape(str(baseline))}")
        raise typer.Exit(code=1)
    console.print(f"[green]no regression[/] vs {escape(str(baseline))} ({len(result.comparisons)} metrics compared)")


if __name__ == "__main__":  # `python -m mmbench_cli.cli ...`, e.g. under torchrun
    sys.exit(app())
