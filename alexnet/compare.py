"""AlexNet beside its successors: the arithmetic of each net, computed from its module, and its
ILSVRC top-5 error as its paper published it (`alexnet summary --compare`).

Depth, parameters, multiply-adds and activation memory come from `alexnet.summary.summarize` (a
forward of one image on the meta device; its docstring states what is counted). The error rates
are copied from the papers, each with the table it comes from, the split (val: the 50,000
ILSVRC-2012 validation images; test: the 100,000 test images scored by the challenge's server; the
2012-2015 classification challenges share these 1000 classes and images), the number of nets
averaged and the test-time protocol. Entries trained on more data than the ILSVRC-2012 training set
are listed under the table, not in it, so that every figure in the table was trained on the same
images. The torchvision nets measured here are torchvision's declarations; where they differ from
the paper's net a note says how.
"""

from __future__ import annotations

import textwrap

from alexnet.summary import summarize

__all__ = ["COMPARE_MODELS", "PUBLISHED", "SOURCES", "compare", "format_compare"]

COMPARE_MODELS = (
    "alexnet",
    "zfnet",
    "zfnet_wide",
    "vgg16",
    "vgg19",
    "googlenet",
    "resnet18",
    "resnet50",
    "resnet152",
)

SHORT = {
    "krizhevsky2012": "Krizhevsky et al. 2012",
    "zeiler2014": "Zeiler & Fergus 2014",
    "simonyan2015": "Simonyan & Zisserman 2015",
    "szegedy2015": "Szegedy et al. 2015",
    "he2016": "He et al. 2016",
}
SOURCES = {
    "krizhevsky2012": "Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep Convolutional "
    "Neural Networks, NIPS 2012",
    "zeiler2014": "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014 (arXiv:1311.2901)",
    "simonyan2015": "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image "
    "Recognition, ICLR 2015 (arXiv:1409.1556)",
    "szegedy2015": "Szegedy et al., Going Deeper with Convolutions, CVPR 2015 (arXiv:1409.4842)",
    "he2016": "He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016 (arXiv:1512.03385)",
}


def _entry(top5: float, split: str, what: str, source: str, where: str, *, nets: int = 1, extra_data: str = ""):
    """One published figure: top-5 error in %, on `split`, of `nets` nets averaged (`what` says how)."""
    return {
        "top5_error": top5,
        "split": split,
        "nets": nets,
        "what": what,
        "source": source,
        "where": where,
        "extra_data": extra_data,
    }


# Per net: the year of its ILSVRC entry or paper, its best published one-net figure and its
# ensemble (the challenge entry where there is one), and further entries for the notes.
_VGG_ENTRY = _entry(
    7.3, "test", "the ILSVRC-2014 entry: 7 nets (configurations C, D and E), dense evaluation",
    "simonyan2015", "Tables 6 and 7", nets=7,
)  # fmt: skip
PUBLISHED: dict[str, dict] = {
    "alexnet": {
        "year": 2012,
        "single": _entry(18.2, "val", "1 CNN, 10 crops", "krizhevsky2012", "Table 2"),
        "ensemble": _entry(16.4, "test", "5 CNNs, 10 crops", "krizhevsky2012", "Table 2", nets=5),
        "more": [
            _entry(
                15.3,
                "test",
                "7 CNNs, 10 crops: the ILSVRC-2012 winning entry",
                "krizhevsky2012",
                "Table 2",
                nets=7,
                extra_data="two of the 7 pre-trained on the ImageNet Fall 2011 release",
            ),  # fmt: skip
        ],
    },
    "zfnet": {
        "year": 2013,
        "single": _entry(16.5, "val", "1 convnet as per Fig. 3", "zeiler2014", "Table 2"),
        "ensemble": _entry(15.3, "test", "5 convnets as per Fig. 3, row (a)", "zeiler2014", "Table 2", nets=5),
        "more": [],
    },
    "zfnet_wide": {
        "year": 2013,
        "single": _entry(
            16.1, "test", "1 convnet, layers 3,4,5: 512,1024,512 maps, row (b) (16.0 val)", "zeiler2014", "Table 2"
        ),  # fmt: skip
        "ensemble": _entry(
            14.8, "test", "6 convnets, (a) and (b) combined: the paper's best", "zeiler2014", "Table 2", nets=6
        ),  # fmt: skip
        "more": [],
    },
    "vgg16": {
        "year": 2014,
        "single": _entry(
            7.2, "val", "configuration D, multi-crop & dense evaluation at 3 scales", "simonyan2015", "Table 5"
        ),  # fmt: skip
        "ensemble": _VGG_ENTRY,
        "more": [
            _entry(
                6.8,
                "test",
                "2 nets (D and E), multi-crop & dense, after the challenge",
                "simonyan2015",
                "Table 7",
                nets=2,
            ),  # fmt: skip
        ],
    },
    "vgg19": {
        "year": 2014,
        "single": _entry(
            7.0, "test", "configuration E, multi-crop & dense evaluation (7.1 val, Table 5)", "simonyan2015", "Table 7"
        ),  # fmt: skip
        "ensemble": _VGG_ENTRY,
        "more": [],
    },
    "googlenet": {
        "year": 2014,
        "single": _entry(7.89, "val", "1 net, 144 crops (10.07 with 1 crop)", "szegedy2015", "Table 3"),
        "ensemble": _entry(
            6.67, "test", "7 nets, 144 crops: the ILSVRC-2014 winning entry", "szegedy2015", "Tables 2 and 3", nets=7
        ),  # fmt: skip
        "more": [],
    },
    "resnet18": {"year": 2015, "single": None, "ensemble": None, "more": []},
    "resnet50": {
        "year": 2015,
        "single": _entry(
            5.25,
            "val",
            "1 net, fully-convolutional at several scales (6.71 with 10 crops, Table 3)",
            "he2016",
            "Table 4",
        ),  # fmt: skip
        "ensemble": None,
        "more": [],
    },
    "resnet152": {
        "year": 2015,
        "single": _entry(
            4.49,
            "val",
            "1 net, fully-convolutional at several scales (5.71 with 10 crops, Table 3)",
            "he2016",
            "Table 4",
        ),  # fmt: skip
        "ensemble": _entry(
            3.57,
            "test",
            "6 nets of different depths (two of 152 layers): the ILSVRC-2015 winning entry",
            "he2016",
            "Table 5",
            nets=6,
        ),  # fmt: skip
        "more": [],
    },
}

# What the table cannot say in a cell: where a figure is not this net's, or the net measured is not the paper's.
NOTES = {
    "zfnet": [
        "The 11.7 % often quoted for ZFNet is not in its paper: it is Clarifai's ILSVRC-2013 winning entry "
        "(Zeiler's company; several nets averaged, trained on ILSVRC-2012 data only; 11.2 % with extra "
        "data; 12.5 % for one of its nets), as listed in Szegedy et al. 2015, Table 2, and Simonyan & "
        "Zisserman 2015, Table 7. The ZFNet paper's own best is 14.8 % (zfnet_wide's row), and it says "
        "the 2013 challenge surpassed it.",
    ],
    "vgg16": [
        "Activation memory 60.95 MB: the course notes' 'about 24 M activations, ~96 MB' does not follow "
        "from their own per-layer lines, which sum to 15.2 M values (alexnet summary --model vgg16).",
    ],
    "googlenet": [
        "Measured: torchvision's GoogLeNet, with batch normalisation after every convolution and a 3x3 "
        "convolution where the paper's inception block has a 5x5 (a known difference, noted in "
        "torchvision's source); the paper's net has no batch normalisation. The paper's '12x fewer "
        "parameters' than AlexNet is for its own net; torchvision's counted here has 6.62 M, 9.2x fewer "
        "than the paper's AlexNet.",
    ],
    "resnet18": [
        "No top-5 error is published for ResNet-18: its paper gives 27.88 % top-1 on val with 10 crops "
        "(He et al. 2016, Table 2).",
    ],
}


def compare(models=COMPARE_MODELS) -> dict:
    """Each net's depth, parameters, multiply-adds and activation memory (one image at the net's own
    input size, forward, fp32) beside its published top-5 error.

    Returns {"models": [{"model", "year", "input", "depth", "params", "macs", "activation_bytes",
    "published": {"single", "ensemble", "more"}, "notes"}], "sources": {key: citation}, "counting": str}.
    Error rates are percentages; an entry's "source" is a key of "sources".
    """
    rows = []
    for name in models:
        s = summarize(name)
        published = PUBLISHED.get(name, {"year": None, "single": None, "ensemble": None, "more": []})
        rows.append(
            {
                "model": name,
                "year": published["year"],
                "input": s.input,
                "depth": s.depth,
                "params": s.params,
                "macs": s.macs,
                "activation_bytes": s.activation_bytes,
                "published": {k: published[k] for k in ("single", "ensemble", "more")},
                "notes": list(NOTES.get(name, [])),
            }
        )
    return {"models": rows, "sources": dict(SOURCES), "counting": COUNTING}


COUNTING = (
    "depth: weight layers (conv, fc) on the longest input-to-output path; multiply-adds: conv and fc "
    "only, one image; activation memory: fp32 bytes of the input, every layer output that is a new "
    "tensor (conv, fc, pooling, LRN, batch norm) and every concatenation, one image, forward only "
    "(in-place ReLU, dropout and residual additions add nothing; about twice as much is kept for a "
    "backward pass)"
)


def _pct(value: float) -> str:
    """A published percentage with its own decimals: 7.0, 16.4, 6.67."""
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _cell(entry: dict | None, marks: list[dict]) -> str:
    """'16.4 % test [2]' with the entry's number below the table (one number per entry), or '-'."""
    if entry is None:
        return "-"
    if entry not in marks:
        marks.append(entry)
    return f"{_pct(entry['top5_error'])} % {entry['split']} [{marks.index(entry) + 1}]"


def format_compare(result: dict) -> str:
    """The comparison as a text table, its numbered entries with their sources, then the notes."""
    header = ("model", "year", "input", "depth", "parameters", "mult-adds", "act. mem", "top-5, one net",
              "top-5, ensemble")  # fmt: skip
    rows, marks = [header], []
    for r in result["models"]:
        rows.append(
            (
                r["model"],
                str(r["year"] or ""),
                str(r["input"]),
                str(r["depth"]),
                f"{r['params']:,}",
                f"{r['macs'] / 1e9:.2f} G",
                f"{r['activation_bytes'] / 1e6:.2f} MB",
                _cell(r["published"]["single"], marks),
                _cell(r["published"]["ensemble"], marks),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i in (0, 7, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    lines += [
        "",
        *_wrap(f"Computed from each module (meta device, one image at its input size). {result['counting']}."),
    ]
    lines += [
        "",
        *_wrap(
            "Published ILSVRC top-5 error, trained on the ILSVRC-2012 training set (val = its 50,000 "
            "validation images, test = the 100,000 test images scored by the challenge's server):"
        ),
    ]
    lines += [line for i, e in enumerate(marks, start=1) for line in _wrap(_describe(e), f"[{i}] ")]
    more = [(r["model"], e) for r in result["models"] for e in r["published"]["more"]]
    if more:
        lines += ["", "Other published entries (not in the table):"]
        lines += [line for name, e in more for line in _wrap(_describe(e), f"{name}: ")]
    notes = [(r["model"], n) for r in result["models"] for n in r["notes"]]
    if notes:
        lines += ["", "Notes:"]
        lines += [line for name, text in notes for line in _wrap(text, f"{name}: ")]
    lines += ["", "Sources:"]
    lines += [line for key, text in result["sources"].items() for line in _wrap(text, f"{SHORT[key]}: ")]
    return "\n".join(lines)


def _describe(e: dict) -> str:
    extra = f"; trained on more data: {e['extra_data']}" if e["extra_data"] else ""
    return f"{_pct(e['top5_error'])} % on {e['split']}: {e['what']}{extra}. {SHORT[e['source']]}, {e['where']}."


def _wrap(text: str, label: str = "") -> list[str]:
    """`text` in lines of at most 100 characters, after `label` (indented by two), continued under it."""
    lead = "  " + label if label else ""
    return textwrap.wrap(text, 100, initial_indent=lead, subsequent_indent=" " * len(lead)) or [lead]
