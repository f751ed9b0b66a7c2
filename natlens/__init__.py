"""natlens: where did a Service's traffic actually go, and is that what the rules say?"""

__version__ = "0.1.0"
