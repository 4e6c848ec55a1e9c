"""Privacy probes: does the model give away its training data or personal data?

``privacy.extraction`` (verbatim continuation of training documents, canary exposure),
``privacy.membership_inference`` (loss, zlib, Min-K% and reference-ratio attacks) and
``privacy.pii_leakage`` (personal data in generations, redacted) for text generators, with
the maths in :mod:`probes.privacy.functional` and the PII scanners in :mod:`probes.privacy.pii`;
``privacy.image_replication`` for image generators.
"""
