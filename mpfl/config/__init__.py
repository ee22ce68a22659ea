"""The federation's settings: one TOML file, MPFL_* variables and generated flags; no torch."""
