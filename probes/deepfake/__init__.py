"""Deepfake detectability: how easily generated content is told apart from real content.

``metrics`` holds the detection metrics every deepfake probe reports (AUROC, average
precision, EER, TPR at fixed FPRs, accuracies at a calibrated threshold), as pure functions.
"""
