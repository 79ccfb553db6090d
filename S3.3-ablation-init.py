"""Figure 4 (right): Analog SGD ends at the same error from every starting point.

Analog SGD simulated by AIHWKit (τ = 1) from eight starting points: weights and bias set to a constant
c ∈ {1e3, 1e2, 1e1, 1, 1e-2}, or warm-started by 10, 20 or 30 steps of noiseless digital gradient
descent from 0. The common end point is evidence that the error is intrinsic to the analog dynamic.

    python S3.3-ablation-init.py     # ≈ 5 s; writes results/figures/fig4c_ablation_init.{png,pdf}

Problem (as in the authors' code): d = 50, 100 rows, x* = 0.5·N(0, 1), A ~ N(0, 1), true bias 0.1, MSE loss,
α = 0.1, 50 iterations, dw_min 1e-4, desired_bl 400, weight noise 0.01/√50, inputs bounded at 1 with
ABS_MAX noise and ITERATIVE bound management. Constant weights beyond ±τ are clipped to the device
bounds when written to the tile (so 1e3, 1e2 and 1e1 all start the weights at τ); the digital bias
is not clipped, as in the authors' code.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from torch import nn
from tqdm import tqdm

from utils import cli
from utils.least_squares import (
    Problem,
    add_backend_flags,
    diverged_note,
    make_problem,
    plateau,
    pulsed_simulator,
    run_aihwkit,
)
from utils.paper import DATA_SEED, LEAST_SQUARES, RUN_SEED
from utils.plotting import save_figure
from utils.runs import RunFolder

PAPER = LEAST_SQUARES["S3.3-ablation-init"]  # the authors' settings
FIGURE, DEFAULTS = PAPER.figure, PAPER.settings


def parse_args(argv: list[str] | None = None):
    p = cli.make_parser(__doc__)
    p.add_argument("--init-constant", type=cli.finite_float, nargs="+",
                   default=list(DEFAULTS["init_constant"]),
                   help="constant starting values of weights and bias (default: %(default)s)")
    p.add_argument("--warm-start", type=cli.nonneg_int, nargs="+",
                   default=list(DEFAULTS["warm_start"]),
                   help="numbers of digital GD steps (lr = --lr) for warm starts (default: "
                        "%(default)s)")
    p.add_argument("--lr", type=cli.positive_float, default=DEFAULTS["lr"],
                   help="step size α (default: %(default)s)")
    p.add_argument("--tau", type=cli.positive_float, default=DEFAULTS["tau"],
                   help="device bound τ (default: %(default)s)")
    p.add_argument("--steps", type=cli.positive_int, default=DEFAULTS["steps"],
                   help="gradient steps per run (default: %(default)s)")
    p.add_argument("--sigma", type=cli.nonneg_float, default=DEFAULTS["sigma"],
                   help="weight-noise std (default: 0.01/sqrt(50) = %(default).4g)")
    cli.add_pulse_flags(p, DEFAULTS["desired_bl"], DEFAULTS["dw_min"])
    cli.add_output_flags(p, seed=RUN_SEED, data_seed=DATA_SEED)
    add_backend_flags(p)
    return p.parse_args(argv)


def warm_start(problem: Problem, steps: int, lr: float) -> tuple[torch.Tensor, float]:
    """Weights and bias after ``steps`` of noiseless full-batch gradient descent from 0."""
    model = nn.Linear(problem.d, 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        problem.train_loss(model(problem.A)).backward()
        optimizer.step()
    return model.weight.detach().reshape(-1), model.bias.item()


def starting_points(args, problem: Problem) -> dict[str, tuple[torch.Tensor | float, float]]:
    starts: dict[str, tuple[torch.Tensor | float, float]] = {
        f"W₀={c:g}": (c, c) for c in args.init_constant}
    for n in args.warm_start:
        starts[f"{n} GD steps"] = warm_start(problem, n, args.lr)
    return starts


def compute(args) -> dict:
    problem = make_problem("S3.3", seed=args.data_seed)
    rpu = pulsed_simulator(args).config(args.tau, args.dw_min, args.sigma, args.desired_bl,
                                        managed_io=True)
    return {label: run_aihwkit(problem, rpu, args.lr, args.steps, seed=args.seed,
                               init_weight=weight, init_bias=bias, backend=pulsed_simulator(args).backend)
            for label, (weight, bias) in tqdm(starting_points(args, problem).items(),
                                              desc="S3.3 runs (one per start)")}


def plot(args, curves: dict) -> None:
    fig, ax = plt.subplots(figsize=(4.4, 2.8))
    # the order of the flags (a run read back from its JSON file has its keys sorted)
    order = [f"W₀={c:g}" for c in args.init_constant] + [f"{n} GD steps" for n in args.warm_start]
    for label in order:
        curve = curves[label]
        print(f"{label:>12s}: start {curve['loss'][0]:.3e}, end (last 20 %) "
              f"{plateau(curve['loss']):.3e}")
        ax.plot(curve["loss"], label=label + diverged_note(curve))
    ax.legend(loc="lower left", bbox_to_anchor=(1, 0), title="start")
    ax.set(yscale="log", xlabel="Number of gradient computations k", ylabel="f(W_k) − f*",
           title=f"Analog SGD ({pulsed_simulator(args).label}), τ={args.tau:g}")
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, args.out, FIGURE + pulsed_simulator(args).suffix)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    run = RunFolder.from_args(args, PAPER.script, ignore=pulsed_simulator(args).ignore)
    plot(args, run.run_or_load(lambda: compute(args), args.force))


if __name__ == "__main__":
    main()
