"""Vision pipeline: one-shot structured pruning of CNNs (ResNet20, MobileNetV1, ResNet50).

Usage::

    python -m osscar vision --help
    python -m osscar vision --prepare                        # train/cache the embedded default model
    python -m osscar vision --method paper --flops-fraction 0.3,0.5,0.7 --output-dir runs/vision/x

    from osscar.vision.pipeline import run_vision
    from osscar.vision.run_config import VisionRunConfig
    metrics = run_vision(VisionRunConfig(method="osscar", flops_fraction=0.5))

Pieces (data flows one way):

* :mod:`~osscar.vision.models` — architectures and weight loading (checkpoint path, ``timm:``/
  ``torchvision:`` names with hub access; random weights only when asked for, for tests).
* :mod:`~osscar.vision.train` — the embedded default: ResNet20 trained once on real Fashion-MNIST
  (Debian ``dataset-fashion-mnist``), cached in ``$OSSCAR_CACHE/vision`` or ``~/.cache/osscar/vision``.
* :mod:`~osscar.vision.data` — local datasets (Fashion-MNIST IDX, CIFAR-10, ImageNet folders).
* :mod:`~osscar.vision.adapters` — which convs are consumers/producers; im2col grouping.
* :mod:`~osscar.vision.prune` — block-sequential two-stream calibration (H = X̃ᵀX̃, G = X̃ᵀX_dŴ).
* :mod:`~osscar.vision.flops` — MACs, parameters, per-layer targets for a FLOPs fraction.
* :mod:`~osscar.vision.slicing` — physical removal; ``save_sliced``/``load_sliced``.
* :mod:`~osscar.vision.run_config` — the run's configuration (its fields are the CLI's flags and the sweep keys).
* :mod:`~osscar.vision.pipeline` / :mod:`~osscar.vision.cli` — one run, metrics + provenance.

Damping: λ = 1e-2 by default, applied to H only (H + λ·mean(diag H)·I), as the spec's vision
protocol says; with G = X̃ᵀX_dŴ it is a ridge toward zero (not toward Ŵ), and every method shares it.
"""
