"""The paper in one place: its settings and their labels, τ grids, seeds, budgets, published numbers,
and the names of the figures and tables that reproduce each item.

Data only (spec/PAPER.md and spec/EXPERIMENTS.md are the sources): the scripts take their defaults
from here, and the reproduction driver (utils.reproduce) and the reports read the same entries, so
what a script runs by default and what the plan and the report expect cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# --- training algorithms: the authors' --SETTING names, and how figures and tables call them ------

SETTINGS = ("FP SGD", "Analog SGD", "TT-v1")
ANALOG = ("Analog SGD", "TT-v1")  # the settings with a device bound τ (FP SGD has none)
LABELS = MappingProxyType({"FP SGD": "Digital SGD", "Analog SGD": "Analog SGD", "TT-v1": "Tiki-Taka"})

# --- the two accuracy thresholds (one reads a finished run, the other a run's course) --------------

# A run "ended at chance" when its final accuracy (%, the mean of its last epochs) is below this:
# MNIST's chance level is 10-11.35 % (the all-"1" state); every run that trains ends above 80 %.
CHANCE_ACC = 20.0
# A run "left chance" at the first epoch whose test accuracy (a fraction) exceeds this (S4.3): between
# chance (0.1135) and a trained FCN (> 0.95) any threshold gives the same epoch within one or two.
ESCAPE_ACC = 0.5

# --- Figures 1, 3 and 4: the least-squares problems (S1–S3) -----------------------------------------

DATA_SEED = 42  # torch seed of the problem's data (the authors': set at import)
RUN_SEED = 618  # torch seed set before each run (the authors': analog runs)


@dataclass(frozen=True)
class LeastSquaresFigure:
    """One least-squares script: its run folders are ``OUT/runs/<script>/<hash of settings>/``.

    ``settings`` holds every flag that names the run (argparse's dest) at the paper's value, besides
    the seeds DATA_SEED and RUN_SEED; ``plot`` holds drawing constants that are not flags."""

    script: str
    figure: str
    table: str | None  # its Markdown table (OUT/tables/<table>.md), if it writes one
    settings: MappingProxyType
    plot: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


def _frozen(**values: Any) -> MappingProxyType:
    return MappingProxyType(values)


LEAST_SQUARES = MappingProxyType({f.script: f for f in (
    LeastSquaresFigure(
        "S1-SGD-diff-lr", "fig1_sgd_vs_lr", None,
        _frozen(lr=(0.2, 0.1, 0.05, 0.03), steps=2500, tau=3.0, sigma=0.01 / math.sqrt(40),
                dw_min=1e-4, desired_bl=800),
        _frozen(last=20)),  # learning error: the mean of the last 20 records
    LeastSquaresFigure(
        "S2-dynamic-verification", "fig3_dynamic_vs_aihwkit", "fig3_tracking",
        _frozen(tau=(1.0, 1.5, 2.0, 2.5), lr=0.03, sigma=0.1, steps=2500, states=300,
                desired_bl=5000),
        _frozen(ema=0.8)),
    LeastSquaresFigure(
        "S3.1-ablation-tau", "fig4a_ablation_tau", "fig4a_ablation_tau",
        _frozen(tau=(2.0, 3.0, 5.0, 10.0, 20.0, 50.0), lr=0.03, sigma=0.1, steps=3000,
                tt_memory=30.0),
        _frozen(ema=0.8)),
    LeastSquaresFigure(
        "S3.2-ablation-sigma", "fig4b_ablation_sigma", None,
        _frozen(sigma2=(1e-3, 1e-2, 1e-1, 1.0), lr=0.1, tau=2.0, steps=200, init="authors",
                dw_min=1e-4, desired_bl=5000),
        _frozen(ema=0.8)),
    LeastSquaresFigure(
        "S3.3-ablation-init", "fig4c_ablation_init", None,
        _frozen(init_constant=(1e3, 1e2, 1e1, 1.0, 1e-2), warm_start=(10, 20, 30), lr=0.1,
                tau=1.0, steps=50, sigma=0.01 / math.sqrt(50), dw_min=1e-4, desired_bl=400)),
)})

# --- Figure 5: MNIST (S4.1 FCN, S4.2 CNN) ------------------------------------------------------------

MNIST_TAUS = MappingProxyType({"FCN": (0.7, 0.78, 0.8), "CNN": (0.6, 0.7, 0.8)})  # per panel
MNIST_SEEDS = (0, 1, 2)  # mean ± std over 3 runs (the paper, Section 5)
# The budget (the authors' code): SGD at MNIST_LR for every setting, divided by MNIST_LR_GAMMA every
# MNIST_LR_STEP epochs; fewer epochs are a reduced budget (the figure titles and the report say so)
MNIST_EPOCHS = 80
MNIST_BATCH_SIZE = MappingProxyType({"FCN": 10, "CNN": 8})  # 6,000 and 7,500 steps per epoch
MNIST_LR = 0.05
MNIST_LR_STEP, MNIST_LR_GAMMA = 35, 0.1
FIGURE5 = MappingProxyType({"FCN": "fig5_mnist_fcn", "CNN": "fig5_mnist_cnn"})
FIGURE5_TABLE = "mnist"  # results/tables/mnist.{md,csv}: both networks
FIGURE5_RUNS = 3  # runs per cell behind the paper's numbers
FIGURE5_PAPER = MappingProxyType({  # test accuracy % (mean, std over 3 runs, 80 epochs)
    ("FCN", "FP SGD", None): (98.15, 0.04),
    ("FCN", "Analog SGD", 0.7): (11.35, 0.00), ("FCN", "Analog SGD", 0.78): (97.71, 0.63),
    ("FCN", "Analog SGD", 0.8): (97.78, 0.36),
    ("FCN", "TT-v1", 0.7): (97.64, 0.17), ("FCN", "TT-v1", 0.78): (97.62, 0.05),
    ("FCN", "TT-v1", 0.8): (97.50, 0.11),
    ("CNN", "FP SGD", None): (99.16, 0.08),
    ("CNN", "Analog SGD", 0.6): (88.99, 0.89), ("CNN", "Analog SGD", 0.7): (92.15, 0.48),
    ("CNN", "Analog SGD", 0.8): (93.45, 0.46),
    ("CNN", "TT-v1", 0.6): (98.84, 0.07), ("CNN", "TT-v1", 0.7): (98.87, 0.04),
    ("CNN", "TT-v1", 0.8): (98.86, 0.07),
})
# The paper's FCN Analog SGD runs stuck at chance, of FIGURE5_RUNS, per τ (11.35 ± 0.00 at 0.7: all
# three; 97.7 % at 0.78 and 0.8: none)
FIGURE5_STUCK = MappingProxyType({0.7: 3, 0.78: 0, 0.8: 0})

# --- Figure 7: the trained FCN's weights (S6, from S4.1's checkpoints) -------------------------------

FIGURE7 = "fig7_weight_distribution"
FIGURE7_TABLE = "fig7_saturation"  # its Markdown table
FIGURE7_TAU = 0.7
FIGURE7_SEED = 0

# --- Table 2: CIFAR-10 fine-tuning of ImageNet ResNets (A12) -----------------------------------------

TABLE2_MODELS = ("Resnet18", "Resnet34", "Resnet50")
TABLE2_TAU = 0.8
TABLE2_SEEDS = (0,)  # one number per cell (the paper gives no std)
# The budget (the authors' code): 100 epochs of batch 128, base lr per setting (halved if analog),
# divided by TABLE2_LR_GAMMA every TABLE2_LR_STEP epochs
TABLE2_EPOCHS = 100
TABLE2_BATCH_SIZE = 128
TABLE2_LR = MappingProxyType({"FP SGD": 0.15, "Analog SGD": 0.075, "TT-v1": 0.075})
TABLE2_LR_STEP, TABLE2_LR_GAMMA = 50, 0.1
TABLE2_IMAGE_SIZE = 224
TABLE2 = "cifar10_resnet"  # results/tables/cifar10_resnet.{md,csv}
TABLE2_PAPER = MappingProxyType({  # test accuracy %, ImageNet weights, full fine-tuning, τ = 0.8
    ("Resnet18", "FP SGD"): 93.03, ("Resnet34", "FP SGD"): 93.44, ("Resnet50", "FP SGD"): 95.92,
    ("Resnet18", "Analog SGD"): 93.58, ("Resnet34", "Analog SGD"): 93.58,
    ("Resnet50", "Analog SGD"): 95.51,
    ("Resnet18", "TT-v1"): 93.74, ("Resnet34", "TT-v1"): 95.15, ("Resnet50", "TT-v1"): 95.54,
})
# (model, setting, τ) of every cell, in the table's order (FP SGD has no τ)
TABLE2_RUNS = tuple((model, setting, None if setting == "FP SGD" else TABLE2_TAU)
                    for model in TABLE2_MODELS for setting in SETTINGS)

# --- what the paper says it ran on (its only runtime information) ------------------------------------

PAPER_COMPUTE = ("The paper's runs: one NVIDIA RTX 3090 (24 GB), 30 min to 1 h per simulation "
                 "(its only runtime information); Figure 5: 3 runs each.")

# --- the paper's items: what each shows, and the figures and tables that reproduce it ---------------


@dataclass(frozen=True)
class Item:
    """One figure or table of the paper. ``source`` names the runs behind ours: "least_squares:<script>",
    "mnist:<FCN|CNN>", "fig7" or "cifar"."""

    title: str
    paper: str  # what the paper shows (its result, in words or numbers)
    figures: tuple[str, ...]
    tables: tuple[str, ...]
    source: str


def _least_squares_item(title: str, paper: str, script: str) -> Item:
    entry = LEAST_SQUARES[script]
    tables = () if entry.table is None else (f"{entry.table}.md",)
    return Item(title, paper, (entry.figure,), tables, f"least_squares:{script}")


ITEMS = (
    _least_squares_item(
        "Figure 1: digital SGD vs Analog SGD over step sizes",
        "Digital SGD's error keeps falling as α falls (0.2 → 0.03); Analog SGD (AIHWKit, τ = 3) "
        "levels off at a much higher error that a smaller α does not remove.", "S1-SGD-diff-lr"),
    _least_squares_item(
        "Figure 3: the Analog SGD dynamic tracks AIHWKit",
        "For τ ∈ {1, 1.5, 2, 2.5} the proposed dynamic (eq. 3) tracks the AIHWKit simulation "
        "closely; the digital SGD dynamic does not.", "S2-dynamic-verification"),
    _least_squares_item(
        "Figure 4 (left): the error floor against τ",
        "The error shrinks as τ grows (τ ∈ {2, …, 50}); large τ approaches digital SGD. (The "
        "authors' script for this panel is a copy of Figure 3's; ours is deviation 6 below.)",
        "S3.1-ablation-tau"),
    _least_squares_item(
        "Figure 4 (middle): the error against the noise variance σ²",
        "σ² ∈ {0.001, 0.01, 0.1, 1}, 200 iterations: a larger σ² gives a larger error (about "
        "1e-2 to 1e-1).", "S3.2-ablation-sigma"),
    _least_squares_item(
        "Figure 4 (right): the error against the initialisation",
        "From eight starting points (constants 1e3 … 1e-2, 10/20/30 digital GD steps) every run "
        "ends at the same error within 50 iterations: the floor is intrinsic.",
        "S3.3-ablation-init"),
    Item("Figure 5 (FCN): MNIST, 784-256-128-10 network",
         "Tiki-Taka within 1 % of digital SGD (98.15 %) at every τ; Analog SGD sits at chance "
         "(11.35 %) at τ = 0.7 and reaches 97.7–97.8 % at τ = 0.78 and 0.8, more slowly. Numbers: "
         "the table below, paper column.",
         (FIGURE5["FCN"],), (f"{FIGURE5_TABLE}.md",), "mnist:FCN"),
    Item("Figure 5 (CNN): MNIST, LeNet-style network",
         "Tiki-Taka at 98.8–98.9 % against digital SGD's 99.16 %; Analog SGD 89.0–93.5 %. "
         "Numbers: the table above, paper column.",
         (FIGURE5["CNN"],), (), "mnist:CNN"),
    Item("Figure 7: weight distribution and saturation of the trained FCN (τ = 0.7)",
         "Digitally trained weights stay bounded, so a τ that covers them exists; Analog SGD's "
         "weights reach about 0.2τ; Tiki-Taka's are not bounded by the device.",
         (FIGURE7,), (f"{FIGURE7_TABLE}.md",), "fig7"),
    Item("Table 2: CIFAR-10 fine-tuning of ImageNet ResNets with an analog classifier",
         "Test accuracy after 100 epochs (τ = 0.8): digital SGD 93.03 / 93.44 / 95.92, Analog SGD "
         "93.58 / 93.58 / 95.51, Tiki-Taka 93.74 / 95.15 / 95.54 % for ResNet18 / 34 / 50. "
         "Numbers: the table below, paper column.",
         (), (f"{TABLE2}.md",), "cifar"),
)
