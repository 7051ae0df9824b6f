"""The lab-PC service: lab.toml, one task per channel, the queue, taking runs up after a crash."""
