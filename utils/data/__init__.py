"""The datasets: MNIST (``mnist``: Figures 5 to 7) and CIFAR-10 (``cifar10``: Table 2), each found
locally or fetched, checked against the official MD5 sums, with a synthetic stand-in for tests;
``common``: what both share (torchvision's download, one-line errors, the per-epoch seed)."""
