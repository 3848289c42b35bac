"""Calibration and evaluation data: folders of images, .npy, .npz and module:function, as streams of feeds."""
