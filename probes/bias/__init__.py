"""Bias and fairness probes, on one disaggregation engine (:mod:`probes.bias.engine`).

- ``bias.classifier`` (:mod:`probes.bias.classifier`): group metrics and Fairlearn's gaps for classifiers.
- ``bias.stereotype_pairs`` (:mod:`probes.bias.stereotype_pairs`): CrowS-Pairs-style likelihood preference.
- ``bias.counterfactual_generation`` (:mod:`probes.bias.counterfactual`): completions scored per group.
- ``bias.t2i_representation`` (:mod:`probes.bias.t2i_representation`): perceived attributes in generated images.
- ``bias.embedding_association`` (:mod:`probes.bias.embedding_association`): WEAT/SEAT on encoders.
"""
