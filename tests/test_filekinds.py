"""A file of the wrong kind is named for what it is: images, exports, prepared sets and run
directories given where another kind goes get one line saying what they are, and the usage."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import load_checkpoint
from alexnet.cli import main
from alexnet.data.images import BadImageError, load_rgb
from alexnet.errors import UserError
from alexnet.filekinds import kind_of, sniff, wrong_kind


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of each kind, written by the library that makes it (PIL, torch, onnx, safetensors, numpy)."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("kinds")
    pixels = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    for fmt, name in (("JPEG", "photo.jpg"), ("PNG", "photo.png"), ("GIF", "photo.gif"), ("BMP", "photo.bmp"),
                      ("WEBP", "photo.webp"), ("TIFF", "photo.tif")):  # fmt: skip
        Image.fromarray(pixels).save(d / name, fmt)
    Image.fromarray(pixels).save(d / "misnamed.pt", "PNG")  # the bytes decide, not the name
    module = torch.nn.Linear(2, 2)
    torch.jit.save(torch.jit.trace(module, torch.zeros(1, 2)), str(d / "scripted.pt"))
    torch.save({"model": module.state_dict()}, d / "saved.pt")
    save_file({"w": torch.zeros(2)}, str(d / "weights.bin"))  # safetensors without its extension
    np.savez(d / "features.npz", features=np.zeros(3))
    (d / "config.toml").write_text("[train]\nepochs = 1\n")
    (d / "empty.pt").write_bytes(b"")
    pytest.importorskip("onnx")
    torch.onnx.export(module, (torch.zeros(1, 2),), str(d / "net.onnx"), dynamo=False)
    (d / "net.onnx").rename(d / "export.bin")  # ONNX by its bytes, whatever the name
    run = d / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".alexnet-run").write_text("")
    prepared = d / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text("{}")
    (d / "images" / "a").mkdir(parents=True)
    Image.fromarray(pixels).save(d / "images" / "a" / "x.jpg")
    return d


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("photo.jpg", "image", "a JPEG image"),
        ("photo.png", "image", "a PNG image"),
        ("photo.gif", "image", "a GIF image"),
        ("photo.bmp", "image", "a BMP image"),
        ("photo.webp", "image", "a WebP image"),
        ("photo.tif", "image", "a TIFF image"),
        ("misnamed.pt", "image", "a PNG image"),
        ("scripted.pt", "torchscript", "a TorchScript export"),
        ("saved.pt", "checkpoint", "a torch.save file"),
        ("weights.bin", "safetensors", "a safetensors file"),
        ("export.bin", "onnx", "an ONNX model"),
        ("features.npz", "npz", "a NumPy .npz archive"),
        ("config.toml", "text", "a text file"),
        ("empty.pt", "empty", "an empty file"),
        ("run", "run", "a run directory"),
        ("prepared", "prepared", "a prepared set"),
        ("images", "image_tree", "a folder of class folders"),
        ("images/a", "image_folder", "a folder of images"),
    ],
)
def test_every_kind_is_told_by_its_bytes_or_markers(files, name, kind, words):
    found = kind_of(files / name)
    assert found is not None and found.name == kind and found.text.startswith(words), found


def test_unknown_bytes_and_missing_paths_are_not_named(tmp_path):
    (tmp_path / "random.bin").write_bytes(bytes(np.random.default_rng(1).integers(128, 256, 64, dtype=np.uint8)))
    assert kind_of(tmp_path / "random.bin") is None and kind_of(tmp_path / "missing") is None
    assert sniff(b"\x08\x07\x12\x07pytorch").name == "onnx"  # ir_version, then the producer's name
    assert wrong_kind(tmp_path, "checkpoint") is None  # an empty folder: nothing more to say than "no checkpoint"


@pytest.mark.parametrize("name", ["photo.jpg", "scripted.pt", "export.bin", "weights.bin", "run", "prepared"])
def test_loading_a_wrong_kind_as_a_checkpoint_names_it(files, name):
    """No "pickled Python objects ... (possibly code)" for an image or an export: what it is, in one line."""
    with pytest.raises(UserError) as info:
        load_checkpoint(files / name)
    text = str(info.value)
    assert "\n" not in text and "possibly code" not in text
    if name == "run":  # a run directory without checkpoints yet keeps its own message
        assert "checkpoints/best.pt or checkpoints/last.pt" in text
    else:
        assert f"is {kind_of(files / name).text}, not a checkpoint" in text


def test_a_torchscript_file_is_never_handed_to_torch_jit_load(files, monkeypatch):
    """torch.load would dispatch a TorchScript archive to torch.jit.load (code); the sniffing comes first."""
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(UserError, match="TorchScript export"):
        load_checkpoint(files / "scripted.pt")


def test_swapped_arguments_on_the_command_line_say_what_the_file_is_and_the_usage(
    files, tiny_prepared, tmp_path, capsys
):
    """`alexnet predict photo.jpg RUN`: one line, exit 1, the kind and the command's usage."""
    assert main(["predict", str(files / "photo.jpg"), str(files / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{files / 'photo.jpg'} is a JPEG image, not a checkpoint" in err
    assert err.endswith("usage: alexnet predict CKPT IMAGE_OR_DIR [IMAGE_OR_DIR ...]")
    assert main(["evaluate", str(files / "export.bin"), "--data", str(tiny_prepared), "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "is an ONNX model" in err and "usage: alexnet evaluate CKPT [CKPT ...] --data DIR" in err
    assert (
        main(["features", str(files / "saved.pt"), "--data", str(files / "run"), "--out", str(tmp_path / "f.npz")]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert f"{files / 'run'} is a run directory (`alexnet train`'s output), not a prepared set" in err


def test_init_from_an_image_names_it(files, tiny_prepared, tmp_path, capsys):
    """--init-from photo.jpg: the line says it is an image (and no run directory is left behind)."""
    out = tmp_path / "x"
    assert main(["train", str(tiny_prepared), "--out", str(out), "--init-from", str(files / "photo.jpg")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--init-from" in err and "is a JPEG image, not a checkpoint" in err and "\n" not in err
    assert not out.exists()


def test_a_checkpoint_or_an_export_given_as_an_image_is_named(files):
    for name, words in (("saved.pt", "a torch.save file"), ("scripted.pt", "a TorchScript export"),
                        ("export.bin", "an ONNX model"), ("weights.bin", "a safetensors file")):  # fmt: skip
        with pytest.raises(BadImageError) as info:
            load_rgb(str(files / name))
        assert info.value.reason.startswith(f"not an image: {words}"), info.value.reason
    with pytest.raises(BadImageError, match=r"not an image \(unrecognised format\)"):
        load_rgb(str(files / "config.toml"))
    assert zipfile.is_zipfile(files / "saved.pt")  # the fixture's torch.save file is the zip format
