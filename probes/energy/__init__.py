"""Energy probes: measured joules per unit of work, latency, throughput and memory.

``energy.inference`` (:mod:`probes.energy.inference`) measures the subject's main operation:
J per 1k tokens (text generators), J per image (image generators), J per 1k classifications
(classifiers), with an idle baseline, labelled estimates where nothing can be measured, and
optional emissions (:mod:`audit.energy.emissions`).
"""
