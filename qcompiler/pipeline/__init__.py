"""What a pass is, the properties passes require and ensure, the manager that runs them, and its instruments."""
