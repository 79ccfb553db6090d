"""The state of the CNN's Tiki-Taka convolutions in finished runs of either backend
(docs/aihwkit_cpu_noise.md).

    python benchmarks/cnn_tile_state.py RUN_FOLDER [RUN_FOLDER ...]

A RUN_FOLDER is one run of S4.2-mnist-CNN.py with --SETTING TT-v1 (…/MNIST-CNN[-torch…]/
TT-v1-tau=<τ>/seed<k>), AIHWKit's or the torch backend's; its checkpoint.pt is read. Printed per
run and convolution (conv1: 16 × 25 devices, conv2: 32 × 400): the test accuracy of the last
epoch, the mean of A over its devices (a gradient offset common to all of them builds up there),
mean |A|, mean |C| and the learned output scale α.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from anywhere
from utils.runs import read_metrics  # noqa: E402

CONVS = (("conv1", "0"), ("conv2", "3"))


def conv_state(state: dict, index: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, C, α) of the convolution at position ``index`` of the CNN, from either backend."""
    tile = state.get(f"{index}.analog_module.analog_tile_state")
    if tile is not None:  # AIHWKit
        hidden = dict(zip(tile["analog_tile_hidden_parameter_names"],
                          tile["analog_tile_hidden_parameters"], strict=True))
        alpha = state[f"{index}.analog_module.out_scaling_alpha"]
        return hidden["hidden_weights_0"], hidden["hidden_weights_1"], float(alpha.flatten()[0])
    return (state[f"{index}.tile.fast.weight_t"][0], state[f"{index}.tile.slow.weight_t"][0],
            float(state[f"{index}.out_scaling"].flatten()[0]))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if len(sys.argv) > 1 else 2)
    folders = [Path(arg) for arg in sys.argv[1:]]
    for folder in folders:
        if not (folder / "checkpoint.pt").is_file():
            raise SystemExit(f"{folder / 'checkpoint.pt'}: no checkpoint; give the folder of a "
                             "finished TT-v1 CNN run")
    rows = []
    for folder in folders:
        ckpt = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
        last = read_metrics(folder / "metrics.jsonl")[-1]
        cells = []
        for _, index in CONVS:
            try:
                a, c, alpha = conv_state(ckpt["model_state_dict"], index)
            except KeyError:
                raise SystemExit(f"{folder}: not a TT-v1 CNN run (no Tiki-Taka convolution at "
                                 f"position {index})") from None
            cells.append(f"{float(a.mean()):+.4f}, {float(a.abs().mean()):.4f}, "
                         f"{float(c.abs().mean()):.3f}, {alpha:.2f}")
        rows.append(f"{folder} | {ckpt['epoch']} | {100 * last['test_acc']:.2f} | "
                    + " | ".join(cells))
    print("run | epoch | test acc % | " + " | ".join(
        f"{name}: mean A, mean |A|, mean |C|, alpha" for name, _ in CONVS))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
