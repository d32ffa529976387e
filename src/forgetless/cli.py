"""Command line: `forgetless run CONFIG --out DIR`, `compare`, `merge`, `tune`, `advise`, `eval`, `demo`, `strategies`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import ForgetlessError


def _cmd_run(args: argparse.Namespace) -> None:
    from .config import load_config
    from .training import is_main_process, run_continual

    config = load_config(args.config)
    results = run_continual(config, args.out, progress=not args.quiet, overwrite=args.overwrite, resume=args.resume)
    if not is_main_process():  # under accelerate launch every process runs this; one reports
        return
    metrics = results.metrics
    print(f"\nwrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.md'}")
    if metrics.has_general:
        print(
            f"general score {metrics.general_before:.4f} -> {metrics.general_after:.4f} "
            f"({metrics.general_delta_abs:+.4f} ± {metrics.general_delta_se:.4f} s.e.; "
            f"{'within noise' if metrics.general_within_noise else 'beyond noise'})"
        )
        from .report import worst_task_line

        print(worst_task_line(metrics))


def _cmd_compare(args: argparse.Namespace) -> None:
    import shlex

    from .compare import compare, frontier_settings, parse_strategy
    from .config import load_config

    config = load_config(args.config)
    specs = [parse_strategy(text) for text in args.strategies]
    frontier = frontier_settings(config, args.frontier_lr, args.frontier_steps)
    if not specs and not frontier:
        raise ForgetlessError("compare: nothing to run: give --strategies, or --frontier-lr/--frontier-steps "
                              "other than the config's own lr and steps")
    command = shlex.join(["forgetless", "compare", args.config, *(["--strategies", *args.strategies] if specs else []),
                          "--out", args.out,
                          *(["--baseline", args.baseline] if args.baseline != "naive" else []),
                          *(["--frontier-lr", *map(str, args.frontier_lr)] if args.frontier_lr else []),
                          *(["--frontier-steps", *map(str, args.frontier_steps)] if args.frontier_steps else []),
                          *(["--seeds", *map(str, args.seeds)] if args.seeds else []),
                          *(["--resume"] if args.resume else [])])
    options = {"baseline": args.baseline, "command": command, "progress": not args.quiet, "frontier": frontier,
               "resume": args.resume}
    if args.seeds:
        from .seeds import compare_over_seeds

        compare_over_seeds(config, specs, args.out, args.seeds, **options)
        written = Path(args.out) / "seeds.md"
        print(f"\nwrote {written} and seeds.json over the comparisons in {Path(args.out) / 'seed-<seed>'}")
    else:
        compare(config, specs, args.out, **options)
        written = Path(args.out) / "compare.md"
        print(f"\nwrote {written}, compare.json and pareto.png")
    print(written.read_text(encoding="utf-8"))


def _cmd_merge(args: argparse.Namespace) -> None:
    import shlex

    from .merge import merge

    written = merge(args.sources, args.out, command=shlex.join(["forgetless", "merge", *args.sources, "--out", args.out]))
    print(f"wrote {written}\n")
    print(written.read_text(encoding="utf-8"))


def _cmd_tune(args: argparse.Namespace) -> None:
    import shlex

    from .config import load_config, parse_config
    from .tune import tune

    config = load_config(args.config)
    if args.steps is not None:
        data = config.model_dump()
        config = parse_config({**data, "train": {**data["train"], "steps": args.steps}}, f"{args.config} with --steps")
    command = shlex.join(["forgetless", "tune", args.config, "--knob", args.knob, "--budget", str(args.budget),
                          *(["--values", *map(str, args.values)] if args.values else []),
                          *(["--steps", str(args.steps)] if args.steps else []), "--out", args.out,
                          *(["--resume"] if args.resume else [])])
    summary = tune(config, args.knob, args.budget, args.out, values=args.values, command=command, progress=not args.quiet,
                   resume=args.resume)
    print((Path(args.out) / "tune.md").read_text(encoding="utf-8"))
    if summary["chosen"] is None:
        raise ForgetlessError(f"no value of {args.knob} kept the general drop within {args.budget:g}")


def _cmd_advise(args: argparse.Namespace) -> None:
    from .advise import Constraints, advise, ask, compare_evidence, render, shipped_evidence, yes_no

    interactive = sys.stdin.isatty() and not args.no_input
    defaults = Constraints()

    def value(given, prompt, default, cast=str):
        if given is not None:
            return given
        return ask(prompt, default, cast) if interactive else default

    raw = None if args.raw_data is None else yes_no(args.raw_data)
    chat = None if args.chat is None else yes_no(args.chat)
    constraints = Constraints(
        raw_data_allowed=value(raw, "May earlier tasks' raw training rows be stored? (y/n)", defaults.raw_data_allowed,
                               yes_no),
        compute=value(args.compute, "Compute budget per step (low: <=1.10x, medium: <=1.50x, high)", defaults.compute),
        tasks=value(args.tasks, "How many tasks in the sequence?", defaults.tasks, int),
        adapter=value(args.adapter, "Adapter (full or lora)", defaults.adapter),
        budget=value(args.budget, "Largest acceptable general-score drop", defaults.budget, float),
        chat=value(chat, "Must the model keep following instructions (a chat model)? (y/n)", defaults.chat, yes_no),
    )
    candidates, source = compare_evidence(args.from_dirs) if args.from_dirs else shipped_evidence(constraints.tasks)
    print(render(advise(constraints, candidates, source), constraints))


def _cmd_eval(args: argparse.Namespace) -> None:
    from .evaluation.suites import load_eval_file, load_suite
    from .fileio import atomic_write_json, check_output_path
    from .models import load_model_and_tokenizer

    if not args.task_file and not args.suite:
        raise ForgetlessError("give --task-file F.jsonl and/or --suite general")
    if args.json:  # refused now, not after every task has been scored
        check_output_path(args.json, "--json", folder=False)
    tasks = [load_eval_file(Path(f).stem, f) for f in args.task_file]
    for suite in args.suite:
        tasks += load_suite(suite)
    model, tokenizer = load_model_and_tokenizer(args.model, trust_remote_code=args.trust_remote_code, field="--model")
    scores = {}
    for task in tasks:
        result = task.evaluate(model, tokenizer, args.limit, progress=task.name)
        scores[task.name] = result.summary
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.summary.items())
        print(f"{task.name}: {shown}")
    if args.json:
        atomic_write_json(args.json, {"model": args.model, "tasks": scores})
        print(f"wrote {args.json}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick)


def _cmd_strategies(args: argparse.Namespace) -> None:
    from .report import format_table
    from .strategies import _REGISTRY, parameter_table

    if args.params:
        rows = parameter_table(args.params)
        if not rows:
            print(f"{args.params}: no parameters")
            return
        print(f"{args.params}: {_summary(_REGISTRY[args.params])}\n")
        print(format_table(["parameter", "type", "default", "description"], [list(row) for row in rows]))
        return
    for name in sorted(_REGISTRY):
        print(f"{name:12s} {_summary(_REGISTRY[name])}")


def _summary(cls) -> str:
    return next(iter((cls.__doc__ or "").strip().splitlines()), "")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:  # -1 would silently drop the last item (a Python slice), 0 would score nothing
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetless", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train tasks in order and measure forgetting")
    run.add_argument("config", help="YAML run config (see configs/)")
    run.add_argument("--out", required=True, help="output folder: results.json, report.md, plots, checkpoints")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its latest resumable state")
    run.set_defaults(func=_cmd_run)

    cmp = commands.add_parser("compare", help="run the config once per strategy (or stack) and write one table")
    cmp.add_argument("config", help="YAML run config; its `strategies` is replaced by each entry of --strategies")
    cmp.add_argument("--strategies", nargs="+", default=[],
                     help="names, YAML mappings ('{name: ewc, lam: 1000}') or lists for a stack ('[replay, wise]'); "
                          "may be left out to add only naive's frontier points to a table")
    cmp.add_argument("--out", required=True, help="output folder: compare.md/.json, pareto.png, one run folder per row")
    cmp.add_argument("--baseline", default="naive", help="the row the others are compared with (default: naive)")
    cmp.add_argument("--frontier-lr", type=float, nargs="+", help="also run naive at these learning rates (its frontier)")
    cmp.add_argument("--frontier-steps", type=int, nargs="+", help="also run naive at these steps per task (its frontier)")
    cmp.add_argument("--seeds", type=int, nargs="+",
                     help="run the whole comparison once per training seed (--out/seed-<seed>/) and summarise the rows "
                          "over seeds in --out/seeds.md: mean ± s.e., distances from each seed's own naive frontier")
    cmp.add_argument("--resume", action="store_true",
                     help="after a killed or Ctrl-C'd compare: the row that was cut off continues from its resumable "
                          "state, rows it had finished are kept, the others run")
    cmp.add_argument("--quiet", action="store_true", help="no progress bars")
    cmp.set_defaults(func=_cmd_compare)

    mrg = commands.add_parser("merge", help="one comparison from several folders run on the same config")
    mrg.add_argument("sources", nargs="+", help="comparison folders (compare --out), or folders of comparisons over "
                     "seeds; one alone is measured again (an older table gets the columns added since)")
    mrg.add_argument("--out", required=True, help="a new folder: the merged compare.md/.json (or seeds.md), run folders")
    mrg.set_defaults(func=_cmd_merge)

    tn = commands.add_parser("tune", help="find the weakest strategy setting whose general drop is within a budget")
    tn.add_argument("config", help="YAML run config (the strategy is added to its stack if absent)")
    tn.add_argument("--knob", required=True, help="STRATEGY.PARAM, e.g. ewc.lam")
    tn.add_argument("--budget", type=float, required=True, help="largest general-score drop allowed, e.g. 0.01")
    tn.add_argument("--values", type=float, nargs="+",
                    help="the grid (default: 7 points around the knob's default, or the centre its strategy declares "
                    "for a knob that is off by default, e.g. 100 for ewc.lam)")
    tn.add_argument("--steps", type=int, help="steps per task for every point (default: the config's)")
    tn.add_argument("--out", required=True, help="output folder: tune.md/.json and the compare table of every run")
    tn.add_argument("--resume", action="store_true", help="after a kill: keep the points already run, continue the one "
                    "cut off from its resumable state")
    tn.add_argument("--quiet", action="store_true", help="no progress bars")
    tn.set_defaults(func=_cmd_tune)

    adv = commands.add_parser("advise", help="recommend a strategy or stack for your constraints, with its evidence")
    adv.add_argument("--raw-data", choices=["yes", "no"], help="may earlier tasks' training rows be stored (default no)")
    adv.add_argument("--compute", choices=["low", "medium", "high"], help="step-time budget: <=1.10x, <=1.50x, any")
    adv.add_argument("--tasks", type=int, help="tasks in the sequence (default 2)")
    adv.add_argument("--adapter", choices=["full", "lora"], help="full fine-tuning or LoRA (default full)")
    adv.add_argument("--budget", type=float, help="largest acceptable general drop (default 0.01)")
    adv.add_argument("--chat", choices=["yes", "no"],
                     help="must the model keep following instructions: weigh the generation checks (default yes)")
    adv.add_argument("--from", dest="from_dirs", nargs="+",
                     help="your own compare/tune folders (or a compare --seeds folder) as the evidence")
    adv.add_argument("--no-input", action="store_true", help="never ask; use the defaults for missing flags")
    adv.set_defaults(func=_cmd_advise)

    ev = commands.add_parser("eval", help="score a model on multiple-choice / perplexity tasks")
    ev.add_argument("--model", default="default", help="'default', a Hugging Face id or a local folder")
    ev.add_argument("--task-file", action="append", default=[], help="JSONL task file (repeatable)")
    ev.add_argument("--suite", action="append", default=[], help="built-in suite, e.g. general (repeatable)")
    ev.add_argument("--limit", type=_positive_int, default=None, help="score at most N items per task")
    ev.add_argument("--json", help="write the scores to this JSON file")
    ev.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder")
    ev.set_defaults(func=_cmd_eval)

    demo = commands.add_parser("demo", help="full fine-tuning vs LoRA on `support` with the default model")
    demo.add_argument("--out", default="demo-out", help="output folder")
    demo.add_argument("--quick", action="store_true", help="a much shorter run, to check the set-up")
    demo.set_defaults(func=_cmd_demo)

    strategies = commands.add_parser("strategies", help="list the registered strategies, or one's parameters")
    strategies.add_argument("--params", metavar="NAME", help="print NAME's parameters with defaults and descriptions")
    strategies.set_defaults(func=_cmd_strategies)
    return parser


class _WarningLine(logging.Handler):
    """forgetless's own warnings (rows cut by max_length, questions cut to fit) as `forgetless: warning: ...` lines.

    It looks up sys.stderr at each line, not once, so a replaced stderr (a test's capture) gets them."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"forgetless: warning: {record.getMessage()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logger = logging.getLogger("forgetless")
    if not any(isinstance(handler, _WarningLine) for handler in logger.handlers):
        logger.addHandler(_WarningLine(logging.WARNING))
    from .resume import RunInterrupted

    try:
        args.func(args)
    except RunInterrupted as exc:
        print(f"forgetless: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except ForgetlessError as exc:
        print(f"forgetless: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("forgetless: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
