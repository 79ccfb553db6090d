"""Table 2 from the fine-tuning runs of A12-resnet-finetune.py (reads run folders; never trains).

    python A12-table.py

reads results/runs/CIFAR10-finetune/<model>[/FFT]/<alg>/seed<k>/metrics.jsonl and writes
results/tables/cifar10_resnet.{md,csv}: our test accuracy (mean of the last 5 epochs, averaged
over seeds) beside the paper's Table 2, the seeds and epochs behind each number, the missing runs
by name, and any other run found (frozen backbone, other τ, --weights none, ...) with a note.
"""

from pathlib import Path

from utils import cli
from utils.cifar_report import write_table

if __name__ == "__main__":
    parser = cli.make_parser(__doc__)
    parser.add_argument("--runs", type=Path, default=cli.DEFAULT_OUT,
                        help="folder whose runs/ holds the training runs (default: %(default)s)")
    parser.add_argument("--out", type=cli.out_dir, default=cli.DEFAULT_OUT,
                        help="the table goes to OUT/tables/ (default: %(default)s)")
    args = parser.parse_args()
    try:
        paths, missing = write_table(args.runs, args.out)
    except cli.UserError as err:  # a damaged run record
        cli.fail(str(err))
    for name in missing:
        print(f"missing run: {name}")
    print(paths[0].read_text())
    print("table: " + ", ".join(str(p) for p in paths))
