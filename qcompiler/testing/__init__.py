"""Test support shipped with qcompiler: small seeded models built in code."""
