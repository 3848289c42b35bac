"""Writing and checking the backends' own files.

``emitters`` is the interface an emitter module under ``qcompiler.backends``
implements, ``registry`` finds them by name and binds a backend's ``emit:``
list; ``qdq_view`` reads the Q/DQ structure of any model; ``rules`` checks it
against a backend's ``constraints:``; ``integer_weights`` is the graph form
toolchains read weights in.
"""
