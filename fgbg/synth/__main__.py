"""``python -m fgbg.synth output=DIR ...`` (same as ``fgbg-synth``)."""

from fgbg.synth.app import main

if __name__ == "__main__":
    main()
