"""The backend file: its schema, the strict loader, the hardware constraints it is checked against.

Pure data: nothing here imports onnx, onnxruntime, a pass or an emitter, so
loading a backend (``--list-backends``, the first step of every compile)
stays cheap and a contradiction is refused before any model is read.
"""
