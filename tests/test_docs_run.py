"""The docs run as written: every command line and Python block of README.md and docs/*.md that a
user would paste is parsed or executed here, so a wrong line fails the tests.

What is read: fenced code blocks. A line is a command when it starts with a program a user types
(`alexnet`, `python`, `torchrun`, `pip`, ...); `$ command` followed by output lines is a transcript,
whose output must be what the command prints. Lines continued with a backslash are joined, `&&`
splits, `NAME="..."` sets a variable for the rest of its block, and `[--option value]` and `a|b` in
a synopsis are read as the option and the first choice.

What happens to each command (RULES, first match):
  run     executed in a workspace that holds the files the docs name (below), after SUBSTITUTIONS:
          the documented replacements that make long runs short (a 90-epoch recipe -> 1 epoch);
  parse   only parsed by the `alexnet` parser (every option and argument must exist and fit),
          because it needs what a test cannot have: the reason is in RULES (a GPU, several nodes,
          ImageNet, the network, minutes of both cores). Where another test runs it small, RULES
          names that test;
  skip    not `alexnet` (pip, wget, the test suite itself): the reason is in RULES.
A command no rule covers fails: a new line in the docs is run here or its reason written down.

The workspace (built once per module; each block gets its own hard-linked copy): the docs' place
holders RUN, CKPT, PREPARED, DATA, DIR, IMAGE map to a tiny run and prepared set (3 generated
classes, 18 training and 6 validation images, one training epoch of the paper's net); `demo/data`,
`demo/run`, `runs/a` and `runs/b` are those; `photo.jpg`, `cat.jpg`, `dog.png`, `a.jpg`,
`b.jpg`, `more.jpg`, `photos/`, `more_photos/` are real photographs (scikit-image's); `my_photos/` is a
folder per class.

The default suite parses every command, checks every Python block for names it never defines, runs
README.md's Python blocks (what a new user pastes first; README's command blocks are installs and the
demo) and checks the determinism claim of docs/training.md on a small net. `-m slow` runs every
runnable command and Python block of docs/*.md (about five minutes on two cores).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from torch import nn

from alexnet.cli import build_parser, main
from alexnet.lrn import LocalResponseNorm

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
PROGRAMS = ("alexnet", "python", "torchrun", "pip", "wget", "echo", "tar", "nvidia-smi", "chromium")

# (pattern on the command, what to do, why): the first match decides
RULES = [
    (r"^pip ", "skip", "installs packages (network)"),
    (r"^(wget|tar|nvidia-smi) |sha1sum", "skip", "downloads or unpacks BVLC's files, or queries a GPU"),
    (r"^chromium ", "skip", "a browser screenshot; tests/test_report.py checks the page"),
    (r"^python -m pytest", "skip", "the test suite itself"),
    (r"^python -c .*make_shapes\('lb/src'", "parse", "draws 1,280 images (a minute) for the large-batch measurement"),
    (r"^python -c ", "run", ""),
    (
        r"^torchrun ",
        "parse",
        "several processes on GPUs or nodes; tests/test_train_ddp.py, test_parallel.py and "
        "test_evaluate.py run torchrun's layouts with gloo on the CPU",
    ),  # fmt: skip
    (r"--device cuda|bench gpu", "parse", "needs a CUDA GPU; tests/test_gpu.py (-m gpu)"),
    (r"imagenet|ILSVRC2012|cifar-10-batches-py|/data/", "parse", "needs ImageNet or CIFAR-10 on disk"),
    (r"bvlc_alexnet|caffemodel", "parse", "BVLC's 233 MiB file (network); tests/test_caffe.py imports files it writes"),
    (r"^alexnet demo", "parse", "seven minutes of both cores; tests/test_demo.py runs it shrunk"),
    (r"^alexnet bench ", "parse", "a benchmark: minutes of both cores; tests/test_bench_*.py run each small"),
    (r"^alexnet experiment ", "parse", "minutes to hours; tests/test_experiments.py runs each small"),
    (r"^alexnet prepare lb/", "parse", "1,280 images at 76 px: minutes (the large-batch measurement)"),
    (r"^alexnet train (lb/|setS )", "parse", "a measurement's runs (minutes each); docs/training.md, experiments.md"),
    (r"^alexnet ", "run", ""),
]
# (pattern, replacement, why), applied in order to each `alexnet` command before it runs
SUBSTITUTIONS = [
    (r"\[(--[^\[\]]*)\]", r"\1", "a synopsis's [--option value]: given"),
    (r"\b(\w+)(\|\w+)+\b", r"\1", "a synopsis's a|b: the first"),
    (r"\bRUN1 RUN2 RUN3\b", "runs/a runs/b demo/run", "an ensemble of three runs"),
    (r"--out DIR\b", "--out report_out", "a new output folder"),
    (r"\b(RUN|CKPT)\b", "runs/a", "the tiny run"),
    (r"\b(PREPARED|DATA|DIR)\b", "demo/data", "the tiny prepared set"),
    (r"\bIMAGE\b(\.\.\.)?", "photo.jpg", "a photograph"),
    (r"\bFILE\b", "out.onnx", "an output file"),
    (r"--set train\.epochs=\d+", "--set train.epochs=1", "N epochs -> 1"),
    (r"^(alexnet train (?!.*train\.epochs).*)$", r"\1 --set train.epochs=1", "the paper's 90 epochs -> 1"),
    (r"^(alexnet train .*)$", r"\1 --set data.workers=0", "no loader processes (start-up time)"),
    (r"^(alexnet (evaluate|features|probe) .*)$", r"\1 --workers 0", "no loader processes"),
    (r"--download|--weights IMAGENET1K_V1", "tv_state.pth", "torchvision's file -> a random net's state dict"),
    (r"alexnet-owt-7be5be79\.pth", "tv_state.pth", "the same"),
]
PY_SUBSTITUTIONS = [  # (old, new, why) in Python blocks
    ('"data.batch_size=32"', '"data.batch_size=6", "data.workers=0"', "18 images; no loader processes"),
    ('"train.epochs=2"', '"train.epochs=1"', "2 epochs -> 1"),
    ("runs/alexnet", "runs/a", "the tiny run"),
    ("data/imagenet", "demo/data", "the tiny prepared set"),
    ("data/mine", "demo/data", "the tiny prepared set"),
    ("progress=print", "progress=None", "quiet"),
]


@dataclass
class Command:
    page: str
    line: int
    words: list[str]  # one command as the shell splits it: continuation lines joined, comments dropped
    expect: list[str] | None = None  # a transcript's output lines

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _blocks(page: str) -> list[tuple[int, str, str]]:
    """(line number, language, body) of the fenced code blocks of a page."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [
        (text[: m.start()].count("\n") + 2, m.group(1), m.group(2))
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
    ]


def _is_command(line: str) -> bool:
    words = line.split()
    if not words or re.match(r"^alexnet [\w-]+:", line):  # "alexnet train: warning: ...": output
        return False
    first = words[0]
    return first in PROGRAMS or re.match(r"^[A-Z_]+=", first) is not None or first == "$"


def commands_of(page: str, number: int, body: str) -> list[Command]:
    """The commands of one block: joined, split at &&, variables expanded, env prefixes dropped."""
    out, variables, lines = [], {}, body.splitlines()
    i = 0
    while i < len(lines):
        start, line = number + i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        if not _is_command(line.strip()):
            continue
        transcript = line.startswith("$ ")
        line = line[2:] if transcript else line
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.match(r"^[A-Z_]+=", words[0]):  # NAME="..." for the rest of the block
            name, _, value = words[0].partition("=")
            variables[name] = value
            continue
        words = [re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), w) for w in words]
        words = [part for w in words for part in (shlex.split(w) if w in variables.values() else [w])]
        while words and re.match(r"^[A-Z_]+=", words[0]):  # OMP_NUM_THREADS=1 alexnet ...: the command
            words = words[1:]
        if words[:3] == ["python", "-m", "alexnet"]:
            words = ["alexnet", *words[3:]]
        expect = None
        if transcript:  # the output lines up to the next blank line or command
            expect = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith("$ "):
                expect.append(lines[i])
                i += 1
        while words:
            part = words[: words.index("&&")] if "&&" in words else words
            words = words[len(part) + 1 :]
            out.append(Command(page, start, part, expect))
    return out


def all_commands() -> list[Command]:
    found = []
    for page in PAGES:
        for number, lang, body in _blocks(page):
            if lang in ("", "bash", "sh", "console"):
                found += commands_of(page, number, body)
    return found


def python_blocks(page: str) -> list[tuple[int, str]]:
    return [(n, body) for n, lang, body in _blocks(page) if lang == "python"]


def rule(command: Command) -> tuple[str, str]:
    for pattern, action, why in RULES:
        if re.search(pattern, command.text):
            return action, why
    raise AssertionError(f"{command}: no rule in tests/test_docs_run.py says whether to run it; add one")


def substituted(text: str) -> str:
    for pattern, replacement, _ in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    return text


def alexnet_args(command: Command) -> list[str]:
    """The `alexnet` arguments of a command (torchrun's `-m alexnet ...` too), substituted, with
    shell redirections dropped."""
    text = re.sub(r"^torchrun .*?-m alexnet ", "alexnet ", command.text)
    words = substituted(text).split()  # no `alexnet` argument in the docs holds a space
    if ">" in words:
        words = words[: words.index(">")]
    return [w for w in words[1:] if w != "..."]


# ---------------------------------------------------------------- parse every command


def test_every_command_in_the_docs_is_covered_by_a_rule():
    commands = all_commands()
    assert len(commands) > 60, len(commands)  # the extraction finds the docs' commands
    for command in commands:
        rule(command)


@pytest.mark.parametrize("command", [c for c in all_commands() if rule(c)[0] != "skip"], ids=str)
def test_every_command_in_the_docs_parses(command):
    """Each `alexnet` command's options and arguments exist and fit (argparse, without running it)."""
    if command.text.startswith("python -c "):
        compile(command.words[2], str(command), "exec")  # the code parses
        return
    args = alexnet_args(command)
    parser = build_parser(args)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parsed, extra = parser.parse_known_args(args)
        except SystemExit:
            raise AssertionError(f"{command}\n  does not parse: {err.getvalue().strip()}") from None
    assert not extra, f"{command}\n  unknown arguments: {extra}"
    assert getattr(parsed, "func", None), f"{command}\n  names no command"


def test_every_python_block_in_the_docs_defines_what_it_uses(tmp_path):
    """No block uses a name it never defines (F821: `paths`, `pil_image` were such names), and each
    parses (ruff reports syntax errors too); every block of every page, in the default suite."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff (the test extra) is not installed")
    files = []
    for page in PAGES:
        for number, code in python_blocks(page):
            path = tmp_path / f"{page.replace('/', '_').replace('.md', '')}_{number}.py"
            path.write_text(code)
            files.append(path)
    assert len(files) >= 4  # README (2), docs/evaluation.md, docs/report.md
    result = subprocess.run(
        [
            ruff,
            "check",
            "--no-cache",
            "--isolated",
            "--select",
            "F821",
            "--output-format",
            "concise",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the workspace


def _photos() -> dict[str, Image.Image]:
    skimage_data = pytest.importorskip("skimage.data", reason="the photographs come with scikit-image (test extra)")
    chelsea, astronaut, coffee = (
        Image.fromarray(getattr(skimage_data, n)()) for n in ("chelsea", "astronaut", "coffee")
    )
    return {"photo.jpg": chelsea, "cat.jpg": chelsea, "dog.png": astronaut, "a.jpg": coffee, "b.jpg": astronaut,
            "more.jpg": coffee, "photos/p1.jpg": chelsea, "photos/p2.jpg": coffee, "more_photos/m1.jpg": astronaut}  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_images, tiny_prepared):
    """The files the docs name (module docstring), built once; read-only (see `here`)."""
    from alexnet import config as cfg
    from alexnet.training.config import TrainConfig
    from alexnet.training.loop import train

    base = tmp_path_factory.mktemp("docs") / "base"
    for name, image in _photos().items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(base / name)
    shutil.copytree(tiny_images / "train", base / "my_photos")  # a folder per class
    shutil.copytree(tiny_prepared, base / "demo" / "data")
    config = cfg.load_config(
        TrainConfig,
        None,
        ["train.epochs=1", "data.workers=0", "data.batch_size=6", "model.init=kaiming", "data.normalize=channel"],
    )
    train(base / "demo" / "data", base / "demo" / "run", config, progress="off")
    for name in ("runs/a", "runs/b"):
        shutil.copytree(base / "demo" / "run", base / name, copy_function=os.link)
    return base


@pytest.fixture
def here(workspace, tmp_path, monkeypatch):
    """A fresh copy of the workspace (files hard-linked), as the current directory."""
    work = tmp_path / "work"
    shutil.copytree(workspace, work, copy_function=os.link)
    monkeypatch.chdir(work)
    return work


def run_command(command: Command) -> tuple[int, str, str]:
    """Run a command in the current directory: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if command.text.startswith("python -c "):
            exec(compile(command.words[2], str(command), "exec"), {})
            return 0, out.getvalue(), err.getvalue()
        args = alexnet_args(command)
        if "tv_state.pth" in args and not os.path.exists("tv_state.pth"):  # torchvision's file, made here
            _torchvision_file("tv_state.pth")
        status = main(args)
    return status, out.getvalue(), err.getvalue()


def _torchvision_file(path: str) -> None:
    """A state dict of torchvision's AlexNet (random weights), standing in for the published file."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)


def _check(command: Command, status: int, stdout: str, stderr: str) -> None:
    if command.expect is not None:  # a transcript: the documented output, "..." matching anything
        printed = (stdout + stderr).strip().splitlines()
        for want, got in zip(command.expect, printed):
            pattern = ".*".join(re.escape(part) for part in want.split("..."))
            assert re.fullmatch(pattern, got), f"{command}\n  the docs show: {want}\n  it prints:    {got}"
        assert len(printed) == len(command.expect), f"{command}\n  prints {printed}"
        return
    assert status == 0, f"{command}\n  exit status {status}: {stderr.strip()[-600:]}"


def _blocks_to_run(pages) -> list[tuple[str, int, list[Command]]]:
    """(page, line, the block's commands to run), for blocks with at least one."""
    out = []
    for page in pages:
        for number, lang, body in _blocks(page):
            if lang in ("", "bash", "sh", "console"):
                runnable = [c for c in commands_of(page, number, body) if rule(c)[0] == "run"]
                if runnable:
                    out.append((page, number, runnable))
    return out


def _run_block(commands: list[Command]) -> None:
    for command in commands:
        _check(command, *run_command(command))


def _run_python(page: str, number: int, code: str) -> None:
    for old, new, _ in PY_SUBSTITUTIONS:
        code = code.replace(old, new)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(code, f"{page}:{number}", "exec"), {"__name__": "__docs__"})


# ---------------------------------------------------------------- README: run in the default suite


@pytest.mark.parametrize(
    ("number", "code"), python_blocks("README.md"), ids=[f"README.md:{n}" for n, _ in python_blocks("README.md")]
)
def test_readme_python_blocks_run(here, number, code):
    _run_python("README.md", number, code)


# ---------------------------------------------------------------- every page: -m slow


DOCS = [p for p in PAGES if p != "README.md"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "number", "commands"), _blocks_to_run(DOCS), ids=[f"{p}:{n}" for p, n, _ in _blocks_to_run(DOCS)]
)
def test_docs_commands_run(here, page, number, commands):
    _run_block(commands)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "number", "code"),
    [(p, n, c) for p in DOCS for n, c in python_blocks(p)],
    ids=[f"{p}:{n}" for p in DOCS for n, _ in python_blocks(p)],
)
def test_docs_python_blocks_run(here, page, number, code):
    _run_python(page, number, code)


# ---------------------------------------------------------------- docs/training.md's determinism claim


class _LRNNet(nn.Module):
    """The paper net's kinds of layers, small: conv, ReLU, the fused LRN, overlapping max-pool,
    dropout, fully-connected (N, 3, H, W) -> (N, C)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), LocalResponseNorm(5), nn.MaxPool2d(3, 2), nn.AdaptiveAvgPool2d(3)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(144, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def _log(run: Path) -> list[dict]:
    """log.jsonl without the wall-clock fields (time, speed, waiting for data)."""
    clock = {"time", "img_s", "data_frac", "seconds", "val_seconds"}
    return [{k: v for k, v in json.loads(line).items() if k not in clock} for line in (run / "log.jsonl").open()]


@pytest.mark.parametrize("model", ["docs_lrn_net", pytest.param("alexnet", marks=pytest.mark.slow)])
def test_two_runs_with_the_same_seed_log_the_same_numbers(tiny_prepared, tmp_path, monkeypatch, model):
    """docs/training.md: same code, data, config and seed on the same machine (CPU, same threads) ->
    the same log.jsonl, record for record: every loss, error and learning rate, with or without loader
    workers (the batches and their augmentation are a function of seed, epoch and index). A run with
    another seed differs (the comparison can fail)."""
    from alexnet import config as cfg
    from alexnet.model import MODELS
    from alexnet.training.config import TrainConfig
    from alexnet.training.loop import train

    monkeypatch.setitem(MODELS, "docs_lrn_net", (lambda num_classes=10: _LRNNet(num_classes), "tests"))
    base = [f"model.name={model}", "train.epochs=2", "data.batch_size=6", "data.crop=67", "model.init=kaiming",
            "data.normalize=channel", "train.log_every=1", "train.checkpoint_epochs=0", "train.stall_steps=0"]  # fmt: skip
    if model != "alexnet":
        base.remove("model.init=kaiming")  # an AlexNet option
    logs = {}
    for name, extra in (("a", ["data.workers=0"]), ("b", ["data.workers=1"]), ("seed1", ["train.seed=1"])):
        config = cfg.load_config(TrainConfig, None, base + (extra if name != "seed1" else extra + ["data.workers=0"]))
        train(tiny_prepared, tmp_path / name, config, progress="off")
        logs[name] = _log(tmp_path / name)
    assert len(logs["a"]) == 8 and logs["a"] == logs["b"]  # 3 steps + 1 epoch record, twice
    assert [r.get("loss") for r in logs["a"]] != [r.get("loss") for r in logs["seed1"]]
