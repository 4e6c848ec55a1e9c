"""``python -m audit ...``: the ``genai-audit`` command, e.g. under torchrun:
``torchrun --nproc-per-node 4 -m audit run audit.yaml``."""

from audit.cli import main

if __name__ == "__main__":
    main()
