"""Images in, numbers out: preprocessing, image discovery and batching, calibration image sets, postprocessing and
labels, metrics, synthetic images.
"""
