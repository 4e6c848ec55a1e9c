"""Subjects: the adapters for the model under audit, their loaders and the data readers.

``audit.subjects`` re-exports the subject protocols (:mod:`audit.subjects.base`); the
loaders live one module per kind (``text``/``loading``, ``image``, ``classifier``,
``encoder``) and the data readers in ``textdata`` and ``imagedata``.
"""

from audit.subjects.base import (
    Classifier,
    Encoder,
    HFTextGenerator,
    ImageGenerator,
    Subject,
    TextGenerator,
    missing_capabilities,
)

__all__ = [
    "Classifier",
    "Encoder",
    "HFTextGenerator",
    "ImageGenerator",
    "Subject",
    "TextGenerator",
    "missing_capabilities",
]
