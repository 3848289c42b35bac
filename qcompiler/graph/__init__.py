"""The working IR (onnx-graphsurgeon's Graph) and what surrounds it.

``ir`` has the helpers over the graph, ``ops`` the facts about ONNX ops that
passes and checkers share, ``importer`` turns a user's file into the clean
graph every pass expects, ``verify`` checks a graph after each pass, and
``qir`` prints the canonical text of dumps and goldens.
"""
