"""Every command in README.md and docs/*.md runs as written (issue 17, point 5).

The fenced shell blocks' commands that start with ``fgbg-`` or ``make`` are extracted; each Hydra command is
composed by its real entry point with ``--cfg job`` (nothing trains), must leave no required value (``???``)
unset and, for ``fgbg-train``, pass the config checks; each ``make`` target must exist. Within one block,
a command that reads what an earlier one wrote must name the same place: shards that ``fgbg-train`` reads
are in the folder ``fgbg-synth`` / ``fgbg-preprocess`` wrote, ``<run>/...`` is a file the training run
writes, and ``make learn-check`` picks the weights of the run ``fgbg-train`` just made. Repository paths
that the docs name (links, backticked ``fgbg/...``, ``conf/...``, ``tests/...::test``) exist.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from braceexpand import braceexpand
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from fgbg.config_checks import check_train_config
from fgbg.utils.config import missing_keys

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}
APPS = {  # console script -> module whose main() is its @hydra.main
    "fgbg-train": "fgbg.train",
    "fgbg-generate": "fgbg.generate",
    "fgbg-evaluate": "fgbg.evaluate",
    "fgbg-synth": "fgbg.synth.app",
    "fgbg-preprocess": "fgbg.preprocess.app",
    "fgbg-app": "fgbg.app.server",
}
PLACEHOLDER = re.compile(r"<[^<>\s]+>")  # <run>, <folder>: a name the reader fills in


@dataclass
class Command:
    doc: str
    line: int
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {shlex.join(self.argv)}"


def doc_blocks(path: Path) -> list[list[Command]]:
    """The shell commands of each fenced block of ``path`` that start with ``fgbg-`` or ``make``."""
    text = path.read_text()
    blocks = []
    for match in re.finditer(r"^```([\w-]*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if match.group(1) not in SHELL:
            continue
        first_line = text[: match.start(2)].count("\n") + 1
        commands = []
        lines = match.group(2).split("\n")
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            i += 1
            line = re.sub(r"^\s*\$\s+", "", line)
            line = re.sub(r"^\s*(\.venv/bin/|\S*/)(?=fgbg-)", "", line)  # .venv/bin/fgbg-train: the same command
            if not re.match(r"\s*(fgbg-|make\b)", line):
                continue
            name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
            commands.append(Command(name, first_line + start, shlex.split(line, comments=True)))
        if commands:
            blocks.append(commands)
    return blocks


BLOCKS = [block for doc in DOCS for block in doc_blocks(doc)]
COMMANDS = [cmd for block in BLOCKS for cmd in block]


def sweep_variants(args: list[str]) -> list[list[str]]:
    """A multirun's overrides as the single runs it launches (``lr=1e-4,2e-4`` -> two lists)."""
    parsed = OverridesParser.create().parse_overrides(args)
    choices = []
    for arg, override in zip(args, parsed, strict=True):
        if override.is_sweep_override():
            key = arg.split("=", 1)[0]
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([arg])
    return [list(combo) for combo in itertools.product(*choices)]


def compose_cli(app: str, args: list[str]) -> DictConfig:
    """``<app> <args> --cfg job`` through the app's real ``main`` (in this process): the job config it prints."""
    main = importlib.import_module(APPS[app]).main
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [app, *args, "--cfg", "job"]
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise AssertionError(f"{app} {shlex.join(args)} --cfg job failed:\n{err.getvalue()[-3000:]}") from None
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return OmegaConf.create(out.getvalue())


def hydra_runs(cmd: Command) -> list[tuple[str, list[str]]]:
    """(app, overrides) of every run a documented Hydra command launches; placeholders filled with a name."""
    app, *args = cmd.argv
    if app == "make":
        assert len(args) >= 1 and args[0] == "app", cmd
        app, args = "fgbg-app", shlex.split(next((a.split("=", 1)[1] for a in args[1:] if a.startswith("ARGS=")), ""))
    assert app in APPS, f"{cmd}: unknown command {app}"
    args = [PLACEHOLDER.sub("placeholder", a) for a in args if a not in ("-m", "--multirun")]
    return [(app, variant) for variant in sweep_variants(args)]


def resolved(cfg: DictConfig, key: str):
    """``cfg.<key>`` resolved outside Hydra (``paths.output_dir`` needs a run, so it is not asked for)."""
    node = OmegaConf.masked_copy(cfg, ["paths", "task_name", "data"]) if "paths" in cfg else cfg
    value = OmegaConf.select(node, key, throw_on_missing=True)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def norm(path: str) -> str:
    return os.path.normpath(path)


@pytest.mark.parametrize(
    "cmd", [c for c in COMMANDS if c.argv[0].startswith("fgbg-") or c.argv[1:2] == ["app"]], ids=str
)
def test_documented_hydra_command_composes_with_every_required_value(cmd):
    for app, args in hydra_runs(cmd):
        cfg = compose_cli(app, args)
        missing = missing_keys(cfg)
        assert not missing, f"{cmd}: required values not given: {missing}"
        if app == "fgbg-train":
            check_train_config(cfg, check_paths=False)


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.argv[0] == "make"], ids=str)
def test_documented_make_target_exists(cmd):
    targets = [a for a in cmd.argv[1:] if "=" not in a and not a.startswith("-")]
    assert targets, f"{cmd}: no target"
    unknown = set(targets) - makefile_targets()
    assert not unknown, f"{cmd}: no such Makefile target {sorted(unknown)}"


def producer_outputs(cmd: Command) -> tuple[str, int | None, str] | None:
    """(folder, number of shards, split) that an ``fgbg-synth`` / ``fgbg-preprocess`` command writes, else None."""
    if cmd.argv[0] not in ("fgbg-synth", "fgbg-preprocess") or "=OUT" in " ".join(cmd.argv):
        return None  # OUT: a folder the reader names, read by no later command
    ((app, args),) = hydra_runs(cmd)
    cfg = compose_cli(app, args)
    count = math.ceil(cfg.num_videos / cfg.videos_per_shard) if app == "fgbg-synth" else None
    return norm(cfg.output), count, str(cfg.get("split", "train"))


def run_files(cfg: DictConfig) -> set[str]:
    """What a training run writes under its folder that other commands read."""
    stage, callbacks = cfg.model.stage, cfg.get("callbacks") or {}
    files = {"", "checkpoints/last.ckpt"}
    if callbacks.get("stage_weights") is not None:
        files |= {f"checkpoints/{stage}.safetensors", f"checkpoints/{stage}_ema.safetensors"}
    if callbacks.get("vae_export") is not None:  # experiment=synthetic_tiny_vae
        files.add("vae")
    return files


def run_problems(cmd: Command, trained: dict[str, DictConfig]) -> tuple[int, list[str]]:
    """Arguments naming a run (``<run>``): ``<run>/FILE`` is a file of the block's latest run; with a folder
    before ``<run>`` (``outputs/synthetic_tiny_image/runs/<run>/...``), it is where a run of the block wrote."""
    checked, problems = 0, []
    for arg in cmd.argv[1:]:
        if "<run>" not in arg or not trained:
            continue
        checked += 1
        value = arg.split("=", 1)[1]
        before, after = value.split("<run>", 1)
        wanted = after.lstrip("/")
        if before:
            runs = {norm(f"{resolved(c, 'paths.log_dir')}/{c.task_name}/runs"): c for c in trained.values()}
            cfg = runs.get(norm(before))
            if cfg is None:
                problems.append(f"{cmd}: {before}<run> is not where the block's runs go ({sorted(runs)})")
                continue
        else:
            cfg = trained[next(reversed(trained))]
        if wanted not in run_files(cfg):
            problems.append(f"{cmd}: <run>/{wanted} is not written by the run ({sorted(run_files(cfg))})")
    return checked, problems


INPUT_KEYS = {"fgbg-generate": ("motion", "reference"), "fgbg-evaluate": ("data.val_shards",)}


def test_chained_commands_agree_on_paths(tmp_path):
    """Within one block: shards read where they were written, run folders and ``<run>/...`` files where a run
    of the block writes them, learn-check's weights those of the run just trained."""
    checked, problems = 0, []
    for block in BLOCKS:
        produced: list[tuple[str, int | None, str]] = []
        trained: dict[str, DictConfig] = {}  # stage -> the latest fgbg-train of that stage in the block
        for cmd in block:
            if (out := producer_outputs(cmd)) is not None:
                produced.append(out)
                continue
            n, found = run_problems(cmd, trained)
            checked, problems = checked + n, problems + found
            if cmd.argv[0] == "fgbg-train":
                try:
                    cfgs = [compose_cli(app, args) for app, args in hydra_runs(cmd)]
                except Exception:  # noqa: BLE001  (a command that does not compose fails its own test above)
                    continue
                for cfg in cfgs:
                    for key in ("train_shards", "val_shards"):
                        shards = resolved(cfg, f"data.{key}")
                        if not produced or shards is None:
                            continue
                        checked += 1
                        for item in [shards] if isinstance(shards, str) else shards:
                            problems += [
                                p for f in braceexpand(item) for p in shard_problems(cmd, key, norm(f), produced)
                            ]
                    trained.pop(cfg.model.stage, None)
                    trained[cfg.model.stage] = cfg
            elif cmd.argv[0] in INPUT_KEYS:  # inputs inside a folder the block wrote must be files it wrote
                for arg in cmd.argv[1:]:
                    key, _, value = arg.partition("=")
                    if key in INPUT_KEYS[cmd.argv[0]] and any(norm(os.path.dirname(value)) == p[0] for p in produced):
                        checked += 1
                        problems += shard_problems(cmd, key, norm(value), produced)
            elif cmd.argv[:2] == ["make", "learn-check"] and "image" in trained:  # it checks stage-image weights
                checked += 1
                problems += learn_check_problems(cmd, trained["image"], tmp_path)
    assert checked >= 6, f"only {checked} chained paths found: the docs' chains were not read"
    assert not problems, "commands that disagree on paths:\n  " + "\n  ".join(problems)


def shard_problems(cmd: Command, key: str, file: str, produced: list[tuple[str, int | None, str]]) -> list[str]:
    """``file`` (read as ``data.<key>``) must be one that an earlier command of the block wrote."""
    folder, name = os.path.dirname(file), os.path.basename(file)
    same = [p for p in produced if p[0] == folder]
    if not same:
        return [f"{cmd}: data.{key} reads {file}, but the block writes into {sorted({p[0] for p in produced})}"]
    if any(count is None or name in {f"{split}-{i:06d}.tar" for i in range(count)} for _, count, split in same):
        return []
    return [f"{cmd}: data.{key} reads {file}, which none of {same} writes"]


def learn_check_problems(cmd: Command, trained: DictConfig, tmp_path: Path) -> list[str]:
    """``make learn-check`` right after training must evaluate that run's stage-image EMA weights."""
    if any(a.startswith("WEIGHTS=") for a in cmd.argv):
        return []
    log_dir, task = resolved(trained, "paths.log_dir"), trained.task_name
    weights = Path(norm(f"{log_dir}/{task}/runs/run1/checkpoints/{trained.model.stage}_ema.safetensors"))
    work = tmp_path / "learn_check"  # a checkout-shaped folder where the documented run has finished
    (work / weights).parent.mkdir(parents=True, exist_ok=True)
    (work / weights).touch()
    for name in ("setup.cfg", "pyproject.toml", ".venv/.installed"):  # `make install` done
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).touch()
    made = subprocess.run(
        ["make", "-n", "-f", str(REPO / "Makefile"), *cmd.argv[1:]], cwd=work, capture_output=True, text=True
    )
    if made.returncode or f"--weights {weights}" not in made.stdout:
        return [f"{cmd}: does not pick {weights} written by fgbg-train ({made.stdout[-500:]}{made.stderr[-500:]})"]
    return []


REPO_PATH = re.compile(r"`((?:fgbg|conf|tests|bench|docs|measured|seed)/[\w./-]*)(?:::(\w+))?`")


def test_paths_named_by_the_docs_exist():
    problems = []
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):  # markdown links to local files
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                problems.append(f"{doc.relative_to(REPO)}: link {target}")
        for path, test_name in REPO_PATH.findall(text):
            if any(ch in path for ch in "*{<") or path.endswith("/..."):
                continue
            if not (REPO / path).exists():
                problems.append(f"{doc.relative_to(REPO)}: `{path}`")
            elif test_name and not re.search(rf"^\s*def {test_name}\(", (REPO / path).read_text(), re.M):
                problems.append(f"{doc.relative_to(REPO)}: `{path}::{test_name}` (no such test)")
    assert not problems, "docs name paths that do not exist:\n  " + "\n  ".join(problems)


def test_the_extractor_reads_continuations_comments_and_sweeps(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n```bash\nfgbg-train a=1 \\\n    b=2   # note\necho no\nmake learn-check\n```\n"
        "```python\nfgbg-train c=3\n```\n"
    )
    (block,) = doc_blocks(doc)
    assert [c.argv for c in block] == [["fgbg-train", "a=1", "b=2"], ["make", "learn-check"]]
    assert [c.line for c in block] == [3, 6]
    assert sweep_variants(["x=1,2", "y=a"]) == [["x=1", "y=a"], ["x=2", "y=a"]]
