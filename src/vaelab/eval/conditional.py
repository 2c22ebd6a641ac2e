"""How well a conditional model's samples carry their label: vaelab's classifier of the data set reads them back.

``n`` prior draws are decoded under the labels in turn (0, 1, ..., K-1, 0, ...: n / K per class) and
the classifier's argmax is compared with the label each was decoded under. The classifier's own
errors on real test images (``classifier_info(dataset)`` records its test accuracy) bound what this
can show.
"""

from __future__ import annotations

import torch

from vaelab.errors import VaelabError
from vaelab.model.base import LatentVariableModel

LABEL_SAMPLES = 10_000
SAMPLE_CHUNK = 1000


@torch.no_grad()
def conditional_samples(
    model: LatentVariableModel, n: int, seed: int = 0, chunk: int = SAMPLE_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels): ``n`` mean images decoded from prior draws under the labels in turn (seeded)."""
    labels = torch.arange(n) % model.classes
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        images = [
            model.condition(labels[i : i + chunk]).sample(len(labels[i : i + chunk]), generator=generator).cpu()
            for i in range(0, n, chunk)
        ]
    finally:
        model.train(was_training)
    return torch.cat(images), labels


@torch.no_grad()
def label_accuracy(
    model: LatentVariableModel, n: int = LABEL_SAMPLES, seed: int = 0, classifier=None, *, dataset: str
) -> dict[str, float | int | list[float]]:
    """The share of ``n`` conditional samples that ``dataset``'s classifier assigns to their label, overall
    and per class (``label_accuracy``, ``label_accuracy_per_class``, ``label_samples``)."""
    from vaelab.eval.classifier import IMAGE_SHAPE, load_classifier

    if not model.takes_labels:
        raise model._unsupported("labels as input, so no accuracy of conditional samples")
    if model.classes != 10 or tuple(model.image_shape) != IMAGE_SHAPE:
        raise VaelabError(
            f"the label accuracy reads samples with vaelab's {dataset} classifier (10 classes, 1 x 28 x 28); this model "
            f"has {model.classes} classes and images of {tuple(model.image_shape)}"
        )
    classifier = classifier or load_classifier(dataset)
    images, labels = conditional_samples(model, n, seed)
    predicted = torch.cat([classifier(images[i : i + SAMPLE_CHUNK]).argmax(1) for i in range(0, n, SAMPLE_CHUNK)])
    right = predicted == labels
    per_class = [right[labels == c].double().mean().item() for c in range(model.classes)]
    return {"label_accuracy": right.double().mean().item(), "label_accuracy_per_class": per_class, "label_samples": n}
