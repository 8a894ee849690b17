"""`python -m corral ...` is the same as `corral ...`."""

from corral.cli import main

if __name__ == "__main__":
    main()
