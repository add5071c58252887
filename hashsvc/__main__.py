"""`python -m hashsvc ...` and the `hashsvc` console script: the command line
(hashsvc/client/cli.py). The CLI is imported inside main(): hashing worker
processes start by importing their parent's main module, and this one keeps
them from loading the CLI and gRPC (51 instead of 20 MB a worker)."""

import sys


def main() -> int:
    from hashsvc.client.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
