"""Shipped backend files (one YAML per backend) and the emitters that write their artifacts."""
