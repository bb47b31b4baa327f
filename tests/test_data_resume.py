"""prepare --resume: work committed in atomic chunks; an interrupted prepare (SIGKILL, an exception,
a full or read-only disk) resumed gives byte for byte the files of an uninterrupted one; one-line
errors for an interrupted OUT without --resume, changed arguments and a locked OUT."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

import alexnet.data.prepare as prep
from alexnet.cli import main as cli_main
from alexnet.data.prepare import prepare
from alexnet.data.resume import Partial
from alexnet.errors import UserError

KW = {"size": 32, "chunk_size": 4, "val_fraction": 0.25, "progress": "off"}
ARGV = ["--size", "32", "--chunk-size", "4", "--val-fraction", "0.25", "--progress", "off"]


def _files(root) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    out = {}
    for d, _, names in os.walk(root):
        for name in names:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def source(photo_tree, tmp_path_factory):
    """3 classes of 7 photos plus two unreadable files in class1 (skipped mid-split)."""
    src = shutil.copytree(photo_tree(classes=3, per_class=7), tmp_path_factory.mktemp("resume") / "src")
    (src / "class1" / "img3b.jpg").write_text("not an image")
    good = (src / "class1" / "img0.jpg").read_bytes()
    (src / "class1" / "img5b.jpg").write_bytes(good[: len(good) // 2])
    return str(src)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """The uninterrupted prepare every resumed one must equal."""
    out = tmp_path_factory.mktemp("reference") / "out"
    m = prepare(source, str(out), workers=1, **KW)
    assert len(m["skipped"]) == 2 and m["resumed_images"] == 0
    assert m["splits"]["train"]["count"] > 3 * KW["chunk_size"]  # several chunks to interrupt
    return _files(out)


def test_sigkilled_prepare_resumes_to_identical_bytes(source, reference, tmp_path):
    out = tmp_path / "out"
    # the fault from here: SIGKILL right after the second chunk's record is committed
    code = (
        "import os, signal; from alexnet.data.resume import Partial; from alexnet.data.prepare import prepare\n"
        "commit, done = Partial.commit, []\n"
        "def killing_commit(self, *args):\n"
        "    commit(self, *args)\n"
        "    done.append(1)\n"
        "    if len(done) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "Partial.commit = killing_commit\n"
        f"prepare({source!r}, {str(out)!r}, workers=1, **{KW!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    partial = Partial(str(out))
    assert os.path.basename(partial.path).startswith(".") and partial.count("train") == 2
    with pytest.raises(UserError) as info:  # an interrupted OUT without --resume
        prepare(source, str(out), workers=1, **KW)
    message = str(info.value)
    assert "--resume" in message and "--force" in message and "\n" not in message
    with pytest.raises(UserError, match=r"size: 32 then, 40 now") as info:  # other arguments
        prepare(source, str(out), workers=1, resume=True, **{**KW, "size": 40})
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="chunk_size: 4 then, 5 now"):
        prepare(source, str(out), workers=1, resume=True, **{**KW, "chunk_size": 5})
    with pytest.raises(UserError, match="max_pixels: 100000000 then, 5000 now"):  # it decides what is skipped
        prepare(source, str(out), workers=1, resume=True, **{**KW, "max_pixels": 5000})
    assert partial.count("train") == 2  # refused resumes change nothing
    m = prepare(source, str(out), workers=2, resume=True, **KW)  # another worker count is fine
    assert m["resumed_images"] == 2 * KW["chunk_size"]
    assert _files(out) == reference
    assert not partial.exists() and sorted(os.listdir(tmp_path)) == ["out"]


def test_exception_mid_split_then_resume(source, reference, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    real_commit = Partial.commit

    def ctrl_c_in_val(self, split, k, arrays):
        if split == "val" and k == 1:
            raise KeyboardInterrupt
        real_commit(self, split, k, arrays)

    monkeypatch.setattr(Partial, "commit", ctrl_c_in_val)
    with pytest.raises(KeyboardInterrupt):
        prepare(out=out, src=source, workers=2, **KW)
    monkeypatch.undo()
    partial = Partial(out)  # val's chunk 1 was appended to images.bin but not committed: cut off on resume
    assert not os.path.exists(out) and partial.count("val") == 1
    train_chunks = partial.count("train")
    m = prepare(source, out, workers=1, resume=True, **KW)
    train_samples = m["resumed_images"] - KW["chunk_size"]  # all of train, val's first chunk
    assert train_samples >= m["splits"]["train"]["count"] and train_chunks == -(-train_samples // KW["chunk_size"])
    assert _files(out) == reference


@pytest.mark.parametrize("code,nth,words", [(errno.ENOSPC, 4, "no space left"), (errno.EROFS, 3, "read-only")])
def test_disk_errors_are_one_line_and_resumable(source, reference, tmp_path, monkeypatch, capsys, code, nth, words):
    """fsync calls: 1 state.json, 2 chunk 0's images, 3 chunk 0's record, 4 chunk 1's images."""
    out = str(tmp_path / "out")
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == nth:
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    rc = cli_main(["prepare", source, out, "--workers", "1", *ARGV])
    err = capsys.readouterr().err.strip()
    monkeypatch.undo()
    assert rc == 1 and err.count("\n") == 0 and words in err
    named = "images.bin" if nth == 4 else "chunk-00000.npz"
    assert f".out.partial{os.sep}" in err and named in err  # the path that could not be written
    assert Partial(out).count("train") == (1 if nth == 4 else 0)
    assert cli_main(["prepare", source, out, "--workers", "1", "--resume", *ARGV]) == 0
    assert _files(out) == reference


def test_resume_without_interruption_and_force_start_over(source, reference, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    prepare(source, out, workers=1, resume=True, **KW)  # nothing to resume: a fresh prepare
    assert _files(out) == reference
    out2 = str(tmp_path / "out2")
    monkeypatch.setattr(Partial, "commit", lambda *a: (_ for _ in ()).throw(RuntimeError("injected")))
    with pytest.raises(RuntimeError):  # failed before committing anything: nothing is left
        prepare(source, out2, workers=1, **KW)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    monkeypatch.undo()
    holder = Partial(out2)
    holder.start({"held": True})  # another prepare is writing out2 now
    with pytest.raises(UserError, match="another prepare is writing"):
        prepare(source, out2, workers=1, resume=True, **KW)
    holder.unlock()
    with pytest.raises(UserError, match="--resume with other arguments"):  # its arguments were other ones
        prepare(source, out2, workers=1, resume=True, **KW)
    prepare(source, out2, workers=1, force=True, **KW)  # --force starts over
    assert _files(out2) == reference


def test_progress_lines(source, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep, "PROGRESS_EVERY", 0.0)  # a line at every committed chunk
    m = prepare(source, str(tmp_path / "out"), workers=1, **{**KW, "progress": "lines"})
    lines = capsys.readouterr().err.strip().splitlines()
    total = m["splits"]["train"]["count"] + m["splits"]["val"]["count"] + len(m["skipped"])
    pattern = re.compile(rf"prepare: (\d+)/{total} img \([\d.]+%\), [\d.]+ img/s(, ETA \d+:\d\d|, done in \d+:\d\d)$")
    done = [int(pattern.match(line).group(1)) for line in lines]
    chunks = -(-m["splits"]["train"]["count"] // 4)
    assert len(lines) >= chunks and done == sorted(done) and done[-1] == total
    assert "done in" in lines[-1] and all("ETA" in line for line in lines if int(pattern.match(line).group(1)) < total)


def test_ctrl_c_says_how_to_resume(source, reference, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    real_commit = Partial.commit

    def ctrl_c_after_two(self, split, k, arrays):
        if k == 2:
            raise KeyboardInterrupt
        real_commit(self, split, k, arrays)

    monkeypatch.setattr(Partial, "commit", ctrl_c_after_two)
    assert cli_main(["prepare", source, out, "--workers", "1", *ARGV]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli_main(["prepare", source, out, "--workers", "1", "--resume", *ARGV]) == 0
    assert "8 images from the interrupted run" in capsys.readouterr().out
    assert _files(out) == reference
