"""Table 2: ImageNet-pretrained ResNet18/34/50 fine-tuned on CIFAR-10 with only the classifier on
analog tiles, trained by FP SGD (ideal floating-point tile), Analog SGD or Tiki-Taka v1 on the
τ-bounded soft-bounds device (as in the authors' code; settings and learning-rate groups in
utils/finetune.py).

    python A12-resnet-finetune.py --model=Resnet18 -FFT --optimizer="FP SGD" --CUDA=0
    python A12-resnet-finetune.py --model=Resnet18 -FFT --optimizer="Analog SGD" --tau=0.8 --CUDA=0
    python A12-resnet-finetune.py --model=Resnet18 -FFT --optimizer="TT-v1" --tau=0.8 --CUDA=0

(and the same for Resnet34 and Resnet50: the 9 runs of the table) write
results/runs/CIFAR10-finetune/<model>/FFT/<alg>/seed0/ (config.json, metrics.jsonl, checkpoint.pt,
TensorBoard events); rerunning a command resumes an interrupted run or skips a finished one.
A12-table.py writes results/tables/cifar10_resnet.{md,csv} beside the paper's numbers. CIFAR-10 is
fetched into --data-root, the ImageNet weights into torch's cache, on first use. One run is 100
epochs of 50,000 images at 224x224: a GPU job (hours); --image-size 32 --epochs 1 is a quick CPU check.
"""

from utils.finetune import finetune_main

if __name__ == "__main__":
    finetune_main(__doc__)
