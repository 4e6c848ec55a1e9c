"""Built-in probes of genai-audit, grouped by what they audit.

``BUILTIN_PROBES`` maps probe ids to lazy ``"module:attr"`` entries, so that listing the
probes does not import torch-heavy modules. Third-party packages add probes through the
``genai_audit.probes`` entry-point group instead.
"""

BUILTIN_PROBES: dict[str, str] = {
    "quality.perplexity": "probes.quality.perplexity:Perplexity",
    "quality.image_fidelity": "probes.quality.image_fidelity:ImageFidelity",
    "quality.sliced_wasserstein": "probes.quality.swd:SlicedWasserstein",
    "quality.clip_score": "probes.quality.clip_score:ClipScore",
    "quality.diffusion_likelihood": "probes.quality.diffusion_likelihood:DiffusionLikelihood",
    "quality.text_diversity": "probes.quality.text_diversity:TextDiversity",
    "deepfake.text_detectability": "probes.deepfake.text_detectability:TextDetectability",
    "deepfake.image_detectability": "probes.deepfake.image_detectability:ImageDetectability",
    "robustness.classifier": "probes.robustness.classifier:RobustnessClassifier",
    "robustness.detector_evasion": "probes.robustness.detector_evasion:DetectorEvasion",
    "robustness.text_embedding": "probes.robustness.text_embedding:TextEmbeddingAttack",
    "bias.classifier": "probes.bias.classifier:ClassifierBias",
    "bias.stereotype_pairs": "probes.bias.stereotype_pairs:StereotypePairs",
    "bias.counterfactual_generation": "probes.bias.counterfactual:CounterfactualGeneration",
    "bias.t2i_representation": "probes.bias.t2i_representation:T2IRepresentation",
    "bias.embedding_association": "probes.bias.embedding_association:EmbeddingAssociation",
    "human.ratings": "probes.human.ratings:HumanRatings",
    "energy.inference": "probes.energy.inference:InferenceEnergy",
    "energy.footprint": "probes.energy.footprint:Footprint",
    "privacy.image_replication": "probes.privacy.image_replication:ImageReplication",
    "quality.visual_inspection": "probes.quality.visual_inspection:VisualInspection",
    "privacy.extraction": "probes.privacy.extraction:Extraction",
    "privacy.membership_inference": "probes.privacy.membership_inference:MembershipInference",
    "privacy.pii_leakage": "probes.privacy.pii_leakage:PiiLeakage",
}
