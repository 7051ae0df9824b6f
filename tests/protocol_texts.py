"""Protocol texts several test modules run: short, so a daemon test finishes in seconds."""

E1_TWO_CYCLES = """\
name: E1, two cycles
cell: {area: 0.785 cm^2}
record: {every: 1 min}
steps:
  - repeat:
      count: 2
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 1 mAh/cm^2}}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
"""
