"""What a compile tells its user: qparams.json, report.json, and ``qcompile eval``'s agreement metrics."""
