"""``python -m fusion.client``: the fusion-client command."""

from fusion.client.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
