"""``python -m data_tools.saliency``: write saliency maps (see maps.py)."""
import sys

from data_tools.saliency.maps import main

sys.exit(main())
