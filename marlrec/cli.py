"""The `marlrec` command: `train` (a Hydra app), `evaluate`, `recommend`, `add-items`, `update`,
`serve`, `export`, `abtest`, `compare` and `plugins`."""

from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from marlrec import registry
from marlrec.registry import MarlrecError

if TYPE_CHECKING:
    from marlrec.serve.writer import WriterOptions

USAGE = """usage: marlrec <command> [key=value ...]

commands:
  train       train agents and evaluate them beside the baselines (a Hydra app:
              overrides such as agent=idqn trainer.max_epochs=3, -m for sweeps, --help)
  evaluate    re-evaluate a saved run: marlrec evaluate run_dir=outputs/runs/...
  recommend   top-k items with explanations, for a known user, a new user's history of item
              numbers or a text: marlrec recommend run_dir=... user=3 | history=[12,50,181] |
              text="a quiet space drama" [k=10
              expose_history=false explain.writer=none|hf explain.model=...]
  add-items   new items recommendable without retraining, encoded by the run's encoder:
              marlrec add-items run_dir=... file=new_items.csv (columns: id, title, any text)
  update      a new version of a run that has learnt from new interactions (new users and
              items allowed), served from then on, the earlier ones kept:
              marlrec update run_dir=... log=new.csv (columns: user, item, timestamp, rating)
              [items=new_items.csv steps=N replay=0.5 lr=... force=false]
  serve       a JSON HTTP API over a run (FastAPI, docs at /docs):
              marlrec serve run_dir=... [host=127.0.0.1 port=8000 workers=1 batching=true
              expose_history=false model=fp32|int8|onnx|onnx-int8 reload_every=1
              (seconds between looks for a new version, 0: never)
              explain.writer=none|hf explain.model=...]
  export      the scoring networks quantised to int8 or as ONNX, with their speed-up and
              top-10 overlap over fp32: marlrec export run_dir=... format=int8|onnx|onnx-int8
              [force=false]
  abtest      two runs in the same simulated sessions and on the same users' held-out items,
              each metric's difference with a 95% interval and p-value: marlrec abtest
              run_a=... run_b=... [users=1000 seed=0 out=abtest force=false]
  compare     runs side by side, mean ± std over seeds: marlrec compare <run or multirun
              dirs...> [--out compare/] [--metrics test/HR@10,test/NDCG@10] [--force]
  plugins     list installed plugins by kind, with the package each comes from;
              `marlrec plugins show KIND NAME` prints one plugin's options (e.g. reward click)
"""
MAX_ID = 2**63 - 1
MAX_K = 1000  # as `marlrec serve` allows


def train_command(args: list[str]) -> int:
    from marlrec.app import preflight, register_plugin_configs, train_app
    from marlrec.threads import register_job

    # Counted among the machine's jobs from the start: runs launched together see each other
    # by the time their setup ends and they size their thread pools.
    register_job()
    register_plugin_configs()
    preflight(args)
    sys.argv = ["marlrec train", *args]
    train_app()
    return 0


def _options(args: list[str], required: tuple[str, ...], defaults: dict[str, object]) -> dict:
    bad = [a for a in args if "=" not in a]
    if bad:
        raise MarlrecError(f"expected key=value arguments, got '{bad[0]}'")
    options = {**defaults, **OmegaConf.to_container(OmegaConf.from_dotlist(args))}
    unknown = sorted(set(options) - set(required) - set(defaults))
    if unknown:
        raise MarlrecError(
            f"unknown option '{unknown[0]}'; options: {', '.join((*required, *defaults))}"
        )
    missing = [key for key in required if key not in options]
    if missing:
        raise MarlrecError(f"missing {missing[0]}=...")
    return options


def _whole(options: dict, key: str, low: int, high: int) -> int:
    """An option that must be a whole number in [low, high]: no NaN, 1.5, true or text."""
    value = options[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MarlrecError(f"{key} must be a whole number from {low} to {high}, got {value!r}")
    return value


def evaluate_command(args: list[str]) -> int:
    from marlrec.run import evaluate_run

    options = _options(args, ("run_dir",), {})
    evaluate_run(Path(str(options["run_dir"])))
    return 0


def recommend_command(args: list[str]) -> int:
    from marlrec.recommend import load_run, recommend_for
    from marlrec.serve.writer import WriterOptions

    queries = {"user": None, "history": None, "text": None}
    defaults: dict[str, object] = {"k": 10, "expose_history": False, "explain": None, **queries}
    options = _options(args, ("run_dir",), defaults)
    named = {arg.split("=", 1)[0] for arg in args}
    given = [key for key in queries if key in named]
    if len(given) != 1:
        raise MarlrecError(
            'missing user=..., history=[...] or text="..."'
            if not given
            else f"give one of user, history and text, not {' and '.join(given)}"
        )
    run_dir = Path(str(options["run_dir"]))
    k, expose = _whole(options, "k", 1, MAX_K), _flag(options, "expose_history")
    writer = WriterOptions.from_options(options["explain"])
    # A pseudonymised run knows its users by their outside ids, which may be any text.
    if given == ["user"] and not _pseudonymised(run_dir):
        _whole(options, "user", 0, MAX_ID)
    if given != ["user"] or writer.writer != "none":
        return recommend_query(options, given[0], k, writer)
    user = options["user"]
    pipeline = load_run(run_dir)
    rows = recommend_for(pipeline, user, k, expose)
    table = Table(title=f"top {len(rows)} for user {options['user']}")
    for column in ("#", "item", "text", "why"):
        table.add_column(column)
    for rank, row in enumerate(rows, 1):
        table.add_row(str(rank), str(row["item"]), row["text"], row["why"])
    Console(width=200).print(table)
    return 0


def recommend_query(options: dict, given: str, k: int, writer: WriterOptions) -> int:
    """Top-k for a history of item numbers, a text, or (with a sentence writer) a user,
    ranked and explained as the service does."""
    from marlrec.serve.service import BadQuery, Query, Service

    history, text = options["history"], options["text"]
    if given == "history" and (
        not isinstance(history, list)
        or not history
        or any(not isinstance(i, int) or isinstance(i, bool) for i in history)
    ):
        raise MarlrecError(
            f"history must be a list of item numbers like [12,50,181], got {history!r}"
        )
    if given == "text" and (text is None or not str(text).strip()):
        raise MarlrecError("text is empty")
    run_dir = Path(str(options["run_dir"]))
    expose = _flag(options, "expose_history")
    service = Service.from_run(
        run_dir, batching=False, expose_history=expose, writer=writer, keep_known=False
    )
    query = Query(
        k=k,
        user=None if given != "user" else options["user"],
        history=None if history is None else tuple(history),
        text=None if text is None else str(text),
    )
    try:
        rows = service.explain(service.answer(query))
    except BadQuery as exc:
        raise MarlrecError(str(exc)) from None
    asked = {"user": f"user {options['user']}", "history": f"history {history}"}
    table = Table(title=f"top {len(rows)} for " + asked.get(given, f"'{text}'"))
    sentences = writer.writer != "none"
    for column in ("#", "item", "text", "why", *(["sentence"] if sentences else [])):
        table.add_column(column)
    for rank, row in enumerate(rows, 1):
        cells = [str(rank), str(row["item"]), row["text"], _why(row)]
        table.add_row(*cells, *([row["sentence"]] if sentences else []))
    Console(width=200).print(table)
    return 0


def _why(row: dict) -> str:
    """Who placed an explained item, with its score and rank there, and what it is like."""
    placed = (
        f"chosen by the '{row['placed_by']}' agent"
        if row["stage"] == "slate"
        else f"ranked by {row['placed_by']}"
    )
    why = f"{placed} (score {row['score']:.3f}, rank {row['rank']})"
    near = row["nearest_history"]
    if near:
        why += f"; like '{near[0]['text'][:70]}' (cosine {near[0]['similarity']:.2f})"
    return why


def add_items_command(args: list[str]) -> int:
    from marlrec.recommend import add_items, load_run, read_items_file

    options = _options(args, ("run_dir", "file"), {})
    run_dir, path = Path(str(options["run_dir"])), Path(str(options["file"]))
    rows = read_items_file(path)  # a malformed file fails before the run is loaded
    pipeline = load_run(run_dir)
    numbers = add_items(run_dir, pipeline, rows, str(path))
    table = Table(title=f"{len(numbers)} items added to {run_dir}")
    for column in ("item", "id", "title"):
        table.add_column(column)
    for number, row in zip(numbers, rows, strict=True):
        table.add_row(str(number), row["id"].strip(), row["title"].strip())
    Console(width=160).print(table)
    return 0


def update_command(args: list[str]) -> int:
    from marlrec.update import UpdateOptions, update_run

    defaults: dict[str, object] = {
        "items": None,
        "steps": None,
        "replay": 0.5,
        "lr": None,
        "force": False,
    }
    options = _options(args, ("run_dir", "log"), defaults)
    steps = None if options["steps"] is None else _whole(options, "steps", 0, 10**7)
    replay, lr = options["replay"], options["lr"]
    if isinstance(replay, bool) or not isinstance(replay, int | float):
        raise MarlrecError(f"replay must be a number from 0 to below 1, got {replay!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0):
        raise MarlrecError(f"lr must be a positive number, got {lr!r}")
    chosen = UpdateOptions(steps, float(replay), lr and float(lr), _flag(options, "force"))
    items = None if options["items"] is None else Path(str(options["items"]))
    run_dir = Path(str(options["run_dir"]))
    report = update_run(run_dir, Path(str(options["log"])), items, chosen)
    print(
        f"wrote version {report['version']} of {run_dir} (now served): "
        f"{report['interactions']} interactions, {report['new_users']} new users, "
        f"{report['new_items']} new items; {report['steps']} steps, valid NDCG@10 "
        f"{report['valid_ndcg10_before']:.4f} -> {report['valid_ndcg10_after']:.4f}, "
        f"{report['seconds']:.1f} s"
    )
    return 0


def _pseudonymised(run_dir: Path) -> bool:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    return bool(OmegaConf.select(OmegaConf.load(saved), "privacy.pseudonymise", default=False))


def _flag(options: dict, key: str) -> bool:
    if not isinstance(options[key], bool):
        raise MarlrecError(f"{key} must be true or false, got {options[key]}")
    return bool(options[key])


def serve_command(args: list[str]) -> int:
    from marlrec.export import MODELS
    from marlrec.serve import serve
    from marlrec.serve.writer import WriterOptions

    defaults = {
        "host": "127.0.0.1",
        "port": 8000,
        "workers": 1,
        "batching": True,
        "expose_history": False,
        "model": "fp32",
        "reload_every": 1.0,
        "explain": None,
    }
    options = _options(args, ("run_dir",), defaults)
    port, workers = _whole(options, "port", 0, 65535), _whole(options, "workers", 1, 256)
    batching, expose = _flag(options, "batching"), _flag(options, "expose_history")
    if options["model"] not in MODELS:
        raise MarlrecError(f"unknown model '{options['model']}'; models: {', '.join(MODELS)}")
    reload_every = options["reload_every"]
    if (
        isinstance(reload_every, bool)
        or not isinstance(reload_every, int | float)
        or not (0 <= reload_every <= 86400)
    ):
        raise MarlrecError(f"reload_every must be seconds from 0 to 86400, got {reload_every!r}")
    writer = WriterOptions.from_options(options["explain"])
    run_dir = Path(str(options["run_dir"]))
    model = str(options["model"])
    host = str(options["host"])
    serve(run_dir, host, port, workers, batching, expose, model, reload_every, writer)
    return 0


def export_command(args: list[str]) -> int:
    from marlrec.export import export_dir, export_run

    options = _options(args, ("run_dir", "format"), {"force": False})
    run_dir, fmt = Path(str(options["run_dir"])), str(options["format"])
    report = export_run(run_dir, fmt, _flag(options, "force"))
    print(
        f"wrote {export_dir(run_dir, fmt)}: scoring {report['speedup']:.2f}x fp32's speed "
        f"({report['threads']} threads), top-10 overlap with fp32 {report['top10_overlap']:.3f} "
        f"over {report['validation_users']} validation users"
    )
    return 0


def abtest_command(args: list[str]) -> int:
    from marlrec.abtest import abtest, write_report

    defaults = {"users": 1000, "seed": 0, "out": "abtest", "force": False}
    options = _options(args, ("run_a", "run_b"), defaults)
    users, seed = _whole(options, "users", 2, 10**7), _whole(options, "seed", 0, 2**32 - 1)
    force = options["force"]
    if not isinstance(force, bool):
        raise MarlrecError(f"force must be true or false, got {force!r}")
    out = Path(str(options["out"]))
    if (out / "abtest.json").exists() and not force:  # checked before minutes of sessions
        raise MarlrecError(f"{out / 'abtest.json'} exists; choose another out=... or force=true")
    report = abtest(Path(str(options["run_a"])), Path(str(options["run_b"])), users, seed)
    write_report(report, out, force)
    held_out = report["held_out_users"]
    table = Table(
        title=f"B - A over {users} simulated sessions and {held_out} users' held-out items"
    )
    for column in ("metric", "A", "B", "B - A", "95% interval", "p", "needed"):
        table.add_column(column, justify="right")
    for row in report["comparisons"]:
        needed = row["needed"]
        table.add_row(
            row["metric"],
            f"{row['mean_a']:.4f}",
            f"{row['mean_b']:.4f}",
            f"{row['difference']:+.4f}",
            f"[{row['low']:+.4f}, {row['high']:+.4f}]",
            f"{row['p_value']:.3g}",
            "-" if needed is None else f"{needed} {row['over']}",
        )
    Console(width=160).print(table)
    print(f"wrote {out / 'abtest.json'} and {out / 'abtest.png'}")
    return 0


class _Arguments(argparse.ArgumentParser):
    """argparse that reports a bad argument as one MarlrecError line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise MarlrecError(f"{self.prog}: {message}")


def compare_command(args: list[str]) -> int:
    from marlrec.compare import compare

    parser = _Arguments(prog="marlrec compare", description="Runs side by side, over seeds.")
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--out", type=Path, default=Path("compare"), help="output directory")
    parser.add_argument("--metrics", help="comma-separated metric keys, e.g. test/HR@10")
    parser.add_argument("--force", action="store_true", help="overwrite earlier outputs")
    options = parser.parse_args(args)
    metrics = (
        [m.strip() for m in options.metrics.split(",") if m.strip()] if options.metrics else None
    )
    print(compare(options.dirs, options.out, metrics, options.force))
    print(f"wrote compare.csv, compare.json and plots to {options.out}")
    return 0


def plugins_command(args: list[str]) -> int:
    if args[:1] == ["show"]:
        return show_plugin(args[1:])
    if args:
        raise MarlrecError("`marlrec plugins` takes no arguments but `show KIND NAME`")
    table = Table(title="installed marlrec plugins")
    for column in ("kind", "name", "package", "entry point"):
        table.add_column(column)
    for group, kind in registry.KINDS.items():
        for plugin in registry.available(group):
            problem = registry.load_problem(plugin)
            if problem is not None:
                print(f"marlrec: warning: {problem}", file=sys.stderr)
                continue
            table.add_row(f"{kind.noun} ({group})", plugin.name, plugin.distribution, plugin.target)
    Console(width=160).print(table)
    return 0


def show_plugin(args: list[str]) -> int:
    """One plugin's package, class and options, each with its type, default and docstring."""
    if len(args) != 2:
        raise MarlrecError(
            "usage: marlrec plugins show KIND NAME, e.g. marlrec plugins show reward click"
        )
    group = _group(args[0])
    name = args[1]
    options = registry.describe(group, name)
    plugin = next(p for p in registry.available(group) if p.name == name)
    cls = registry.load(group, name)
    print(
        f"{registry.KINDS[group].noun} '{name}' ({group}={name}) from package {plugin.distribution}"
    )
    print(f"class {plugin.target}")
    if cls.__doc__:
        print(inspect.cleandoc(cls.__doc__))
    table = Table(title="options")
    for column in ("option", "type", "default", "description"):
        table.add_column(column)
    for option in options:
        # Escaped: types such as list[str] would otherwise read as rich markup.
        table.add_row(*(escape(cell) for cell in astuple(option)))
    Console(width=160).print(table)
    return 0


def _group(kind: str) -> str:
    """A config group from its name (`data`) or its noun (`dataset`)."""
    nouns = {k.noun: group for group, k in registry.KINDS.items()}
    return registry.kind_of(nouns.get(kind, kind)).group


COMMANDS = {
    "train": train_command,
    "evaluate": evaluate_command,
    "recommend": recommend_command,
    "add-items": add_items_command,
    "update": update_command,
    "serve": serve_command,
    "export": export_command,
    "abtest": abtest_command,
    "compare": compare_command,
    "plugins": plugins_command,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(
            f"marlrec: unknown command '{argv[0]}'; commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        return command(argv[1:])
    except MarlrecError as exc:
        print(f"marlrec: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
