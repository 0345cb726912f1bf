"""``python -m pacs.cli``: the same command as the ``pacs`` console script."""

from pacs.cli import main

if __name__ == "__main__":
    main()
