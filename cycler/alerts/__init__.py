"""Alerts: telling the lab by e-mail or webhook when a run ends badly or the daemon goes away."""
