"""Calibration machinery: range estimators, the observer graph that feeds them, and batching.

The ``calibrate`` pass only hooks these to the graph and the plan; the
statistics can be tested without a graph.
"""
