"""Analysis of recorded runs: impedance fits, figures, reports and data exchange."""
